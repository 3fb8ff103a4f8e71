"""Region-based losses of the Loss odyssey [004, Sec. 2.2].

`Dice` (Eq. 8-9) lives with the RPDL losses (`keras_seglosses.losses.rpdl`);
its four variants of the review's Sec. 4.3 are `Dice(squared=..., batch=...)`.

All losses here work on per-class sums over the spatial axes of one sample
(`batch=False`) or of the whole mini-batch (`batch=True`, the sums pooled and
the value repeated per sample). Multi-class losses average their per-class
values (channel 0 left out with `include_background=False`), except the
generalized Dice family whose weighted sums run over classes by definition.
Soft overlaps use only three reductions, `sum g s`, `sum g`, `sum s`:
false positives are `sum s - sum g s`, false negatives `sum g - sum g s`.
With an ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`)
every sum runs over the counted voxels only. A mask may differ between
channels where they are independent (probabilities, one sigmoid per class):
each class's sums then run over its own counted voxels. A softmax of logits
(`from_logits=True`, C > 1) couples the classes of a voxel, so there a voxel
counts only where every channel counts (the mask's per-voxel minimum), and
no logit of a partly ignored voxel gets gradient; so does
`GeneralizedWassersteinDice`, whose distance compares whole class
distributions.
"""

from keras import ops

from keras_seglosses._core import (
    SegLoss,
    check_choice,
    check_number,
    ignore_mask,
    per_sample,
    prepare,
    region_sum,
    register,
    voxel_weight,
)
from keras_seglosses.losses._common import _safe_power

__all__ = [
    "sensitivity_specificity",
    "iou",
    "lovasz",
    "tversky",
    "focal_tversky",
    "asymmetric_similarity",
    "generalized_dice",
    "penalty_generalized_dice",
    "generalized_wasserstein_dice",
    "SensitivitySpecificity",
    "IoU",
    "Lovasz",
    "Tversky",
    "FocalTversky",
    "AsymmetricSimilarity",
    "GeneralizedDice",
    "PenaltyGeneralizedDice",
    "GeneralizedWassersteinDice",
]


def _overlaps(y_true, y_pred, from_logits, batch, name, soft_label=False, mask_index=None):
    """`(tp, sum g, sum s, s)`: per-class soft overlaps, `(batch, C)` or `(C,)`.

    With `soft_label`, `tp = (|g|_1 + |s|_1 - |g - s|_1) / 2` (MONAI's
    `soft_label=True`, after Wang and Blaschko's JDT losses): equal to
    `sum g s` for binary g, and for soft g it makes `s = g` the minimum of
    every loss built on it, which `sum g s` does not (it prefers s = 1
    wherever g > 0.5).
    """
    _, g, s = prepare(y_true, y_pred, from_logits, name, mask_index)
    sg, ss = region_sum(g, batch), region_sum(s, batch)
    if soft_label:
        tp = 0.5 * (sg + ss - region_sum(ops.abs(g - s), batch))
    else:
        tp = region_sum(g * s, batch)
    return tp, sg, ss, s


def _select_classes(values, include_background):
    if not include_background and values.shape[-1] > 1:
        return values[..., 1:]
    return values


