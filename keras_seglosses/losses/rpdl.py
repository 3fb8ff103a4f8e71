"""The RPDL paper's losses: weighted cross entropy, Dice, Reward-Penalty Dice,
and the released code's single-target variant [000, Eq. 1-4].

Each loss is a pure `keras.ops` function plus a thin registered
`keras.losses.Loss` class whose `call` delegates to it.

An ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`) may
differ between the channels of a voxel where the channels are independent
(probabilities); with logits of several channels the loss applies a softmax,
which couples them, and a voxel counts only where every channel counts.
"""

import keras
from keras import ops

from keras_seglosses._core import (
    SegLoss,
    check_choice,
    check_map_index,
    check_number,
    ignore_mask,
    per_sample,
    prepare,
    probabilities,
    register,
    softmax_couples,
    split_targets,
    voxel_dot,
    voxel_mean,
    voxel_sum,
)
from keras_seglosses.targets import require_map_columns, voxel_columns

__all__ = [
    "weighted_binary_crossentropy",
    "dice",
    "reward_penalty_dice",
    "legacy_reward_penalty_dice",
    "WeightedBinaryCrossentropy",
    "Dice",
    "RewardPenaltyDice",
    "LegacyRewardPenaltyDice",
]


def _log_probabilities(y_pred, from_logits):
    """`(log P, log(1 - P))` in float32, clipped as Keras does.

    One logit channel goes through `log_sigmoid` (exact, no clipping); several
    are a softmax across channels (SPEC section 2), clipped like probabilities.
    """
    y_pred = ops.cast(y_pred, "float32")
    if from_logits and y_pred.shape[-1] == 1:
        return ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
    eps = keras.config.epsilon()
    p = ops.clip(probabilities(y_pred, from_logits), eps, 1.0 - eps)
    return ops.log(p), ops.log(1.0 - p)


# ------------------------------------------------------------------ functions
def weighted_binary_crossentropy(
    y_true, y_pred, *, pos_weight=1.0, voxel_reduction="mean", from_logits=False,
    mask_index=None,
):
    """Per-sample weighted binary cross entropy [000, Eq. 1].

    `-(1/N) sum_n [w y_n log P_n + (1 - y_n) log(1 - P_n)]`, with N the voxels
    (times channels) of one sample, or the sum instead of the mean when
    `voxel_reduction="sum"` (the released code). With an ignore mask (slot
    `mask_index`) the sums and N run over the counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, labels, y_pred = split_targets(y_true, y_pred, "WeightedBinaryCrossentropy")
    c = y_pred.shape[-1]
    mask = ignore_mask(y_true, c, mask_index, "WeightedBinaryCrossentropy",
                       coupled=softmax_couples(from_logits, c))
    log_p, log_not_p = _log_probabilities(y_pred, from_logits)
    if mask is not None:
        labels = labels * mask
    ce = -(pos_weight * labels * log_p + (1.0 - labels) * log_not_p)
    if voxel_reduction == "sum":
        return voxel_sum(ce if mask is None else ce * mask)
    return voxel_mean(ce, mask)


def _class_sums(columns, fn):
    """`fn` on each class's voxel columns, stacked on a last class axis:
    `(C,)` (batch pooled) or `(batch, C)`."""
    return ops.stack([fn(*cols) for cols in zip(*columns)], axis=-1)


def dice(
    y_true,
    y_pred,
    *,
    smooth=1.0,
    squared=False,
    batch=True,
    from_logits=False,
    include_background=True,
    soft_label=False,
    mask_index=None,
):
    """Per-sample Dice loss [000, Eq. 2; 004, Eq. 8-9].

    `1 - (2 sum y P + s) / (sum y + sum P + s)` per class, squared
    denominators (`sum y^2 + sum P^2`) when `squared=True`, sums over the whole
    mini-batch when `batch=True`; the mean over classes. With `soft_label`
    the overlap is `(sum y + sum P - sum |y - P|) / 2` (see `Dice`). With an
    ignore mask (slot `mask_index`) the sums run over the counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, _, p = prepare(y_true, y_pred, from_logits, "Dice", mask_index)
    c = p.shape[-1]
    cols = (voxel_columns(y_true, batch)[:c], voxel_columns(p, batch))
    if soft_label and not squared:
        # for binary y this is sum y P; for soft y it makes P = y the minimum
        overlap = _class_sums(
            cols, lambda y, q: 0.5 * (ops.sum(y, -1) + ops.sum(q, -1) - ops.sum(ops.abs(y - q), -1))
        )
    else:
        overlap = _class_sums(cols, voxel_dot)
    if squared:
        total = _class_sums(cols, lambda y, q: voxel_dot(y, y) + voxel_dot(q, q))
    else:
        total = _class_sums(cols, lambda y, q: ops.sum(y, -1) + ops.sum(q, -1))
    loss = 1.0 - (2.0 * overlap + smooth) / (total + smooth)
    return per_sample(loss, p, batch, include_background)


