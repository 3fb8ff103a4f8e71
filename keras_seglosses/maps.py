"""Region-wise (RW) maps of Valverde and Tohka [002, Eq. 1-4].

A region-wise loss weighs each class probability of each voxel by a map
`Z = f(Y)` computed from the ground truth; the maps here are the three the
paper discusses. All are `keras.ops` functions (batched, jit-able, on the
accelerator where the backend has one) that carry no gradient.

Inputs are labels `(batch, *spatial, C)`, one-hot for `C > 1`; a single
channel is a binary foreground and is handled as two classes (background,
foreground), so the maps then have 2 channels. Labels are binarized at 0.5.

Classes absent from a sample (or filling it) get well-defined finite maps,
so no inf or NaN ever reaches a loss:

- `rrw_map`: an absent class is 1 everywhere (its probability is only pushed
  down); a class filling the whole volume is -1 everywhere (no boundary to
  measure from, so every voxel counts as maximally interior).
- `boundary_map`: absent and full classes are 0 everywhere (no boundary;
  this is also what the boundary-loss reference code does for empty masks).
- `ac_map`: `1 - Y` needs no special case.
"""

from keras import ops

from keras_seglosses._core import per_channel
from keras_seglosses.ops import distance_transform, signed_distance

__all__ = ["rrw_map", "boundary_map", "ac_map", "RW_MAPS"]


def _binarized(labels):
    """Validated float32 labels binarized at 0.5, channels unchanged."""
    y = ops.convert_to_tensor(labels)
    if len(y.shape) < 3:
        raise ValueError(
            "Region-wise maps expect channels_last labels of shape "
            f"(batch, *spatial, channels). Received: labels.shape={tuple(y.shape)}."
        )
    return ops.cast(ops.cast(y, "float32") > 0.5, "float32")


def _classes(labels):
    """Binarized float32 labels, with a binary channel expanded to two."""
    y = _binarized(labels)
    if y.shape[-1] == 1:
        y = ops.concatenate([1.0 - y, y], axis=-1)
    return y


def rrw_map(labels, spacing=None):
    """Rectified region-wise (RRW) map [002, Eq. 4].

    `z_ik = -||i - b_ik|| / max_{j in k} ||j - b_jk||` inside class k, with
    `b_ik` the nearest voxel outside k (so values lie in [-1, 0)), and
    `z_ik = 1` outside class k. Every voxel's map vector has one
    non-positive component (its class) and equal positive ones elsewhere,
    which makes the RW loss gradient push only the true class up
    [002, Sec. 3.3].

    Args:
        labels: `(batch, *spatial, C)`, one-hot, or binary when `C == 1`.
        spacing: optional voxel spacing, one float per spatial axis, for
            anisotropic distances. Defaults to `None` (unit spacing).

    Returns:
        float32 tensor `(batch, *spatial, K)`, `K = max(C, 2)`, no gradient.
        An absent class is 1 everywhere; a class filling the volume is -1.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[[1.0], [1.0], [1.0], [0.0]]]])   # (1, 1, 4, 1)
    >>> np.asarray(rrw_map(y))[0, 0, :, 1].astype("float64").round(3).tolist()
    [-1.0, -0.667, -0.333, 1.0]

    Reference:
        Valverde and Tohka [002, Eq. 4, Sec. 3.3].
    """
    y = _classes(labels)

    def one_class(mask):
        # Distance to the nearest voxel outside the class; +inf when the class
        # fills the volume, where -1 (maximally interior) is used instead.
        d = distance_transform(1.0 - mask, spacing)
        d = ops.where(ops.isfinite(d), d, 1.0)
        inside = mask > 0.5
        axes = tuple(range(1, len(mask.shape)))
        top = ops.max(ops.where(inside, d, 0.0), axis=axes, keepdims=True)
        top = ops.where(top > 0, top, 1.0)
        return ops.where(inside, -d / top, 1.0)

    return ops.stop_gradient(per_channel(one_class, y))


def boundary_map(labels, spacing=None):
    """RW-Boundary map, the map of Kervadec's boundary loss [002, Eq. 3].

    `z_ik = -||i - b_ik||` inside class k (distance to the nearest voxel
    outside k) and `+||i - b_ik||` outside (distance to the nearest voxel of
    k): the signed distance of each class mask, unrectified, from two
    Euclidean distance transforms per class as the RW authors compute it.
    The innermost layer is -1; Kervadec's released code subtracts 1 inside
    (innermost layer 0), a map larger by 1 on each class, which only lowers
    the reward for probability a class puts inside itself.

    Args:
        labels: `(batch, *spatial, C)`, one-hot, or binary when `C == 1`.
        spacing: optional voxel spacing, one float per spatial axis. Defaults
            to `None`.

    Returns:
        float32 tensor `(batch, *spatial, K)`, `K = max(C, 2)`, no gradient.
        Absent classes and classes filling the volume are 0 everywhere.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[[1.0], [1.0], [0.0], [0.0]]]])   # (1, 1, 4, 1)
    >>> np.asarray(boundary_map(y))[0, 0, :, 1].tolist()
    [-2.0, -1.0, 1.0, 2.0]

    Reference:
        Valverde and Tohka [002, Eq. 3]; Kervadec et al., boundary loss.
    """
    y = _binarized(labels)
    z = per_channel(lambda mask: signed_distance(mask, spacing), y)
    if y.shape[-1] == 1:
        # The background's signed distance is the foreground's negated (the
        # same two transforms with the roles swapped), so one call serves both
        # classes at half the cost.
        z = ops.concatenate([-z, z], axis=-1)
    return ops.stop_gradient(z)


def ac_map(labels):
    """Active-contour RW map `Z = 1 - Y` [002, Sec. 3.2].

    With it the RW loss is the region term `R_in + R_out` of the active
    contour loss: the probability given to every wrong class.

    Args:
        labels: `(batch, *spatial, C)`, one-hot, or binary when `C == 1`.

    Returns:
        float32 tensor `(batch, *spatial, K)`, `K = max(C, 2)`, no gradient.

    Example:

    >>> import numpy as np
    >>> # foreground, then background voxel; channels (background, foreground)
    >>> np.asarray(ac_map(np.array([[[[1.0], [0.0]]]])))[0, 0].tolist()
    [[1.0, 0.0], [0.0, 1.0]]

    Reference:
        Valverde and Tohka [002, Sec. 3.2, Proposition 5].
    """
    return ops.stop_gradient(1.0 - _classes(labels))


# The map builders `RegionWise(map=...)` accepts; `spacing` only for those
# based on distances.
RW_MAPS = {
    "rrw": rrw_map,
    "boundary": boundary_map,
    "ac": lambda labels, spacing=None: ac_map(labels),
}