# ------------------------------------------------------------------ functions
def sensitivity_specificity(
    y_true, y_pred, *, w=0.1, smooth=1.0, batch=False, from_logits=False,
    include_background=True, mask_index=None,
):
    """Per-sample sensitivity-specificity loss [004, Eq. 7].

    `w sum (g - s)^2 g / (sum g + e) + (1 - w) sum (g - s)^2 (1 - g) /
    (sum (1 - g) + e)` per class, e = `smooth`; the mean over classes.

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, g, s, mask = prepare(y_true, y_pred, from_logits, "SensitivitySpecificity", mask_index,
                            return_mask=True)
    err = ops.square(g - s)
    fg = region_sum(err * g, batch) / (region_sum(g, batch) + smooth)
    # the background term is the one that an ignored voxel (g = s = 0) would enter
    not_g = 1.0 - g
    if mask is not None:
        not_g = not_g * mask
    bg = region_sum(err * not_g, batch) / (region_sum(not_g, batch) + smooth)
    return per_sample(w * fg + (1.0 - w) * bg, s, batch, include_background)


def iou(
    y_true, y_pred, *, smooth=1.0, batch=False, from_logits=False, include_background=True,
    soft_label=False, mask_index=None,
):
    """Per-sample soft IoU (Jaccard) loss [004, Eq. 10].

    `1 - (sum g s + e) / (sum (g + s - g s) + e)` per class; the mean over
    classes.

    Returns:
        Tensor of shape `(batch,)`.
    """
    tp, sg, ss, s = _overlaps(
        y_true, y_pred, from_logits, batch, "IoU", soft_label, mask_index
    )
    loss = 1.0 - (tp + smooth) / (sg + ss - tp + smooth)
    return per_sample(loss, s, batch, include_background)


def tversky(
    y_true, y_pred, *, alpha=0.3, beta=0.7, smooth=1.0, batch=False, from_logits=False,
    include_background=True, soft_label=False, mask_index=None,
):
    """Per-sample Tversky loss [004, Eq. 14].

    `1 - (TP + e) / (TP + alpha FP + beta FN + e)` per class with soft
    `TP = sum g s`, `FP = sum (1 - g) s`, `FN = sum g (1 - s)`; the mean over
    classes.

    Returns:
        Tensor of shape `(batch,)`.
    """
    tp, sg, ss, s = _overlaps(
        y_true, y_pred, from_logits, batch, "Tversky", soft_label, mask_index
    )
    loss = _tversky_per_class(tp, sg, ss, alpha, beta, smooth)
    return per_sample(loss, s, batch, include_background)


def _tversky_per_class(tp, sg, ss, alpha, beta, smooth):
    fp, fn = ss - tp, sg - tp
    return 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def focal_tversky(
    y_true, y_pred, *, alpha=0.3, beta=0.7, gamma=0.75, smooth=1.0, batch=False,
    from_logits=False, include_background=True, soft_label=False, mask_index=None,
):
    """Per-sample focal Tversky loss [004, Eq. 16].

    `(1 - T_c)^gamma` per class (Eq. 16 writes the exponent `1/gamma`), T the
    Tversky index; the mean over classes.

    Returns:
        Tensor of shape `(batch,)`.
    """
    tp, sg, ss, s = _overlaps(
        y_true, y_pred, from_logits, batch, "FocalTversky", soft_label, mask_index
    )
    loss = _safe_power(_tversky_per_class(tp, sg, ss, alpha, beta, smooth), gamma)
    return per_sample(loss, s, batch, include_background)


def asymmetric_similarity(
    y_true, y_pred, *, beta=1.5, smooth=1.0, batch=False, from_logits=False,
    include_background=True, soft_label=False, mask_index=None,
):
    """Per-sample asymmetric similarity loss [004, Eq. 17].

    The Tversky loss with `alpha = 1 / (1 + beta^2)` on false positives and
    `beta^2 / (1 + beta^2)` on false negatives (the F_beta score).

    Returns:
        Tensor of shape `(batch,)`.
    """
    b2 = beta * beta
    tp, sg, ss, s = _overlaps(
        y_true, y_pred, from_logits, batch, "AsymmetricSimilarity", soft_label, mask_index
    )
    loss = _tversky_per_class(tp, sg, ss, 1.0 / (1.0 + b2), b2 / (1.0 + b2), smooth)
    return per_sample(loss, s, batch, include_background)


#: `weighting` of the generalized Dice: the class weight as a function of
#: the class's ground-truth volume G_c (MONAI's `w_type`).
GD_WEIGHTINGS = ("square", "simple", "uniform")


def _generalized_dice_coefficient(y_true, y_pred, smooth, batch, from_logits,
                                  include_background, name, soft_label, weighting="square",
                                  mask_index=None):
    """`(GD, s)`: `(2 sum_c w_c TP_c + e) / (sum_c w_c (G_c + S_c) + e)`,
    `w_c = 1 / G_c^2` (`"square"`, Sudre et al.), `1 / G_c` (`"simple"`) or
    1 (`"uniform"`); an absent class (G_c = 0) gets the largest weight of
    the present ones, as MONAI does, instead of an infinite one."""
    tp, sg, ss, s = _overlaps(y_true, y_pred, from_logits, batch, name, soft_label, mask_index)
    tp, sg, ss = (_select_classes(v, include_background) for v in (tp, sg, ss))
    if weighting == "uniform":
        w = ops.ones_like(sg)
    else:
        present = sg > 0
        volume = ops.where(present, sg, 1.0)
        w = 1.0 / (ops.square(volume) if weighting == "square" else volume)
        w = ops.where(present, w, 0.0)
        w = ops.where(present, w, ops.max(w, axis=-1, keepdims=True))
    w = ops.stop_gradient(w)
    numerator = 2.0 * ops.sum(w * tp, axis=-1) + smooth
    denominator = ops.sum(w * (sg + ss), axis=-1) + smooth
    return numerator / denominator, s


def _repeat(values, like, batch):
    if batch:
        return ops.broadcast_to(values, ops.shape(like)[:1])
    return values


def generalized_dice(
    y_true, y_pred, *, smooth=1e-5, batch=False, from_logits=False, include_background=True,
    soft_label=False, weighting="square", mask_index=None,
):
    """Per-sample generalized Dice loss [004, Eq. 15].

    `1 - (2 sum_c w_c sum_i g s + e) / (sum_c w_c sum_i (g + s) + e)` with
    `w_c = 1 / (sum_i g_i^c)^2` (`weighting="square"`, Eq. 15), `1 / sum_i
    g_i^c` (`"simple"`) or 1 (`"uniform"`).

    Returns:
        Tensor of shape `(batch,)`.
    """
    gd, s = _generalized_dice_coefficient(
        y_true, y_pred, smooth, batch, from_logits, include_background, "GeneralizedDice",
        soft_label, weighting, mask_index,
    )
    return _repeat(1.0 - gd, s, batch)


def penalty_generalized_dice(
    y_true, y_pred, *, k=2.5, smooth=1e-5, batch=False, from_logits=False,
    include_background=True, soft_label=False, weighting="square", mask_index=None,
):
    """Per-sample penalty generalized Dice loss [004, Eq. 18].

    `1 - pGD` with `pGD = GD / (1 + k (1 - GD))`, GD the generalized Dice
    coefficient; this equals Eq. 18's first line, which adds `k` times the
    weighted false positives and false negatives to the denominator.

    Returns:
        Tensor of shape `(batch,)`.
    """
    gd, s = _generalized_dice_coefficient(
        y_true, y_pred, smooth, batch, from_logits, include_background,
        "PenaltyGeneralizedDice", soft_label, weighting, mask_index,
    )
    return _repeat(1.0 - gd / (1.0 + k * (1.0 - gd)), s, batch)



#: `weighting` of the generalized Wasserstein Dice: Fidon et al.'s (every
#: foreground class 1, the background 0) or the generalized Dice's
#: (`1 / (V_c + 1)`, V_c the class's ground-truth volume).
GWD_WEIGHTINGS = ("default", "gdl")


def _two_classes(x):
    """One sigmoid channel as the two classes (background, foreground)."""
    return ops.concatenate([1.0 - x, x], axis=-1) if x.shape[-1] == 1 else x


def generalized_wasserstein_dice(y_true, y_pred, *, distance_matrix, weighting="default",
                                 smooth=1e-5, from_logits=False, mask_index=None):
    """Per-sample generalized Wasserstein Dice loss (Fidon et al. 2017).

    With `W_i = sum_{k,l} g_ik M_kl p_il` the Wasserstein distance between
    the label and the prediction at voxel i under the class distance matrix
    M (Eq. 6), `a_i = sum_k g_ik alpha_k` and `TP = sum_i a_i (1 - W_i)`:
    `1 - (2 TP + e) / (2 TP + sum_i W_i + e)` (`weighting="default"`,
    alpha = (0, 1, ..., 1), Eq. 9) or `1 - (2 TP + e) / (sum_i a_i (2 -
    W_i) + e)` with `alpha_k = 1 / (V_k + 1)` (`"gdl"`).

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, g, p = prepare(y_true, y_pred, from_logits, "GeneralizedWassersteinDice")
    mask = ignore_mask(y_true, p.shape[-1], mask_index, "GeneralizedWassersteinDice")
    g, p = _two_classes(g), _two_classes(p)
    c = p.shape[-1]
    m = ops.convert_to_tensor(distance_matrix, "float32")
    if tuple(m.shape) != (c, c):
        sigmoid = " (one sigmoid channel: background and foreground)" if c == 2 else ""
        raise ValueError(
            f"GeneralizedWassersteinDice: `distance_matrix` is {tuple(m.shape)}, the "
            f"prediction has {c} classes{sigmoid}; expected ({c}, {c})."
        )
    batch = ops.shape(p)[0]
    g = ops.reshape(g, (batch, -1, c))
    p = ops.reshape(p, (batch, -1, c))
    w = ops.sum(ops.matmul(g, m) * p, axis=-1)
    if mask is not None:
        # weight the voxels, not the classes: W_i compares whole class
        # distributions (the coupled rule of `ignore_mask`), and masking one
        # sigmoid channel would make its background class certain
        counted = ops.reshape(voxel_weight(mask), (batch, -1))
        g = g * counted[..., None]
        w = w * counted
    if weighting == "gdl":
        alpha = 1.0 / (ops.sum(g, axis=1) + 1.0)
    else:
        alpha = ops.broadcast_to(ops.convert_to_tensor([0.0] + [1.0] * (c - 1)), (batch, c))
    a = ops.sum(g * alpha[:, None, :], axis=-1)
    tp = ops.sum(a * (1.0 - w), axis=-1)
    if weighting == "gdl":
        denominator = ops.sum(a * (2.0 - w), axis=-1)
    else:
        denominator = 2.0 * tp + ops.sum(w, axis=-1)
    return 1.0 - (2.0 * tp + smooth) / (denominator + smooth)