def reward_penalty_dice(
    y_true, y_pred, *, smooth=1.0, batch=True, from_logits=False, map_index=0, mask_index=None
):
    """Per-sample Reward-Penalty Dice loss [000, Eq. 3].

    `1 - (2 sum y P M + s) / (sum y |M| + sum P |M| + s)` with the reward-penalty
    map M packed in `y_true` at map slot `map_index`; the mean over classes.
    Labels must be non-negative (binary, one-hot or soft). With an ignore
    mask (slot `mask_index`) the sums run over the counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, _, p = prepare(y_true, y_pred, from_logits, "RewardPenaltyDice", mask_index)
    ys, ms = require_map_columns(
        y_true, p.shape[-1], map_index, batch, "RewardPenaltyDice", "reward-penalty map"
    )

    def sums(y, m, q):
        # y >= 0, so y|M| = |yM|: one product of the (constant) target serves
        # numerator and denominator; P meets only yM and |M|, so the backward
        # pass is `a yM + b |M|` and y P M is never formed.
        ym = y * m
        overlap = voxel_dot(ym, q)
        return ops.stack([overlap, ops.sum(ops.abs(ym), -1) + voxel_dot(ops.abs(m), q)])

    overlap, total = ops.unstack(_class_sums((ys, ms, voxel_columns(p, batch)), sums), axis=0)
    loss = 1.0 - (2.0 * overlap + smooth) / (total + smooth)
    return per_sample(loss, p, batch)


def legacy_reward_penalty_dice(y_true, y_pred, *, smooth=1.0, batch=True, from_logits=False,
                               mask_index=None):
    """Per-sample loss of the released RPDL code on its encoded target `h`.

    `1 - (2 sum h P + s) / (sum |h| + sum P + s)` with `h` from
    `legacy_reward_penalty_targets` in place of the labels; with an ignore
    mask (slot `mask_index`) the sums run over the counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, _, p = prepare(y_true, y_pred, from_logits, "LegacyRewardPenaltyDice", mask_index)
    c = p.shape[-1]
    cols = (voxel_columns(y_true, batch)[:c], voxel_columns(p, batch))
    overlap = _class_sums(cols, voxel_dot)
    total = _class_sums(cols, lambda h, q: ops.sum(ops.abs(h), -1) + ops.sum(q, -1))
    loss = 1.0 - (2.0 * overlap + smooth) / (total + smooth)
    return per_sample(loss, p, batch)


