"""Compound losses of the Loss odyssey [004, Sec. 2.4 and 3.2]: a general
`Compound([(loss, weight), ...])` that serializes and checks its members, the
Dice-plus combinations as compounds with fixed members, and the exponential
logarithmic loss.
"""

import collections
import inspect

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
from keras_seglosses.losses._common import (
    _check_weights,
    _safe_power,
    _side_weights,
    _sides,
    _voxel_values,
)
from keras_seglosses.losses.boundary import Boundary, HausdorffDT
from keras_seglosses.losses.distribution import CrossEntropy, Focal, TopK
from keras_seglosses.losses.rpdl import Dice
from keras_seglosses.targets import map_reads

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


def _check_weight(name, value, high=None):
    return float(check_number(name, value, low=0, high=high))


def _describe(loss):
    return f"{type(loss).__name__}(name={loss.name!r})"


def check_members(losses, n_classes=None):
    """Refuse members that would read one packed target in two ways.

    Raises a `ValueError` naming both members when two of them read the same
    packed map slot as different kinds of map (`targets.MapRead`), or expect
    different contents of the label channels (`label_kind`). `n_classes`, the
    channel count of `y_pred`, widens maps whose slot count depends on it.
    """
    owners = {}
    for loss in losses:
        for read in map_reads(loss, n_classes):
            for slot in range(read.index, read.index + read.slots):
                kind, owner = owners.setdefault(slot, (read.kind, loss))
                if kind != read.kind:
                    raise ValueError(
                        f"Invalid value for argument `losses`: {_describe(owner)} and "
                        f"{_describe(loss)} both read packed map slot {slot}, as "
                        f"{kind!r} and {read.kind!r}. Give them different `map_index` "
                        "values (`keras_seglosses.TargetLayout` names the slots), or "
                        "let a loss that can compute its map do so (`map_index=None`)."
                    )
    label_kinds = {getattr(loss, "label_kind", "labels"): loss for loss in losses}
    if len(label_kinds) > 1:
        (k1, a), (k2, b) = list(label_kinds.items())[:2]
        raise ValueError(
            f"Invalid value for argument `losses`: {_describe(a)} reads the first "
            f"channels of `y_true` as {k1!r} and {_describe(b)} as {k2!r}; one "
            "target cannot serve both."
        )