def _lovasz_flat(errors, fg):
    """Lovasz extension of the Jaccard loss along the last axis [004, Eq. 13].

    `errors` (non-negative), `fg`: `(..., n)`. The errors are sorted in
    decreasing order; with `G = sum fg` and the sorted labels' cumulative sum
    `F_i`, the Jaccard loss of the first i voxels is
    `J_i = 1 - (G - F_i) / (G + i - F_i)`, and the extension is
    `sum_i e_(i) (J_i - J_(i-1))`, `J_0 = 0`.

    The one sort is a top-k over the errors' bit patterns: non-negative floats
    order like their bits read as integers, and integer keys sort faster than
    floats under XLA; the same call returns the permutation.
    """
    n = errors.shape[-1]
    if n is None:  # `batch=True` with an unknown batch size (TF's `view` needs it)
        order = ops.argsort(-ops.stop_gradient(errors), axis=-1)
    else:
        _, order = ops.top_k(ops.view(ops.stop_gradient(errors), "int32"), n)
    fg_sorted = ops.take_along_axis(fg, order, axis=-1)
    total = ops.sum(fg, axis=-1, keepdims=True)
    cum_fg = ops.cumsum(fg_sorted, axis=-1)
    position = ops.cumsum(ops.ones_like(fg_sorted), axis=-1)
    jaccard = 1.0 - (total - cum_fg) / (total + position - cum_fg)
    steps = jaccard - ops.pad(jaccard[..., :-1], [(0, 0)] * (len(jaccard.shape) - 1) + [(1, 0)])
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    return ops.sum(errors_sorted * ops.stop_gradient(steps), axis=-1)