# -------------------------------------------------------------------- classes
@register
class WeightedBinaryCrossentropy(SegLoss):
    """Weighted binary cross entropy of the RPDL paper.

    `WCEL = -(1/N) sum_n [w y_n log P_n + (1 - y_n) log(1 - P_n)]`, N the
    voxels (times channels) of a sample, so Keras' mean over the batch gives
    the paper's mean over the mini-batch. Probabilities are clipped to
    `[eps, 1 - eps]` (`keras.config.epsilon()`); one logit channel uses the
    exact log-sigmoid, several a softmax across channels.

    The released code used `w = 23.485` (`keras_seglosses.ORIGINAL_POS_WEIGHT`,
    its data's background/foreground ratio), clipped at `1e-6` and summed over
    all voxels of the batch instead of averaging. With
    `keras.config.set_epsilon(1e-6)`,
    `WeightedBinaryCrossentropy(ORIGINAL_POS_WEIGHT, voxel_reduction="sum",
    reduction="sum")` reproduces it. `pos_weight_from_labels(y)` computes the
    ratio for your data.

    Args:
        pos_weight: float >= 0, the weight w of foreground voxels. Defaults to
            `1.0`.
        voxel_reduction: `"mean"` (Eq. 1) or `"sum"` (the released code).
            Defaults to `"mean"`.
        from_logits: bool. Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Shapes: `y_pred` `(batch, *spatial, C)`; `y_true` the same, possibly
    packed with maps (ignored).

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[0.5], [0.5]]])
    >>> round(float(WeightedBinaryCrossentropy(pos_weight=3.0)(y, p)), 4)
    1.3863

    Reference:
        He et al., IJCNN 2020 [000, Eq. 1].
    """

    def __init__(
        self,
        pos_weight=1.0,
        voxel_reduction="mean",
        from_logits=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="weighted_binary_crossentropy",
        dtype=None,
    ):
        super().__init__(
            weighted_binary_crossentropy,
            reduction=reduction,
            name=name,
            dtype=dtype, mask_index=mask_index,
            pos_weight=float(check_number("pos_weight", pos_weight, low=0)),
            voxel_reduction=check_choice("voxel_reduction", voxel_reduction, {"mean", "sum"}),
            from_logits=bool(from_logits),
        )


@register
class Dice(SegLoss):
    """Dice loss, with the variants of the Loss odyssey.

    `DL = 1 - (2 sum y P + s) / (sum y + sum P + s)` per class (Eq. 2), or
    with squared denominators `sum y^2 + sum P^2` (Milletari's V-net form,
    [004, Eq. 9]); sums over the whole mini-batch (`batch=True`, the RPDL
    original: "N is the number of voxels in the mini-batch") or per sample.
    With several channels the loss is the mean of the per-class losses.

    The four Dice variants benchmarked in the Loss odyssey [004, Sec. 4.3]
    are `Dice(squared=s, batch=b)` for s, b in {False, True}.

    Args:
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1.0`.
        squared: bool, squared terms in the denominator. Defaults to `False`.
        batch: bool, pool the sums over the mini-batch. Defaults to `True`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1 channel 0 is left out
            of the mean. Defaults to `True`.
        soft_label: bool; targets in [0, 1] (a mean of annotations): the
            overlap from L1 norms, `(sum y + sum P - sum |y - P|) / 2`
            (MONAI's `DiceLoss(soft_label=True)`), so that `P = y` is the
            minimum; with `sum y P` a soft target is best matched by `P = 1`
            wherever `y > 0.5`. Identical for binary targets; the squared
            form needs no change (its minimum is already `P = y`). Defaults
            to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`. With
    `batch=True` every sample carries the pooled value.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> float(Dice()(y, p))
    0.0

    Reference:
        He et al., IJCNN 2020 [000, Eq. 2]; Ma et al. [004, Eq. 8-9].
    """

    def __init__(
        self,
        smooth=1.0,
        squared=False,
        batch=True,
        from_logits=False,
        include_background=True,
        soft_label=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="dice",
        dtype=None,
    ):
        super().__init__(
            dice,
            reduction=reduction,
            name=name,
            dtype=dtype, mask_index=mask_index,
            smooth=float(check_number("smooth", smooth, low=0)),
            squared=bool(squared),
            batch=bool(batch),
            from_logits=bool(from_logits),
            include_background=bool(include_background),
            soft_label=bool(soft_label),
        )


