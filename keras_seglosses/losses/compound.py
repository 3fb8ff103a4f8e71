"""Compound losses of the Loss odyssey [004, Sec. 2.4 and 3.2]: weighted sums
of the other losses, the exponential logarithmic loss, and a general
`Compound([(loss, weight), ...])` that serializes its members.
"""

import keras
from keras import ops

from keras_seglosses._core import (
    SegLoss,
    check_number,
    per_sample,
    region_sum,
    register,
    voxel_mean,
)
from keras_seglosses.losses.boundary import Boundary, HausdorffDT
from keras_seglosses.losses.distribution import (
    CrossEntropy,
    Focal,
    TopK,
    _check_weights,
    _side_weights,
    _sides,
    _voxel_values,
)
from keras_seglosses.losses.region import _safe_power
from keras_seglosses.losses.rpdl import Dice

__all__ = [
    "exp_log",
    "Compound",
    "DiceCE",
    "DiceFocal",
    "DiceTopK",
    "DiceBoundary",
    "DiceHD",
    "ExpLog",
]


def _per_sample_values(values, y_pred):
    """Bring a member loss's `call` output to `(batch,)`: per-voxel outputs
    (e.g. Keras' built-in losses) are averaged, a scalar is repeated."""
    values = ops.cast(values, "float32")
    if len(values.shape) == 0:
        return ops.broadcast_to(values, ops.shape(y_pred)[:1])
    if len(values.shape) > 1:
        return voxel_mean(values)
    return values


def _weighted_sum(members, y_true, y_pred):
    total = None
    for loss, weight in members:
        term = ops.cast(weight, "float32") * _per_sample_values(
            loss.call(y_true, y_pred), y_pred
        )
        total = term if total is None else total + term
    return total


def _check_weight(name, value):
    return float(check_number(name, value, low=0))


