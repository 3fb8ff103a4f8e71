"""Boundary-based losses of the Loss odyssey [004, Sec. 2.3]: the boundary
loss of Kervadec et al. and the distance-transform Hausdorff loss of Karimi
and Salcudean.

Both weight voxels by distance maps of the ground truth (and, for the
Hausdorff loss, of the thresholded prediction). The maps come from the
package's native distance ops (`keras_seglosses.ops`), computed inside the
loss, or are read from `y_true` when precomputed and packed
(`pack_targets(labels, map)`); either way no gradient flows through them.
Spatial inputs must be 2D or 3D (what the distance ops support).

With an ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`)
the maps are those of the masked labels and prediction (an ignored voxel is
background there), and the voxel means run over the counted voxels. MONAI's
`MaskedLoss` multiplies input and target by the mask as well, but its mean
still divides by every voxel: its value is this one times the counted
fraction of the volume. A mask that differs between the channels of a
voxel masks each class on its own with probabilities; with logits of several
channels (a softmax, which couples them) a voxel counts only where every
channel counts.
"""

from keras import ops

from keras_seglosses._core import (
    SegLoss,
    check_map_index,
    check_number,
    per_sample,
    prepare,
    register,
    spatial_axes,
)
from keras_seglosses.losses._common import boundary_distance, signed_distance_map
from keras_seglosses.ops.distance import spacing_argument
from keras_seglosses.targets import packed_or_computed

__all__ = [
    "signed_distance_map",
    "boundary_distance",
    "boundary",
    "hausdorff_dt",
    "Boundary",
    "HausdorffDT",
]


# ------------------------------------------------------------------ functions
def _class_means(x, mask):
    """Mean over the spatial axes of `x` `(batch, *spatial, C)`, zero at
    ignored voxels, per class: over the voxels `mask` counts (0 for a class
    without any), over all of them without a mask."""
    axes = spatial_axes(x)
    if mask is None:
        return ops.mean(x, axis=axes)
    return ops.divide_no_nan(ops.sum(x, axis=axes), ops.sum(mask, axis=axes))


def boundary(
    y_true, y_pred, *, from_logits=False, include_background=False, map_index=None,
    spacing=None, mask_index=None,
):
    """Per-sample boundary loss [004, Eq. 19-20].

    `(1/N) sum_i phi_G(i) s_i` per class, `phi_G` the signed distance of the
    ground truth (negative inside): computed with
    `keras_seglosses.ops.signed_distance` when `map_index` is None, else read
    from packed map slot `map_index`; the mean over classes. With an ignore
    mask (slot `mask_index`) `phi_G` is that of the masked labels and the
    mean runs over the counted voxels: `sum_i m_i phi_G(i) s_i / sum_i m_i`.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, g, s, mask = prepare(y_true, y_pred, from_logits, "Boundary", mask_index,
                                 return_mask=True)
    c = s.shape[-1]
    phi = packed_or_computed(
        y_true, c, map_index, lambda: signed_distance_map(g, spacing), "Boundary",
        "signed distance map",
    )
    return per_sample(_class_means(phi * s, mask), s, False, include_background)


def hausdorff_dt(
    y_true, y_pred, *, alpha=2.0, from_logits=False, include_background=False,
    map_index=None, spacing=None, log=False, mask_index=None,
):
    """Per-sample distance-transform Hausdorff loss [004, Eq. 21].

    `(1/N) sum_i (s_i - g_i)^2 (d_G(i)^alpha + d_S(i)^alpha)` per class,
    `d_X` the distance to the other side of X's boundary
    (`boundary_distance`; 0 for an empty mask), S the prediction thresholded
    at 0.5; `d_G` is computed when `map_index` is None, else read from packed
    map slot `map_index`. The mean over classes; with `log`, `log(1 + HD)`
    of that mean. With an ignore mask (slot `mask_index`) `d_G` and `d_S`
    are those of the masked labels and prediction, and the mean runs over
    the counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, g, s, mask = prepare(y_true, y_pred, from_logits, "HausdorffDT", mask_index,
                                 return_mask=True)
    c = s.shape[-1]
    d_g = packed_or_computed(
        y_true, c, map_index, lambda: boundary_distance(g, spacing), "HausdorffDT",
        "distance map",
    )
    d_s = boundary_distance(ops.stop_gradient(s), spacing)
    weight = ops.power(d_g, alpha) + ops.power(d_s, alpha)
    # s = g = 0 at ignored voxels: the squared error leaves them out
    per_class = _class_means(ops.square(s - g) * weight, mask)
    value = per_sample(per_class, s, False, include_background)
    return ops.log1p(value) if log else value


