"""Boundary-based losses of the Loss odyssey [004, Sec. 2.3]: the boundary
loss of Kervadec et al. and the distance-transform Hausdorff loss of Karimi
and Salcudean.

Both weight voxels by distance maps of the ground truth (and, for the
Hausdorff loss, of the thresholded prediction). The maps come from the
package's native distance ops (`keras_seglosses.ops`), computed inside the
loss, or are read from `y_true` when precomputed and packed
(`pack_targets(labels, map)`); either way no gradient flows through them.
Spatial inputs must be 2D or 3D (what the distance ops support).
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
def boundary(
    y_true, y_pred, *, from_logits=False, include_background=False, map_index=None,
    spacing=None,
):
    """Per-sample boundary loss [004, Eq. 19-20].

    `(1/N) sum_i phi_G(i) s_i` per class, `phi_G` the signed distance of the
    ground truth (negative inside): computed with
    `keras_seglosses.ops.signed_distance` when `map_index` is None, else read
    from packed map slot `map_index`; the mean over classes.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, g, s = prepare(y_true, y_pred, from_logits, "Boundary")
    c = s.shape[-1]
    phi = packed_or_computed(
        y_true, c, map_index, lambda: signed_distance_map(g, spacing), "Boundary",
        "signed distance map",
    )
    per_class = ops.mean(phi * s, axis=spatial_axes(s))
    return per_sample(per_class, s, False, include_background)


def hausdorff_dt(
    y_true, y_pred, *, alpha=2.0, from_logits=False, include_background=False,
    map_index=None, spacing=None, log=False,
):
    """Per-sample distance-transform Hausdorff loss [004, Eq. 21].

    `(1/N) sum_i (s_i - g_i)^2 (d_G(i)^alpha + d_S(i)^alpha)` per class,
    `d_X` the distance to the other side of X's boundary
    (`boundary_distance`; 0 for an empty mask), S the prediction thresholded
    at 0.5; `d_G` is computed when `map_index` is None, else read from packed
    map slot `map_index`. The mean over classes; with `log`, `log(1 + HD)`
    of that mean.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, g, s = prepare(y_true, y_pred, from_logits, "HausdorffDT")
    c = s.shape[-1]
    d_g = packed_or_computed(
        y_true, c, map_index, lambda: boundary_distance(g, spacing), "HausdorffDT",
        "distance map",
    )
    d_s = boundary_distance(ops.stop_gradient(s), spacing)
    weight = ops.power(d_g, alpha) + ops.power(d_s, alpha)
    per_class = ops.mean(ops.square(s - g) * weight, axis=spatial_axes(s))
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
                 spacing=None, reduction="sum_over_batch_size", name="boundary",
                 dtype=None):
        super().__init__(
            boundary,
            reduction=reduction,
            name=name,
            dtype=dtype,
            from_logits=bool(from_logits),
            include_background=bool(include_background),
            map_index=check_map_index(map_index),
            spacing=spacing_argument(spacing),
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
                 map_index=None, spacing=None, log=False, reduction="sum_over_batch_size",
                 name="hausdorff_dt", dtype=None):
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
        )