# ------------------------------------------------------------------ functions
def exp_log(
    y_true, y_pred, w_dice=0.8, w_ce=0.2, gamma=0.3, smooth=1.0, batch=False,
    class_weights=None, from_logits=False, include_background=True,
):
    """Per-sample exponential logarithmic loss [004, Eq. 23].

    `w_dice mean_c (-log Dice_c)^gamma + w_ce mean_i w_c (-log s_i^c)^gamma`,
    `Dice_c = (2 sum g s + e) / (sum (g + s) + e)`, c in the CE term the true
    class of voxel i (the background of a sigmoid channel counts as a class),
    `w_c` from `class_weights` or 1.

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, sides, sigmoid = _sides(y_true, y_pred, from_logits, False, "ExpLog")
    g, s, _ = sides[-1]  # the labels and probabilities of the C channels
    dice_c = (2.0 * region_sum(g * s, batch) + smooth) / (region_sum(g + s, batch) + smooth)
    dice_term = per_sample(
        _safe_power(-ops.log(dice_c), gamma), s, batch, include_background
    )
    terms = [_safe_power(ops.maximum(-log_s, 0.0), gamma) * g for g, _, log_s in sides]
    if class_weights is not None:
        weights = _side_weights(class_weights, sides, sigmoid, "class_weights")
        terms = [w * t for w, t in zip(weights, terms)]
    ce = _voxel_values(terms, sigmoid)
    return w_dice * dice_term + w_ce * voxel_mean(ce)


# -------------------------------------------------------------------- classes
@register
class Compound(SegLoss):
    """A weighted sum of losses: `L = sum_k w_k L_k`.

    Each member's `call` gives one value per sample (per-voxel outputs, as
    those of Keras' built-in losses, are averaged over voxels), so the
    compound keeps `sample_weight` working. Members are serialized with
    `keras.saving.serialize_keras_object`, so any registered loss may be one.

    Args:
        losses: list of `(loss, weight)` pairs: a `keras.losses.Loss`
            instance (or its serialized form) and a float >= 0.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import CrossEntropy, Dice
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> loss = Compound([(Dice(), 1.0), (CrossEntropy(), 0.5)])
    >>> round(float(loss(y, p)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Sec. 2.4].
    """

    def __init__(self, losses, reduction="sum_over_batch_size", name="compound",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(losses, (list, tuple)) or not losses:
            raise ValueError(
                "Invalid value for argument `losses`. Expected a non-empty list of "
                f"(loss, weight) pairs. Received: losses={losses!r}"
            )
        members = []
        for item in losses:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(
                    "Invalid value for argument `losses`. Expected (loss, weight) "
                    f"pairs. Received the item {item!r}"
                )
            loss, weight = item
            if isinstance(loss, dict):
                loss = keras.saving.deserialize_keras_object(loss)
            if not isinstance(loss, keras.losses.Loss):
                raise ValueError(
                    "Invalid value for argument `losses`. Expected each loss to be "
                    f"a `keras.losses.Loss` instance. Received: {loss!r}"
                )
            members.append((loss, _check_weight("weight", weight)))
        self.members = members

    def call(self, y_true, y_pred):
        return _weighted_sum(self.members, y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config["losses"] = [
            [keras.saving.serialize_keras_object(loss), weight]
            for loss, weight in self.members
        ]
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _DicePlus(SegLoss):
    """`w_dice Dice + w_other other`, with the Dice arguments of `Dice`."""

    _dice_keys = ("smooth", "squared", "batch", "include_background")

    def _init_dice(self, smooth, squared, batch, from_logits, include_background):
        # `Dice` validates its arguments; its values are the config's
        self.dice = Dice(
            smooth=smooth, squared=squared, batch=batch, from_logits=from_logits,
            include_background=include_background,
        )
        for key in self._dice_keys + ("from_logits",):
            setattr(self, key, getattr(self.dice, key))

    def call(self, y_true, y_pred):
        return _weighted_sum(
            [(self.dice, self.w_dice), (self.other, self._other_weight)], y_true, y_pred
        )


_DICE_ARGS = """        smooth, squared, batch, include_background: the `Dice` arguments
            (defaults `1.0`, `False`, `True`, `True`).
        from_logits: bool, for both terms. Defaults to `False`."""


@register
class DiceCE(_DicePlus):
    """Dice loss plus cross entropy (combo loss).

    `L = w_dice Dice + w_ce CE` (`Dice`, `CrossEntropy`).

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_ce: float >= 0. Defaults to `1.0`.
{dice}
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> round(float(DiceCE()(y, p)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 22].
    """

    _config_keys = ("w_dice", "w_ce") + _DicePlus._dice_keys + ("from_logits",)

    def __init__(self, w_dice=1.0, w_ce=1.0, smooth=1.0, squared=False, batch=True,
                 from_logits=False, include_background=True,
                 reduction="sum_over_batch_size", name="dice_ce", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.w_dice = _check_weight("w_dice", w_dice)
        self.w_ce = self._other_weight = _check_weight("w_ce", w_ce)
        self._init_dice(smooth, squared, batch, from_logits, include_background)
        self.other = CrossEntropy(from_logits=self.from_logits)


@register
class DiceFocal(_DicePlus):
    """Dice loss plus focal loss.

    `L = w_dice Dice + w_focal Focal` (`Dice`, `Focal`).

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_focal: float >= 0. Defaults to `1.0`.
        gamma: float >= 0, the focal exponent. Defaults to `2.0`.
        alpha: the `Focal` class weights. Defaults to `None`.
{dice}
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> round(float(DiceFocal()(y, p)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 24].
    """

    _config_keys = ("w_dice", "w_focal", "gamma", "alpha") + _DicePlus._dice_keys + (
        "from_logits",
    )

    def __init__(self, w_dice=1.0, w_focal=1.0, gamma=2.0, alpha=None, smooth=1.0,
                 squared=False, batch=True, from_logits=False, include_background=True,
                 reduction="sum_over_batch_size", name="dice_focal", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.w_dice = _check_weight("w_dice", w_dice)
        self.w_focal = self._other_weight = _check_weight("w_focal", w_focal)
        self._init_dice(smooth, squared, batch, from_logits, include_background)
        self.other = Focal(gamma=gamma, alpha=alpha, from_logits=self.from_logits)
        self.gamma, self.alpha = self.other.gamma, self.other.alpha


@register
class DiceTopK(_DicePlus):
    """Dice loss plus TopK cross entropy.

    `L = w_dice Dice + w_topk TopK` (`Dice`, `TopK`).

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_topk: float >= 0. Defaults to `1.0`.
        k: percentage of the worst voxels kept. Defaults to `10`.
{dice}
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> round(float(DiceTopK()(y, p)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 25].
    """

    _config_keys = ("w_dice", "w_topk", "k") + _DicePlus._dice_keys + ("from_logits",)

    def __init__(self, w_dice=1.0, w_topk=1.0, k=10, smooth=1.0, squared=False,
                 batch=True, from_logits=False, include_background=True,
                 reduction="sum_over_batch_size", name="dice_topk", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.w_dice = _check_weight("w_dice", w_dice)
        self.w_topk = self._other_weight = _check_weight("w_topk", w_topk)
        self._init_dice(smooth, squared, batch, from_logits, include_background)
        self.other = TopK(k=k, from_logits=self.from_logits)
        self.k = self.other.k


@register
class DiceBoundary(_DicePlus):
    """Dice loss plus boundary loss with the review's weight schedule.

    `L = alpha Dice + (1 - alpha) Boundary` [004, Sec. 3.2]. `alpha` is a
    non-trainable `keras.Variable`: `BoundaryWeightSchedule` (in
    `keras_seglosses.callbacks`) lowers it from 1 by 0.01 per epoch down to
    0.01, and `loss.alpha.assign(a)` sets it by hand (on JAX, a compiled
    train step keeps the value it was traced with: rebuild it with
    `model.make_train_function(force=True)`, as the callback does).

    Args:
        alpha: float in [0, 1], the initial Dice weight. Defaults to `1.0`.
{dice}
        map_index, spacing: the `Boundary` arguments. Default to `0`, `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 1, 4, 1)); y[0, 0, 1:3] = 1
    >>> round(float(DiceBoundary(alpha=0.5)(y, y)), 4)
    -0.25

    Reference:
        Ma et al., Loss odyssey [004, Eq. 19-20 and Sec. 3.2]; Kervadec et
        al., 2019.
    """

    def __init__(self, alpha=1.0, smooth=1.0, squared=False, batch=True,
                 from_logits=False, include_background=True, map_index=0, spacing=None,
                 reduction="sum_over_batch_size", name="dice_boundary", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        check_number("alpha", alpha, low=0, high=1)
        self.alpha = keras.Variable(
            float(alpha), trainable=False, dtype="float32", name="dice_boundary_alpha"
        )
        self._init_dice(smooth, squared, batch, from_logits, include_background)
        self.other = Boundary(from_logits=self.from_logits, map_index=map_index, spacing=spacing)

    def call(self, y_true, y_pred):
        alpha = ops.convert_to_tensor(self.alpha)
        return _weighted_sum(
            [(self.dice, alpha), (self.other, 1.0 - alpha)], y_true, y_pred
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=float(ops.convert_to_numpy(self.alpha)),
            **{k: getattr(self, k) for k in _DicePlus._dice_keys + ("from_logits",)},
            map_index=self.other.map_index,
            spacing=self.other.spacing,
        )
        return config


@register
class DiceHD(_DicePlus):
    """Dice loss plus distance-transform Hausdorff loss.

    `L = w_dice Dice + w_hd HausdorffDT` [004, Sec. 3.2]; Karimi and
    Salcudean set `w_dice` to the ratio of the mean HD term to the mean Dice
    term.

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_hd: float >= 0. Defaults to `1.0`.
        hd_alpha: float > 0, the `HausdorffDT` distance exponent. Defaults
            to `2.0`.
{dice}
        map_index, spacing: the `HausdorffDT` arguments. Default to `0`,
            `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 1, 4, 1)); y[0, 0, 1:3] = 1
    >>> round(float(DiceHD()(y, y)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 21 and Sec. 3.2]; Karimi and
        Salcudean, 2020.
    """

    def __init__(self, w_dice=1.0, w_hd=1.0, hd_alpha=2.0, smooth=1.0, squared=False,
                 batch=True, from_logits=False, include_background=True, map_index=0,
                 spacing=None, reduction="sum_over_batch_size", name="dice_hd",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.w_dice = _check_weight("w_dice", w_dice)
        self.w_hd = self._other_weight = _check_weight("w_hd", w_hd)
        self._init_dice(smooth, squared, batch, from_logits, include_background)
        self.other = HausdorffDT(
            alpha=hd_alpha, from_logits=self.from_logits, map_index=map_index,
            spacing=spacing,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            w_dice=self.w_dice, w_hd=self.w_hd, hd_alpha=self.other.alpha,
            **{k: getattr(self, k) for k in _DicePlus._dice_keys + ("from_logits",)},
            map_index=self.other.map_index, spacing=self.other.spacing,
        )
        return config


@register
class ExpLog(SegLoss):
    """Exponential logarithmic loss.

    `ELL = w_dice mean_c (-log Dice_c)^gamma + w_ce mean_i w_c (-log
    s_i^c)^gamma`, `Dice_c = (2 sum g s + e) / (sum (g + s) + e)` per class,
    c in the second term the true class of voxel i; `w_c` from
    `class_weights` (1 when `None`). The exponents make the loss focus on
    poorly segmented classes and voxels. Probabilities are clipped to
    `[eps, 1 - eps]` as in Keras, so a perfect probability map scores
    `w_ce (-log(1 - eps))^gamma` (about 0.0017 with the defaults), not 0;
    logits (`from_logits=True`) have no such floor.

    Args:
        w_dice: float >= 0. Defaults to `0.8`.
        w_ce: float >= 0. Defaults to `0.2`.
        gamma: float > 0, the exponent of both terms. Defaults to `0.3`.
        smooth: float >= 0, e. Defaults to `1.0`.
        batch: bool, pool the Dice sums over the mini-batch. Defaults to
            `False`.
        class_weights: `None` or the `WeightedCrossEntropy` weights.
            Defaults to `None`.
        from_logits: bool. Defaults to `False`.
        include_background: bool, for the Dice term. Defaults to `True`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[0.8], [0.1]]])
    >>> round(float(ExpLog()(y, p)), 4)
    0.5264

    Reference:
        Ma et al., Loss odyssey [004, Eq. 23]; Wong et al., 2018.
    """

    _config_keys = ("w_dice", "w_ce", "gamma", "smooth", "batch", "class_weights",
                    "from_logits", "include_background")

    def __init__(self, w_dice=0.8, w_ce=0.2, gamma=0.3, smooth=1.0, batch=False,
                 class_weights=None, from_logits=False, include_background=True,
                 reduction="sum_over_batch_size", name="exp_log", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.w_dice = _check_weight("w_dice", w_dice)
        self.w_ce = _check_weight("w_ce", w_ce)
        self.gamma = float(check_number("gamma", gamma, low=0, low_open=True))
        self.smooth = float(check_number("smooth", smooth, low=0))
        self.batch = bool(batch)
        self.class_weights = _check_weights("class_weights", class_weights, True)
        self.from_logits = bool(from_logits)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        return exp_log(
            y_true, y_pred, self.w_dice, self.w_ce, self.gamma, self.smooth, self.batch,
            self.class_weights, self.from_logits, self.include_background,
        )


for _cls in (DiceCE, DiceFocal, DiceTopK, DiceBoundary, DiceHD):
    _cls.__doc__ = _cls.__doc__.replace("{dice}", _DICE_ARGS)
del _cls