# -------------------------------------------------------------------- classes
@register
class Boundary(SegLoss):
    """Boundary loss (Kervadec et al.).

    `BD = (1/N) sum_i phi_G(i) s_i` per class, the mean over classes, with
    `phi_G` the signed distance map of the ground truth: minus the distance
    to the background inside G, the distance to G outside, 0 for an empty or
    full mask. Its minimum is reached by predicting exactly G. The review
    uses it with the Dice loss and a weight schedule (`DiceBoundary`,
    `keras_seglosses.callbacks.BoundaryWeightSchedule`).

    `phi_G` is computed from the labels with `keras_seglosses.ops` by
    default; to precompute it, pack it (`pack_targets(labels, phi)`, with
    `signed_distance_map`) and say where: `map_index=0`.

    Args:
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out (Kervadec et al. use the foreground classes). Defaults to
            `False`.
        map_index: `None` (compute `phi_G`) or int >= 0, the packed slot
            that holds it (map kind `"phi"`). Defaults to `None`.
        spacing: voxel size (a number or one per spatial axis) for computed
            maps. Defaults to `None` (1).
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`), not
            `map_index`. `phi_G` is then computed from the masked labels (an
            ignored voxel is background), a packed `phi_G` is masked, and the
            mean runs over the counted voxels, so ignored voxels change
            neither value nor gradient. MONAI's `MaskedLoss` divides by all
            voxels instead. Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 1, 4, 1)); y[0, 0, 1:3] = 1
    >>> p = np.full((1, 1, 4, 1), 0.5)
    >>> round(float(Boundary()(y, p)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 19-20]; Kervadec et al., 2019.
    """

    map_kind = "phi"

    def __init__(self, from_logits=False, include_background=False, map_index=None,
                 spacing=None, mask_index=None, reduction="sum_over_batch_size",
                 name="boundary", dtype=None):
        super().__init__(
            boundary,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=bool(from_logits),
            include_background=bool(include_background),
            map_index=check_map_index(map_index),
            spacing=spacing_argument(spacing),
            mask_index=mask_index,  # validated by SegLoss, against map_index too
        )


@register
class HausdorffDT(SegLoss):
    """Distance-transform Hausdorff loss (Karimi and Salcudean).

    `HD = (1/N) sum_i (s_i - g_i)^2 (d_G(i)^alpha + d_S(i)^alpha)` per class,
    the mean over classes. `d_X(i)` is the distance from voxel i to the
    nearest voxel on the other side of X's boundary (to the background inside
    X, to X outside), 0 everywhere for an empty or full mask; G is the
    ground truth, S the prediction thresholded at 0.5. This is MONAI's
    `HausdorffDTLoss`. `d_G` is computed by default; to precompute it, pack
    it (`pack_targets(labels, d_G)`, with `boundary_distance`) and say where:
    `map_index=0`.

    Args:
        alpha: float > 0, the exponent of the distances. Defaults to `2.0`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `False` (as MONAI).
        map_index: `None` (compute `d_G`) or int >= 0, the packed slot that
            holds it (map kind `"distance"`). Defaults to `None`.
        spacing: voxel size (a number or one per spatial axis) for computed
            maps. Defaults to `None` (1).
        log: bool, return `log(1 + HD)` per sample, which tames the large
            early values of the squared distances (MONAI's
            `LogHausdorffDTLoss`, which takes the log after its reduction:
            the same for one sample, or with `reduction="none"`; over a
            batch MONAI gives the log of the mean, this the mean of the
            logs). Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`), not
            `map_index`. `d_G` and `d_S` are then those of the masked labels
            and prediction (an ignored voxel is background), a packed `d_G`
            is masked, and the mean runs over the counted voxels, so ignored
            voxels change neither value nor gradient. MONAI's
            `MaskedLoss(HausdorffDTLoss)` computes the same maps but divides
            by all voxels: its value is this one times the counted fraction.
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 1, 4, 1)); y[0, 0, 1:3] = 1
    >>> round(float(HausdorffDT()(y, y)), 4)
    0.0

    Reference:
        Ma et al., Loss odyssey [004, Eq. 21]; Karimi and Salcudean, 2020.
    """

    map_kind = "distance"

    def __init__(self, alpha=2.0, from_logits=False, include_background=False,
                 map_index=None, spacing=None, log=False, mask_index=None,
                 reduction="sum_over_batch_size", name="hausdorff_dt", dtype=None):
        super().__init__(
            hausdorff_dt,
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=float(check_number("alpha", alpha, low=0, low_open=True)),
            from_logits=bool(from_logits),
            include_background=bool(include_background),
            map_index=check_map_index(map_index),
            spacing=spacing_argument(spacing),
            log=bool(log),
            mask_index=mask_index,
        )
