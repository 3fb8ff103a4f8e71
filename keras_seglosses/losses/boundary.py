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
    check_number,
    per_channel,
    per_sample,
    prepare,
    register,
    spatial_axes,
)
from keras_seglosses.ops.distance import signed_distance, spacing_argument
from keras_seglosses.targets import packed_or_computed

__all__ = [
    "signed_distance_map",
    "boundary",
    "hausdorff_dt",
    "Boundary",
    "HausdorffDT",
]


def signed_distance_map(labels, spacing=None):
    """The signed distance `phi_G` of every channel, the map of `Boundary`.

    Per sample and channel, `keras_seglosses.ops.signed_distance` of the
    mask `labels > 0.5`: minus the distance to the background inside, the
    distance to the mask outside, 0 for an empty or full mask. Precompute it
    to pack it: `pack_targets(labels, signed_distance_map(labels))`.

    Args:
        labels: tensor `(batch, *spatial, C)`, 2 or 3 spatial axes.
        spacing: voxel size, a number or one per spatial axis. Defaults to
            `None` (1).

    Returns:
        float32 tensor of the same shape, without gradient.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 1, 4, 1)); y[0, 0, 1:3] = 1
    >>> np.asarray(signed_distance_map(y))[0, 0, :, 0].tolist()
    [1.0, -1.0, -1.0, 1.0]
    """
    return per_channel(lambda mask: signed_distance(mask, spacing), labels)


def boundary_distance(x, spacing=None):
    """`|signed distance|` per channel: inside a mask the distance to the
    nearest background voxel, outside the distance to the nearest mask voxel,
    0 for an empty or full mask (`x > 0.5` is the mask)."""
    return ops.abs(signed_distance_map(x, spacing))


# ------------------------------------------------------------------ functions
def boundary(
    y_true, y_pred, from_logits=False, include_background=False, map_index=0, spacing=None
):
    """Per-sample boundary loss [004, Eq. 19-20].

    `(1/N) sum_i phi_G(i) s_i` per class, `phi_G` the signed distance of the
    ground truth (negative inside, `keras_seglosses.ops.signed_distance`,
    or packed map `map_index`); the mean over classes.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, g, s = prepare(y_true, y_pred, from_logits, "Boundary")
    c = s.shape[-1]
    phi = packed_or_computed(y_true, c, map_index, lambda: signed_distance_map(g, spacing))
    per_class = ops.mean(phi * s, axis=spatial_axes(s))
    return per_sample(per_class, s, False, include_background)


def hausdorff_dt(
    y_true, y_pred, alpha=2.0, from_logits=False, include_background=False, map_index=0,
    spacing=None,
):
    """Per-sample distance-transform Hausdorff loss [004, Eq. 21].

    `(1/N) sum_i (s_i - g_i)^2 (d_G(i)^alpha + d_S(i)^alpha)` per class,
    `d_X` the distance to the other side of X's boundary
    (`boundary_distance`; 0 for an empty mask), S the prediction thresholded
    at 0.5; `d_G` may be packed (map `map_index`). The mean over classes.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, g, s = prepare(y_true, y_pred, from_logits, "HausdorffDT")
    c = s.shape[-1]
    d_g = packed_or_computed(y_true, c, map_index, lambda: boundary_distance(g, spacing))
    d_s = boundary_distance(ops.stop_gradient(s), spacing)
    weight = ops.power(d_g, alpha) + ops.power(d_s, alpha)
    per_class = ops.mean(ops.square(s - g) * weight, axis=spatial_axes(s))
    return per_sample(per_class, s, False, include_background)


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

    `phi_G` is computed from the labels with `keras_seglosses.ops`, or read
    from `y_true` when packed: `pack_targets(labels, phi)`.

    Args:
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out (Kervadec et al. use the foreground classes). Defaults to
            `False`.
        map_index: int >= 0, which packed map holds `phi_G`. Defaults to `0`.
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

    _config_keys = ("from_logits", "include_background", "map_index", "spacing")

    def __init__(self, from_logits=False, include_background=False, map_index=0,
                 spacing=None, reduction="sum_over_batch_size", name="boundary",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.include_background = bool(include_background)
        self.map_index = int(check_number("map_index", map_index, low=0, integer=True))
        self.spacing = spacing_argument(spacing)

    def call(self, y_true, y_pred):
        return boundary(
            y_true, y_pred, self.from_logits, self.include_background, self.map_index,
            self.spacing,
        )


@register
class HausdorffDT(SegLoss):
    """Distance-transform Hausdorff loss (Karimi and Salcudean).

    `HD = (1/N) sum_i (s_i - g_i)^2 (d_G(i)^alpha + d_S(i)^alpha)` per class,
    the mean over classes. `d_X(i)` is the distance from voxel i to the
    nearest voxel on the other side of X's boundary (to the background inside
    X, to X outside), 0 everywhere for an empty or full mask; G is the
    ground truth, S the prediction thresholded at 0.5. This is MONAI's
    `HausdorffDTLoss`. `d_G` may be packed: `pack_targets(labels, d_G)`.

    Args:
        alpha: float > 0, the exponent of the distances. Defaults to `2.0`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `False` (as MONAI).
        map_index: int >= 0, which packed map holds `d_G`. Defaults to `0`.
        spacing: voxel size (a number or one per spatial axis) for computed
            maps. Defaults to `None` (1).
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

    _config_keys = ("alpha", "from_logits", "include_background", "map_index", "spacing")

    def __init__(self, alpha=2.0, from_logits=False, include_background=False,
                 map_index=0, spacing=None, reduction="sum_over_batch_size",
                 name="hausdorff_dt", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(check_number("alpha", alpha, low=0, low_open=True))
        self.from_logits = bool(from_logits)
        self.include_background = bool(include_background)
        self.map_index = int(check_number("map_index", map_index, low=0, integer=True))
        self.spacing = spacing_argument(spacing)

    def call(self, y_true, y_pred):
        return hausdorff_dt(
            y_true, y_pred, self.alpha, self.from_logits, self.include_background,
            self.map_index, self.spacing,
        )