# -------------------------------------------------------------- Compound
@register
class Compound(keras.losses.Loss):
    """A weighted sum of losses: `L = sum_k w_k L_k`.

    Each member's `call` gives one value per sample (per-voxel outputs, as
    those of Keras' built-in losses, are averaged over voxels), so the
    compound keeps `sample_weight` working, and its value is the weighted sum
    of its members called alone on the same target. Members are serialized
    with `keras.saving.serialize_keras_object`, so any registered loss may be
    one.

    Members share one packed `y_true`: two members that read the same packed
    slot as different kinds of map (`map_reads`) are refused with a
    `ValueError` naming both, at construction and again at the first call
    (when the channel count is known). Losses that can compute their maps do
    so by default and read nothing.

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
        check_members([loss for loss, _ in members])
        self.members = members

    @property
    def label_kind(self):
        return getattr(self.members[0][0], "label_kind", "labels")

    def map_reads(self, n_classes=None):
        """Every packed map a member reads (see `targets.map_reads`)."""
        reads = {r for loss, _ in self.members for r in map_reads(loss, n_classes)}
        return tuple(sorted(reads, key=lambda r: (r.index, r.kind)))

    def member_weights(self):
        """The weight of each member, in order (numbers or tensors)."""
        return [weight for _, weight in self.members]

    def call(self, y_true, y_pred):
        losses = [loss for loss, _ in self.members]
        check_members(losses, y_pred.shape[-1])
        total = None
        for loss, weight in zip(losses, self.member_weights()):
            term = ops.cast(weight, "float32") * _per_sample_values(
                loss.call(y_true, y_pred), y_pred
            )
            total = term if total is None else total + term
        return total

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


# -------------------------------------------------- fixed-member compounds
class Member(collections.namedtuple("Member", ("loss", "weight", "arguments"))):
    """One member of a fixed compound.

    Attributes:
        loss: the member's loss class.
        weight: the compound's argument that holds the member's weight
            (default 1), or `None` where the class derives it.
        arguments: `{compound argument: member argument}` passed through
            (`from_logits` always is, to every member).
    """

    __slots__ = ()


_DICE_ARGUMENTS = {
    "smooth": "smooth", "squared": "squared", "batch": "batch",
    "include_background": "include_background", "soft_label": "soft_label",
}


def _signature(cls):
    """The constructor signature of a fixed compound, from its members: the
    weights (default 1), each passed argument with the member's own default,
    `from_logits`, then `reduction`, `name`, `dtype`."""
    P = inspect.Parameter
    params = [P(m.weight, P.POSITIONAL_OR_KEYWORD, default=1.0)
              for m in cls.members_spec if m.weight is not None]
    for member in cls.members_spec:
        defaults = inspect.signature(member.loss).parameters
        params += [P(ours, P.POSITIONAL_OR_KEYWORD, default=defaults[theirs].default)
                   for ours, theirs in member.arguments.items()]
    params += [
        P("from_logits", P.POSITIONAL_OR_KEYWORD, default=False),
        P("mask_index", P.POSITIONAL_OR_KEYWORD, default=None),
        P("reduction", P.POSITIONAL_OR_KEYWORD, default="sum_over_batch_size"),
        P("name", P.POSITIONAL_OR_KEYWORD, default=cls.default_name),
        P("dtype", P.POSITIONAL_OR_KEYWORD, default=None),
    ]
    return inspect.Signature(params)


class _FixedCompound(Compound):
    """A `Compound` whose members are fixed by the class (`members`): the
    constructor takes each member's weight and the member arguments listed
    there (with the member's own defaults), builds the members, and
    `get_config` is those arguments, not the member list. `from_logits`
    and `mask_index` (an ignore mask's slot) mean the same for every
    member. Arguments read as attributes
    (`DiceCE().smooth`)."""

    members_spec = ()
    default_name = None
    max_weight = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _signature(cls)

    def __init__(self, *args, **kwargs):
        bound = type(self).__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        keras_args = {k: arguments.pop(k) for k in ("reduction", "name", "dtype")}
        from_logits = bool(arguments["from_logits"])
        mask_index = arguments["mask_index"]
        members = []
        for spec in type(self).members_spec:
            passed = {theirs: arguments[ours] for ours, theirs in spec.arguments.items()}
            loss = spec.loss(from_logits=from_logits, mask_index=mask_index, **passed)
            mask_index = loss.mask_index  # validated
            # the member validated and normalized its arguments: keep its values
            for ours, theirs in spec.arguments.items():
                arguments[ours] = getattr(loss, theirs)
            weight = 1.0
            if spec.weight is not None:
                weight = arguments[spec.weight] = _check_weight(
                    spec.weight, arguments[spec.weight], self.max_weight
                )
            members.append((loss, weight))
        arguments["from_logits"] = from_logits
        arguments["mask_index"] = mask_index
        self._arguments = arguments
        super().__init__(members, **keras_args)

    def __getattr__(self, name):
        arguments = self.__dict__.get("_arguments", {})
        if name in arguments:
            return arguments[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def get_config(self):
        return {**keras.losses.Loss.get_config(self), **self._arguments}


@register
class DiceCE(_FixedCompound):
    """Dice loss plus cross entropy (combo loss).

    `L = w_dice Dice + w_ce CE`, a `Compound` of `Dice` and `CrossEntropy`.

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_ce: float >= 0. Defaults to `1.0`.
        smooth, squared, batch, include_background, soft_label: the `Dice`
            arguments (defaults `1.0`, `False`, `True`, `True`, `False`).
        from_logits: bool, for both terms. Defaults to `False`.
        mask_index: `None` or the packed slot of an ignore mask, for both
            terms (see `ignore_mask`). Defaults to `None`.
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

    members_spec = (Member(Dice, "w_dice", _DICE_ARGUMENTS), Member(CrossEntropy, "w_ce", {}))
    default_name = "dice_ce"


@register
class DiceFocal(_FixedCompound):
    """Dice loss plus focal loss.

    `L = w_dice Dice + w_focal Focal`, a `Compound` of `Dice` and `Focal`.

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_focal: float >= 0. Defaults to `1.0`.
        smooth, squared, batch, include_background, soft_label: the `Dice`
            arguments (defaults `1.0`, `False`, `True`, `True`, `False`).
        gamma: float >= 0, the focal exponent. Defaults to `2.0`.
        alpha: the `Focal` class weights. Defaults to `None`.
        from_logits: bool, for both terms. Defaults to `False`.
        mask_index: `None` or the packed slot of an ignore mask, for both
            terms (see `ignore_mask`). Defaults to `None`.
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

    members_spec = (
        Member(Dice, "w_dice", _DICE_ARGUMENTS),
        Member(Focal, "w_focal", {"gamma": "gamma", "alpha": "alpha"}),
    )
    default_name = "dice_focal"


@register
class DiceTopK(_FixedCompound):
    """Dice loss plus TopK cross entropy.

    `L = w_dice Dice + w_topk TopK`, a `Compound` of `Dice` and `TopK`.

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_topk: float >= 0. Defaults to `1.0`.
        smooth, squared, batch, include_background, soft_label: the `Dice`
            arguments (defaults `1.0`, `False`, `True`, `True`, `False`).
        k: percentage of the worst voxels kept. Defaults to `10`.
        from_logits: bool, for both terms. Defaults to `False`.
        mask_index: `None` or the packed slot of an ignore mask, for both
            terms (see `ignore_mask`). Defaults to `None`.
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

    members_spec = (Member(Dice, "w_dice", _DICE_ARGUMENTS), Member(TopK, "w_topk", {"k": "k"}))
    default_name = "dice_topk"


@register
class DiceBoundary(_FixedCompound):
    """Dice loss plus boundary loss with the review's weight schedule.

    `L = alpha Dice + (1 - alpha) Boundary` [004, Sec. 3.2], a `Compound` of
    `Dice` and `Boundary`. `alpha` is a non-trainable `keras.Variable`:
    `BoundaryWeightSchedule` (in `keras_seglosses.callbacks`) lowers it from
    1 by 0.01 per epoch down to 0.01, and `loss.alpha.assign(a)` sets it by
    hand (on JAX, a compiled train step keeps the value it was traced with:
    rebuild it with `model.make_train_function(force=True)`, as the callback
    does).

    Args:
        alpha: float in [0, 1], the initial Dice weight. Defaults to `1.0`.
        smooth, squared, batch, include_background, soft_label: the `Dice`
            arguments (defaults `1.0`, `False`, `True`, `True`, `False`).
        map_index, spacing: the `Boundary` arguments. Default to `None`
            (phi computed from the labels), `None`.
        from_logits: bool, for both terms. Defaults to `False`.
        mask_index: `None` or the packed slot of an ignore mask, for both
            terms (see `ignore_mask`). Defaults to `None`.
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

    members_spec = (
        Member(Dice, "alpha", _DICE_ARGUMENTS),
        Member(Boundary, None, {"map_index": "map_index", "spacing": "spacing"}),
    )
    default_name = "dice_boundary"
    max_weight = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = keras.Variable(
            self._arguments["alpha"], trainable=False, dtype="float32",
            name="dice_boundary_alpha",
        )

    def member_weights(self):
        alpha = ops.convert_to_tensor(self.alpha)
        return [alpha, 1.0 - alpha]

    def get_config(self):
        return {**super().get_config(), "alpha": float(ops.convert_to_numpy(self.alpha))}


@register
class DiceHD(_FixedCompound):
    """Dice loss plus distance-transform Hausdorff loss.

    `L = w_dice Dice + w_hd HausdorffDT` [004, Sec. 3.2], a `Compound` of
    `Dice` and `HausdorffDT`; Karimi and Salcudean set `w_dice` to the ratio
    of the mean HD term to the mean Dice term.

    Args:
        w_dice: float >= 0. Defaults to `1.0`.
        w_hd: float >= 0. Defaults to `1.0`.
        smooth, squared, batch, include_background, soft_label: the `Dice`
            arguments (defaults `1.0`, `False`, `True`, `True`, `False`).
        hd_alpha: float > 0, the `HausdorffDT` distance exponent. Defaults
            to `2.0`.
        map_index, spacing: the `HausdorffDT` arguments. Default to `None`
            (d_G computed from the labels), `None`.
        from_logits: bool, for both terms. Defaults to `False`.
        mask_index: `None` or the packed slot of an ignore mask, for both
            terms (see `ignore_mask`). Defaults to `None`.
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

    members_spec = (
        Member(Dice, "w_dice", _DICE_ARGUMENTS),
        Member(HausdorffDT, "w_hd",
               {"hd_alpha": "alpha", "map_index": "map_index", "spacing": "spacing"}),
    )
    default_name = "dice_hd"


# ------------------------------------------------------ exponential log
def exp_log(
    y_true, y_pred, *, w_dice=0.8, w_ce=0.2, gamma=0.3, smooth=1.0, batch=False,
    class_weights=None, from_logits=False, include_background=True, mask_index=None,
):
    """Per-sample exponential logarithmic loss [004, Eq. 23].

    `w_dice mean_c (-log Dice_c)^gamma + w_ce mean_i w_c (-log s_i^c)^gamma`,
    `Dice_c = (2 sum g s + e) / (sum (g + s) + e)`, c in the CE term the true
    class of voxel i (the background of a sigmoid channel counts as a class),
    `w_c` from `class_weights` or 1. With an ignore mask (slot `mask_index`)
    the sums and the mean run over the counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, sides, sigmoid, mask = _sides(y_true, y_pred, from_logits, False, "ExpLog", mask_index)
    g, s, _ = sides[-1]  # the labels and probabilities of the C channels
    if mask is not None:
        s = s * mask
    dice_c = (2.0 * region_sum(g * s, batch) + smooth) / (region_sum(g + s, batch) + smooth)
    dice_term = per_sample(
        _safe_power(-ops.log(dice_c), gamma), s, batch, include_background
    )
    terms = [_safe_power(ops.maximum(-log_s, 0.0), gamma) * g for g, _, log_s in sides]
    if class_weights is not None:
        weights = _side_weights(class_weights, sides, sigmoid, "class_weights")
        terms = [w * t for w, t in zip(weights, terms)]
    ce = _voxel_values(terms, sigmoid)
    return w_dice * dice_term + w_ce * voxel_mean(ce, mask)


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
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
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

    def __init__(self, w_dice=0.8, w_ce=0.2, gamma=0.3, smooth=1.0, batch=False,
                 class_weights=None, from_logits=False, include_background=True,
                 mask_index=None, reduction="sum_over_batch_size", name="exp_log", dtype=None):
        super().__init__(
            exp_log,
            reduction=reduction,
            name=name,
            dtype=dtype,
            w_dice=_check_weight("w_dice", w_dice),
            w_ce=_check_weight("w_ce", w_ce),
            gamma=float(check_number("gamma", gamma, low=0, low_open=True)),
            smooth=float(check_number("smooth", smooth, low=0)),
            batch=bool(batch),
            class_weights=_check_weights("class_weights", class_weights, True),
            from_logits=bool(from_logits),
            include_background=bool(include_background),
            mask_index=mask_index,
        )