@register
class RewardPenaltyDice(SegLoss):
    """Reward-Penalty Dice loss (RPDL) for non-unique segmentation.

    `RPDL = 1 - (2 sum y P M + s) / (sum y |M| + sum P |M| + s)` with M the
    reward-penalty map of the input (`reward_penalty_map`): voxels many
    experts marked are rewarded, voxels none marked are penalized. Its
    gradient (s = 0) is [000, Eq. 4]:

        dRPDL/dP_i = 2 (|M_i| sum y P M - y_i M_i (sum y|M| + sum P|M|))
                     / (sum y|M| + sum P|M|)^2

    M travels in `y_true` at packed slot `map_index`: build targets with
    `keras_seglosses.pack_targets(labels, M)` (slot 0), or name the slots
    with `keras_seglosses.TargetLayout`. Sums pool the mini-batch by
    default, as the paper ("N is the number of voxels in the mini-batch") and
    its code.

    Args:
        smooth: float >= 0. Defaults to `1.0`.
        batch: bool, pool over the mini-batch. Defaults to `True`.
        from_logits: bool. Defaults to `False`.
        map_index: int >= 0, the packed slot of M (it cannot be computed
            from one annotation). Defaults to `0`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Shapes: `y_pred` `(batch, *spatial, C)`; `y_true` `(batch, *spatial,
    (2 + map_index) C)` at least (labels, then the maps).

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import pack_targets, reward_penalty_map
    >>> ann = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], "float32")
    >>> m = reward_penalty_map(ann)               # [1, 0.5, -1, -1]
    >>> y = pack_targets(ann[:1, :, None], m[None, :, None])
    >>> p = np.array([[[1.0], [0.0], [1.0], [0.0]]])  # one shared, one untouched voxel
    >>> round(float(RewardPenaltyDice(smooth=0.0)(y, p)), 4)   # 1 - 2 / (1.5 + 2)
    0.4286

    Reference:
        He et al., IJCNN 2020 [000, Eq. 3-4].
    """

    map_kind = "rpmap"

    def __init__(
        self,
        smooth=1.0,
        batch=True,
        from_logits=False,
        map_index=0,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="reward_penalty_dice",
        dtype=None,
    ):
        super().__init__(
            reward_penalty_dice,
            reduction=reduction,
            name=name,
            dtype=dtype, mask_index=mask_index,
            smooth=float(check_number("smooth", smooth, low=0)),
            batch=bool(batch),
            from_logits=bool(from_logits),
            map_index=check_map_index(map_index, allow_none=False),
        )


@register
class LegacyRewardPenaltyDice(SegLoss):
    """The released RPDL code's loss, on its single encoded target.

    `1 - (2 sum h P + s) / (sum |h| + sum P + s)` summed over the whole batch,
    where `h = legacy_reward_penalty_targets(y, annotations)` replaces the
    labels (no separate map). For re-running the original experiments
    exactly; new work should use `RewardPenaltyDice`.

    Args:
        smooth: float >= 0. Defaults to `1.0`.
        batch: bool, pool over the mini-batch (the original). Defaults to
            `True`.
        from_logits: bool. Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:

    >>> import numpy as np
    >>> h = np.array([[[1.0], [0.0], [-1.0]]]); p = np.array([[[1.0], [0.0], [0.0]]])
    >>> round(float(LegacyRewardPenaltyDice(smooth=0.0)(h, p)), 4)
    0.3333

    Reference:
        He et al., IJCNN 2020 [000, Eq. 3]; the authors' released training code.
    """

    label_kind = "legacy"

    def __init__(
        self,
        smooth=1.0,
        batch=True,
        from_logits=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="legacy_reward_penalty_dice",
        dtype=None,
    ):
        super().__init__(
            legacy_reward_penalty_dice,
            reduction=reduction,
            name=name,
            dtype=dtype, mask_index=mask_index,
            smooth=float(check_number("smooth", smooth, low=0)),
            batch=bool(batch),
            from_logits=bool(from_logits),
        )