def _n_voxels(x):
    n = 1
    for d in x.shape[1:-1]:
        n *= d
    return n


def lovasz(y_true, y_pred, *, batch=False, from_logits=False, include_background=True,
           mask_index=None):
    """Per-sample Lovasz loss [004, Eq. 11-13].

    Per class, the errors `m_i = |g_i - s_i|` (Eq. 11) go through the exact
    Lovasz extension of the Jaccard loss (Eq. 12-13); the mean over classes.
    With `batch=True` the voxels of the whole mini-batch form one set.

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, g, s = prepare(y_true, y_pred, from_logits, "Lovasz", mask_index)
    g, s_used = _select_classes(g, include_background), _select_classes(s, include_background)
    rank = len(s.shape)
    c = s_used.shape[-1]
    # classes first, then the batch, then the voxels of a sample (or of the
    # whole batch) on the last axis
    perm = (rank - 1, 0) + tuple(range(1, rank - 1))
    flat_shape = (c, -1) if batch else (c, -1, _n_voxels(s))
    g = ops.reshape(ops.transpose(g, perm), flat_shape)
    s_used = ops.reshape(ops.transpose(s_used, perm), flat_shape)
    per_class = _lovasz_flat(ops.abs(g - s_used), g)  # (C,) or (C, batch)
    if batch:
        return ops.broadcast_to(ops.mean(per_class), ops.shape(s)[:1])
    return ops.mean(per_class, axis=0)


# -------------------------------------------------------------------- classes
class _RegionLoss(SegLoss):
    """The arguments every overlap loss shares, validated once."""

    def __init__(self, fn, smooth, batch, from_logits, include_background, reduction,
                 name, dtype, **kwargs):
        super().__init__(
            fn, reduction=reduction, name=name, dtype=dtype,
            smooth=float(check_number("smooth", smooth, low=0)), batch=bool(batch),
            from_logits=bool(from_logits), include_background=bool(include_background),
            **kwargs,
        )


@register
class SensitivitySpecificity(_RegionLoss):
    """Sensitivity-specificity loss.

    `SS = w sum (g - s)^2 g / (sum g + e) + (1 - w) sum (g - s)^2 (1 - g) /
    (sum (1 - g) + e)` per class, the mean over classes; `w` weighs the
    foreground (sensitivity) term.

    Args:
        w: float in [0, 1]. Defaults to `0.1`.
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1.0`.
        batch: bool, pool the sums over the mini-batch (and repeat the value
            per sample). Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> float(SensitivitySpecificity()(y, p))
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 7]; Brosch et al., 2015.
    """

    def __init__(self, w=0.1, smooth=1.0, batch=False, from_logits=False,
                 include_background=True, mask_index=None, reduction="sum_over_batch_size",
                 name="sensitivity_specificity", dtype=None):
        super().__init__(
            sensitivity_specificity, smooth, batch, from_logits, include_background, reduction,
            name, dtype, mask_index=mask_index,
            w=float(check_number("w", w, low=0, high=1)),
        )

@register
class IoU(_RegionLoss):
    """Soft IoU (Jaccard) loss.

    `IoU = 1 - (sum g s + e) / (sum (g + s - g s) + e)` per class, the mean
    over classes.

    Args:
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1.0`.
        batch: bool, pool the sums over the mini-batch (and repeat the value
            per sample). Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        soft_label: bool; targets in [0, 1] (a mean of annotations): the
            overlap from L1 norms, `(|g| + |s| - |g - s|) / 2`, so that a
            prediction equal to the target is the minimum (MONAI's
            `soft_label`). Identical to the default for binary targets.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [1.0]]])
    >>> round(float(IoU(smooth=0.0)(y, p)), 4)
    0.5

    Reference:
        Ma et al., Loss odyssey [004, Eq. 10]; Rahman and Wang, 2016.
    """

    def __init__(self, smooth=1.0, batch=False, from_logits=False,
                 include_background=True, soft_label=False,
                 mask_index=None,
                 reduction="sum_over_batch_size", name="iou", dtype=None):
        super().__init__(
            iou, smooth, batch, from_logits, include_background, reduction,
            name, dtype, mask_index=mask_index, soft_label=bool(soft_label),
        )


@register
class Lovasz(SegLoss):
    """Lovasz loss: the exact Lovasz extension of the Jaccard loss.

    Per class, the voxel errors `m_i = |g_i - s_i|` are sorted in decreasing
    order and weighted by the increments of the Jaccard loss of the growing
    set of worst voxels [004, Eq. 11-13]; the mean over classes (one sigmoid
    channel: the foreground's). On binary predictions it equals `1 - IoU`.

    Args:
        batch: bool, the voxels of the whole mini-batch form one set.
            Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [1.0], [0.0]]]); p = np.array([[[1.0], [0.0], [1.0]]])
    >>> round(float(Lovasz()(y, p)), 4)
    0.6667

    Reference:
        Ma et al., Loss odyssey [004, Eq. 11-13]; Berman et al., 2018.
    """

    def __init__(self, batch=False, from_logits=False, include_background=True,
                 mask_index=None,
                 reduction="sum_over_batch_size", name="lovasz", dtype=None):
        super().__init__(
            lovasz, reduction=reduction, name=name, dtype=dtype, mask_index=mask_index,
            batch=bool(batch),
            from_logits=bool(from_logits), include_background=bool(include_background),
        )


@register
class Tversky(_RegionLoss):
    """Tversky loss.

    `TL = 1 - (TP + e) / (TP + alpha FP + beta FN + e)` per class with soft
    counts `TP = sum g s`, `FP = sum (1 - g) s`, `FN = sum g (1 - s)`; the
    mean over classes. `alpha = beta = 0.5` is the Dice loss. `alpha`
    weighs false positives and `beta` false negatives, as Salehi et al. and
    MONAI's `TverskyLoss`; check another library's convention before
    copying its values.

    Args:
        alpha: float >= 0, the weight of false positives. Defaults to `0.3`.
        beta: float >= 0, the weight of false negatives. Defaults to `0.7`.
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1.0`.
        batch: bool, pool the sums over the mini-batch (and repeat the value
            per sample). Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        soft_label: bool; targets in [0, 1] (a mean of annotations): the
            overlap from L1 norms, `(|g| + |s| - |g - s|) / 2`, so that a
            prediction equal to the target is the minimum (MONAI's
            `soft_label`). Identical to the default for binary targets.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[0.0], [1.0]]])
    >>> round(float(Tversky(smooth=1.0)(y, p)), 4)
    0.5

    Reference:
        Ma et al., Loss odyssey [004, Eq. 14]; Salehi et al., 2017.
    """

    def __init__(self, alpha=0.3, beta=0.7, smooth=1.0, batch=False, from_logits=False,
                 include_background=True, soft_label=False, mask_index=None,
                 reduction="sum_over_batch_size",
                 name="tversky", dtype=None):
        super().__init__(
            tversky, smooth, batch, from_logits, include_background, reduction,
            name, dtype, mask_index=mask_index, soft_label=bool(soft_label),
            alpha=float(check_number("alpha", alpha, low=0)),
            beta=float(check_number("beta", beta, low=0)),
        )

@register
class FocalTversky(_RegionLoss):
    """Focal Tversky loss: the per-class Tversky loss raised to `gamma`.

    `FTL = mean_c (1 - T_c)^gamma` (Eq. 16 writes the exponent as
    `1/gamma`; the review's code and this class use `gamma` directly, so
    `gamma < 1` emphasizes hard classes).

    Args:
        alpha: float >= 0, the weight of false positives. Defaults to `0.3`.
        beta: float >= 0, the weight of false negatives. Defaults to `0.7`.
        gamma: float > 0. Defaults to `0.75`.
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1.0`.
        batch: bool, pool the sums over the mini-batch (and repeat the value
            per sample). Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        soft_label: bool; targets in [0, 1] (a mean of annotations): the
            overlap from L1 norms, `(|g| + |s| - |g - s|) / 2`, so that a
            prediction equal to the target is the minimum (MONAI's
            `soft_label`). Identical to the default for binary targets.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[0.0], [1.0]]])
    >>> round(float(FocalTversky(gamma=1.0)(y, p)), 4)
    0.5

    Reference:
        Ma et al., Loss odyssey [004, Eq. 16]; Abraham and Khan, 2019.
    """

    def __init__(self, alpha=0.3, beta=0.7, gamma=0.75, smooth=1.0, batch=False,
                 from_logits=False, include_background=True, soft_label=False,
                 mask_index=None,
                 reduction="sum_over_batch_size", name="focal_tversky", dtype=None):
        super().__init__(
            focal_tversky, smooth, batch, from_logits, include_background, reduction,
            name, dtype, mask_index=mask_index, soft_label=bool(soft_label),
            alpha=float(check_number("alpha", alpha, low=0)),
            beta=float(check_number("beta", beta, low=0)),
            gamma=float(check_number("gamma", gamma, low=0, low_open=True)),
        )

@register
class AsymmetricSimilarity(_RegionLoss):
    """Asymmetric similarity loss (F-beta loss).

    `1 - (TP + e) / (TP + beta^2/(1 + beta^2) FN + 1/(1 + beta^2) FP + e)`
    per class, the mean over classes: the Tversky loss with `alpha + beta = 1`.

    Args:
        beta: float > 0; beta > 1 weighs false negatives more. Defaults to
            `1.5`.
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1.0`.
        batch: bool, pool the sums over the mini-batch (and repeat the value
            per sample). Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        soft_label: bool; targets in [0, 1] (a mean of annotations): the
            overlap from L1 norms, `(|g| + |s| - |g - s|) / 2`, so that a
            prediction equal to the target is the minimum (MONAI's
            `soft_label`). Identical to the default for binary targets.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> float(AsymmetricSimilarity()(y, p))
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 17]; Hashemi et al., 2019.
    """

    def __init__(self, beta=1.5, smooth=1.0, batch=False, from_logits=False,
                 include_background=True, soft_label=False, mask_index=None,
                 reduction="sum_over_batch_size",
                 name="asymmetric_similarity", dtype=None):
        super().__init__(
            asymmetric_similarity, smooth, batch, from_logits, include_background, reduction,
            name, dtype, mask_index=mask_index, soft_label=bool(soft_label),
            beta=float(check_number("beta", beta, low=0, low_open=True)),
        )

@register
class GeneralizedDice(_RegionLoss):
    """Generalized Dice loss.

    `GDL = 1 - (2 sum_c w_c sum_i g s + e) / (sum_c w_c sum_i (g + s) + e)`
    with `w_c = 1 / (sum_i g_i^c)^2` (no gradient through the weights); a class
    absent from the ground truth gets the largest weight of the present ones
    (MONAI's convention). The small default `smooth` matters: the weighted
    sums are of order `1 / sum g`.

    Args:
        weighting: the class weight from the class's ground-truth volume
            `G_c = sum_i g_i^c`: `"square"` (`1 / G_c^2`, Sudre et al.),
            `"simple"` (`1 / G_c`) or `"uniform"` (1, a Dice over the pooled
            classes), as MONAI's `w_type`. Defaults to `"square"`.
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1e-05`.
        batch: bool, pool the sums over the mini-batch (and repeat the value
            per sample). Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        soft_label: bool; targets in [0, 1] (a mean of annotations): the
            overlap from L1 norms, `(|g| + |s| - |g - s|) / 2`, so that a
            prediction equal to the target is the minimum (MONAI's
            `soft_label`). Identical to the default for binary targets.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [0.0]]])
    >>> round(float(GeneralizedDice()(y, p)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 15]; Sudre et al., 2017.
    """

    def __init__(self, smooth=1e-5, batch=False, from_logits=False,
                 include_background=True, soft_label=False, weighting="square",
                 mask_index=None,
                 reduction="sum_over_batch_size", name="generalized_dice", dtype=None):
        super().__init__(
            generalized_dice, smooth, batch, from_logits, include_background, reduction,
            name, dtype, mask_index=mask_index, soft_label=bool(soft_label),
            weighting=check_choice("weighting", weighting, GD_WEIGHTINGS),
        )


@register
class PenaltyGeneralizedDice(_RegionLoss):
    """Penalty generalized Dice loss.

    `1 - pGD`, `pGD = 2 sum_c w_c TP_c / (sum_c w_c (G_c + S_c) + k sum_c
    w_c (FP_c + FN_c)) = GD / (1 + k (1 - GD))`, GD the generalized Dice
    coefficient (see `GeneralizedDice`); `k = 0` is the generalized Dice loss.

    Args:
        k: float >= 0, the penalty of false positives and negatives.
            Defaults to `2.5`.
        weighting: `"square"`, `"simple"` or `"uniform"`, the class weights
            of `GeneralizedDice`. Defaults to `"square"`.
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1e-05`.
        batch: bool, pool the sums over the mini-batch (and repeat the value
            per sample). Defaults to `False`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        soft_label: bool; targets in [0, 1] (a mean of annotations): the
            overlap from L1 norms, `(|g| + |s| - |g - s|) / 2`, so that a
            prediction equal to the target is the minimum (MONAI's
            `soft_label`). Identical to the default for binary targets.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[1.0], [1.0]]])
    >>> round(float(PenaltyGeneralizedDice(smooth=0.0)(y, p)), 4)
    0.6364

    Reference:
        Ma et al., Loss odyssey [004, Eq. 18]; Su et al., 2019.
    """

    def __init__(self, k=2.5, smooth=1e-5, batch=False, from_logits=False,
                 include_background=True, soft_label=False, weighting="square",
                 mask_index=None,
                 reduction="sum_over_batch_size", name="penalty_generalized_dice", dtype=None):
        super().__init__(
            penalty_generalized_dice, smooth, batch, from_logits, include_background, reduction,
            name, dtype, mask_index=mask_index, soft_label=bool(soft_label),
            k=float(check_number("k", k, low=0)),
            weighting=check_choice("weighting", weighting, GD_WEIGHTINGS),
        )


def _distance_matrix(value):
    import numpy as np

    try:
        m = np.asarray(value, dtype="float64")
    except (TypeError, ValueError):
        m = None
    if m is None or m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError("Invalid value for argument `distance_matrix`. Expected a square "
                         "matrix of at least 2 x 2 class distances. Received: "
                         f"distance_matrix={value!r}")
    if (not np.all(np.isfinite(m)) or np.any(m < 0) or np.any(np.diag(m) != 0)
            or not m.max() > 0):
        raise ValueError("Invalid value for argument `distance_matrix`. Expected finite, "
                         "non-negative distances with a zero diagonal, not all 0. Received: "
                         f"distance_matrix={m.tolist()!r}")
    # The score needs distances in [0, 1] (its true positives are 1 - W).
    return (m / m.max()).tolist()


@register
class GeneralizedWassersteinDice(SegLoss):
    """Generalized Wasserstein Dice loss (Fidon et al., BrainLes 2017).

    A Dice loss in which a voxel's error is the Wasserstein distance between
    its label and its predicted class distribution under a matrix of class
    distances M, so confusing two related classes (tumour core and
    enhancing tumour) costs less than confusing one with the background:
    `W_i = sum_{k,l} g_ik M_kl p_il`, `TP = sum_i a_i (1 - W_i)` with
    `a_i` the weight of voxel i's class, and
    `L = 1 - (2 TP + e) / (2 TP + sum_i W_i + e)`. With M = 1 - I and
    binary labels this is a Dice loss over the foreground classes. One
    sigmoid channel counts as the two classes (background, foreground).

    Args:
        distance_matrix: `(C, C)` class distances (finite, >= 0, zero
            diagonal), C the classes of the prediction (2 for one sigmoid
            channel), class 0 the background; divided by its largest entry,
            as MONAI does, since the score needs distances in [0, 1].
        weighting: `"default"` (Fidon et al.: every foreground class 1,
            background 0) or `"gdl"` (`1 / (V_c + 1)`, V_c the class's
            ground-truth volume in the sample), MONAI's `weighting_mode`.
            Defaults to `"default"`.
        smooth: float >= 0 added to numerator and denominator. Defaults to
            `1e-5`.
        from_logits: bool; softmax (sigmoid for one channel). MONAI's
            `GeneralizedWassersteinDiceLoss` always applies a softmax: pass
            logits with `from_logits=True` to compare. Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    >>> m = [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]]
    >>> round(float(GeneralizedWassersteinDice(m)(y, y)), 4)
    0.0

    Reference:
        Fidon et al., "Generalised Wasserstein Dice Score for Imbalanced
        Multi-class Segmentation using Holistic Convolutional Networks",
        BrainLes 2017, Eq. 6 and 9.
    """

    def __init__(self, distance_matrix, weighting="default", smooth=1e-5, from_logits=False,
                 mask_index=None,
                 reduction="sum_over_batch_size", name="generalized_wasserstein_dice",
                 dtype=None):
        super().__init__(
            generalized_wasserstein_dice, reduction=reduction, name=name, dtype=dtype,
            mask_index=mask_index,
            distance_matrix=_distance_matrix(distance_matrix),
            weighting=check_choice("weighting", weighting, GWD_WEIGHTINGS),
            smooth=float(check_number("smooth", smooth, low=0)),
            from_logits=bool(from_logits),
        )
