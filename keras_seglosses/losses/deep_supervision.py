"""Deep supervision: one loss on every output of a multi-resolution model
(`models3d.isensee2017(deep_supervision=True)`), each against the target
reduced to that output's resolution.

Targets are reduced by an integer factor per spatial axis (the ratio of
the static sizes of target and output): the labels, the first C channels,
by max-pooling, so a structure still present at the coarse level is never
lost (a binary label stays binary; nnU-Net and MONAI resample with nearest
neighbours instead, which can drop thin structures); packed maps behind the
labels by average-pooling.

An ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`) is
reduced so that a coarse voxel counts only where all its fine voxels count
(min-pooling), and labels and maps are zeroed at ignored voxels before they
are pooled: ignored fine voxels change no coarse target. (MONAI's
`DeepSupervisionLoss` takes no mask.) The zeroed target is right only for a
loss that reads the mask: a `Compound` whose members read it in part is
refused, as the unmasked members would count the zeroed labels.

Keras 3 applies one loss per output in `compile`, so there are two ways in:

    loss = ks.DeepSupervision(ks.RewardPenaltyDice(), weights="exp")
    loss(y_true, model(x))                       # a list of outputs, finest first
    model.compile("adam", **loss.compile_arguments(n_outputs=3))
    model.fit(x, [y, y, y])                      # the full-resolution target per output

`compile_arguments` gives each output a `DownsampledTarget(loss)`, which
reduces the full-resolution target inside the (compiled) loss, and the
level weights as `loss_weights`; the total is the same as the wrapper's.
"""

import keras
from keras import ops

from keras_seglosses._core import apply_mask, check_mask_slot, register
from keras_seglosses.losses.compound import Compound
from keras_seglosses.targets import map_reads, require_map

__all__ = ["supervision_weights", "downsample_targets", "DownsampledTarget", "DeepSupervision",
           "SUPERVISION_WEIGHTS"]

#: Named level weightings: `"exp"` halves the weight at each coarser level
#: (1, 1/2, 1/4, ...; MONAI's `DeepSupervisionLoss` default), `"same"`
#: weighs every level 1.
SUPERVISION_WEIGHTS = ("exp", "same")


def supervision_weights(n_outputs, weights="exp"):
    """The weight of each of `n_outputs` outputs, finest first.

    Args:
        n_outputs: int >= 1.
        weights: `"exp"`, `"same"` or a sequence of `n_outputs` numbers
            >= 0.

    Returns:
        list of floats (not normalized: the total is the weighted sum, as
        MONAI's `DeepSupervisionLoss`).
    """
    if isinstance(weights, str):
        if weights not in SUPERVISION_WEIGHTS:
            raise ValueError(f"Invalid value for argument `weights`. Expected one of "
                             f"{list(SUPERVISION_WEIGHTS)} or a list of numbers. "
                             f"Received: weights={weights!r}")
        return [0.5**level if weights == "exp" else 1.0 for level in range(n_outputs)]
    values = [float(w) for w in weights]
    if len(values) != n_outputs or any(not w >= 0 for w in values):
        raise ValueError(f"Invalid value for argument `weights`. Expected {n_outputs} numbers "
                         f">= 0, one per output. Received: weights={list(weights)!r}")
    return values


def downsample_targets(y_true, spatial, n_classes, mask_index=None):
    """`y_true` `(batch, *S, K)` reduced to the spatial shape `spatial`.

    Each spatial size of `y_true` must be an integer multiple of the one in
    `spatial`. The first `n_classes` channels (the labels) are max-pooled,
    the others (packed maps) average-pooled, over non-overlapping windows of
    that factor.

    With `mask_index`, the packed slot of an ignore mask (1 counts, 0
    ignored), the mask is min-pooled (a coarse voxel counts only if all its
    fine voxels do) and the labels and the other maps are zeroed at ignored
    voxels before pooling, so that the values there reach no coarse voxel.
    Every channel is zeroed, so the result suits only losses that read the
    mask; a loss that counts every voxel needs the target pooled without
    `mask_index`. `DeepSupervision` and `DownsampledTarget` therefore refuse
    a `Compound` of masked and unmasked members (pooling once per member
    would repeat `Compound`'s weighted sum here, for a mix that is almost
    always a member missing its `mask_index`).

    Returns:
        float32 tensor `(batch, *spatial, K)`.
    """
    y_true = ops.cast(y_true, "float32")
    full = tuple(y_true.shape[1:-1])
    spatial = tuple(spatial)
    if len(full) != len(spatial) or any(
        f is None or s is None or s < 1 or f % s for f, s in zip(full, spatial)
    ):
        raise ValueError(
            f"DeepSupervision: cannot reduce targets of spatial shape {full} to an output "
            f"of spatial shape {spatial}; every size must divide the target's."
        )
    factor = tuple(f // s for f, s in zip(full, spatial))
    if all(k == 1 for k in factor):
        return y_true
    pool = dict(pool_size=factor, strides=factor, padding="valid", data_format="channels_last")
    mask = None
    if mask_index is not None:
        mask = require_map(y_true, n_classes, mask_index, "DeepSupervision", "ignore mask")
        y_true = apply_mask(y_true, mask)
    labels = ops.max_pool(y_true[..., :n_classes], **pool)
    if y_true.shape[-1] == n_classes:
        return labels
    maps = ops.average_pool(y_true[..., n_classes:], **pool)
    if mask is None:
        return ops.concatenate([labels, maps], axis=-1)
    start = mask_index * n_classes
    coarse_mask = -ops.max_pool(-mask, **pool)
    return ops.concatenate(
        [labels, maps[..., :start], coarse_mask, maps[..., start + n_classes:]], axis=-1)


def _per_sample(values):
    values = ops.convert_to_tensor(values)
    if len(values.shape) > 1:
        values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    return values


class _Wrapper(keras.losses.Loss):
    """A loss around `self.loss` that reads what it reads."""

    def _set_loss(self, loss, mask_index):
        self.loss = _with_mask(_loss_from(loss), mask_index)
        self.mask_index = _mask_slot(self.loss)

    @property
    def label_kind(self):
        return getattr(self.loss, "label_kind", "labels")

    def map_reads(self, n_classes=None):
        """The packed maps of the wrapped loss (`targets.map_reads`)."""
        return map_reads(self.loss, n_classes)


def _config_of(loss):
    return keras.saving.serialize_keras_object(loss)


def _loss_from(config):
    if isinstance(config, keras.losses.Loss):
        return config
    return keras.saving.deserialize_keras_object(config)


def _with_mask(loss, mask_index):
    """`loss`, rebuilt from its config to read the ignore mask at
    `mask_index` when it does not yet (a copy: the caller's loss may be
    shared)."""
    mask_index = check_mask_slot(mask_index)
    if mask_index is None:
        return loss
    # what the loss reads, not its config: a `Compound` reads its members'
    # masks and has no `mask_index` of its own (its `get_config` writes the
    # members, the wrapper's config the slot they read)
    own = _mask_slot(loss)
    if own is not None:
        if own != mask_index:
            raise ValueError(
                "Invalid value for argument `mask_index`. Expected `None` or the wrapped "
                f"loss's own `mask_index={own}`. Received: mask_index={mask_index}"
            )
        return loss
    config = loss.get_config()
    if "mask_index" not in config:
        raise ValueError(
            "Invalid value for argument `mask_index`. Expected `None` for a wrapped loss "
            f"without an ignore mask (`{type(loss).__name__}` takes no `mask_index`; "
            f"give it to its members). Received: mask_index={mask_index}"
        )
    return type(loss).from_config({**config, "mask_index": mask_index})


def _leaves(loss):
    """The losses that compute: `loss`, or the members of a `Compound`, in
    nested compounds too."""
    if isinstance(loss, Compound):
        return [leaf for member, _ in loss.members for leaf in _leaves(member)]
    return [loss]


def _describe(loss):
    return f"{type(loss).__name__}(name={loss.name!r})"


def _mask_slot(loss):
    """The one ignore-mask slot `loss` reads, or `None`."""
    slots = sorted({read.index for read in map_reads(loss) if read.kind == "mask"})
    if len(slots) > 1:
        # zeroing the labels by one mask before pooling would corrupt them
        # for a member that counts those voxels
        raise ValueError(
            "Invalid value for argument `loss`. Expected a loss that reads at most one "
            "ignore mask slot, shared by all its members. Received: a loss reading "
            f"ignore masks at slots {slots}"
        )
    if not slots:
        return None
    masked, unmasked = [], []
    for leaf in _leaves(loss):
        reads_mask = any(read.kind == "mask" for read in map_reads(leaf))
        (masked if reads_mask else unmasked).append(_describe(leaf))
    if unmasked:
        # the same reason: the unmasked members would see zeroed labels
        raise ValueError(
            "Invalid value for argument `loss`. Expected every member of a compound to "
            f"read the ignore mask at packed map slot {slots[0]}, or none of them: the "
            "target is zeroed at ignored voxels before it is pooled, which would change "
            "the labels of a member that counts them. Received: members reading the mask "
            f"{', '.join(masked)}; members not reading it {', '.join(unmasked)}. Give "
            f"every member `mask_index={slots[0]}` (or none of them a `mask_index`)."
        )
    return slots[0]


@register
class DownsampledTarget(_Wrapper):
    """`loss` on the target reduced to the prediction's resolution
    (`downsample_targets`; the identity at full resolution): the per-output
    loss of a deep-supervision model in `compile`.

    Args:
        loss: a `keras.losses.Loss` (any of this package's, packed targets
            included).
        mask_index: `None` or int >= 0, the packed slot of an ignore mask (1
            counts, 0 ignored), given to `loss` (a copy of it, as
            `loss.mask_index`); `None` or the slot `loss` reads keeps the
            mask `loss` reads, if any. A `Compound` takes no `mask_index`:
            give it to its members, all of them or none (a mix raises a
            `ValueError`, see `downsample_targets`). The mask is min-pooled
            with the target, so ignored voxels change neither value nor
            gradient at any resolution. Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.
    """

    def __init__(self, loss, mask_index=None, reduction="sum_over_batch_size", name=None,
                 dtype=None):
        self._set_loss(loss, mask_index)
        super().__init__(reduction=reduction, name=name or f"{self.loss.name}_downsampled",
                         dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = downsample_targets(y_true, y_pred.shape[1:-1], y_pred.shape[-1],
                                    self.mask_index)
        return _per_sample(self.loss.call(y_true, y_pred))

    def get_config(self):
        return {**super().get_config(), "loss": _config_of(self.loss),
                "mask_index": self.mask_index}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register
class DeepSupervision(_Wrapper):
    """One loss over the outputs of a deep-supervision model.

    `L = sum_l w_l loss(down_l(y_true), y_pred_l)`, `y_pred` the list of
    outputs finest first and `down_l` the reduction of the target to output
    l's resolution (labels max-pooled, packed maps average-pooled, an
    ignore mask min-pooled; see `downsample_targets`).

    Args:
        loss: a `keras.losses.Loss`.
        weights: `"exp"` (1, 1/2, 1/4, ...; MONAI's default), `"same"` or a
            list with one weight per output. Defaults to `"exp"`.
        mask_index: `None` or int >= 0, the packed slot of an ignore mask,
            given to `loss` as `DownsampledTarget` does. Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import Dice
    >>> y = np.zeros((1, 8, 8, 8, 1)); y[0, 2:6, 2:6, 2:6] = 1
    >>> outputs = [y, y[:, ::2, ::2, ::2]]
    >>> round(float(DeepSupervision(Dice(smooth=0.0))(y, outputs)), 4)
    0.0

    Reference:
        Isensee et al., BrainLes 2017 (deep supervision of the decoder);
        MONAI's `DeepSupervisionLoss`.
    """

    def __init__(self, loss, weights="exp", mask_index=None, reduction="sum_over_batch_size",
                 name="deep_supervision", dtype=None):
        self._set_loss(loss, mask_index)
        if isinstance(weights, str):
            supervision_weights(1, weights)  # validates the name
        else:
            weights = supervision_weights(len(list(weights)), weights)
        self.weights = weights
        self._level = DownsampledTarget(self.loss)
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        if not isinstance(y_pred, (list, tuple)):
            y_pred = [y_pred]
        weights = supervision_weights(len(y_pred), self.weights)
        total = None
        for w, p in zip(weights, y_pred):
            term = w * self._level.call(y_true, p)
            total = term if total is None else total + term
        return total

    def compile_arguments(self, n_outputs):
        """`model.compile` arguments for a model with `n_outputs` outputs
        (finest first): `{"loss": [...], "loss_weights": [...]}`; `fit`
        then takes the full-resolution target once per output
        (`[y] * n_outputs`)."""
        return {"loss": [DownsampledTarget(self.loss) for _ in range(n_outputs)],
                "loss_weights": supervision_weights(n_outputs, self.weights)}

    def get_config(self):
        return {**super().get_config(), "loss": _config_of(self.loss),
                "weights": self.weights, "mask_index": self.mask_index}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
