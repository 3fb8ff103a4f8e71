"""NumPy/SciPy versions of `keras_seglosses.ops`, for tests and CPU-side
evaluation. Same arguments, shapes and edge-case conventions as the tensor
versions: batched `(batch, *spatial)` masks with foreground `mask > 0.5`,
per-axis `spacing`, float32 results. SciPy is imported on first use.
"""

import numpy as np

from keras_seglosses.ops.distance import check_spacing

__all__ = ["distance_transform", "signed_distance", "surface", "surface_distances"]


def _prepare(mask, name="mask"):
    mask = np.asarray(mask)
    if mask.ndim not in (3, 4):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a batched 2D or 3D "
            f"mask of shape (batch, *spatial). Received: {name}.shape={mask.shape}"
        )
    return mask > 0.5 if mask.dtype != bool else mask


def _edt(fg, spacing):
    from scipy import ndimage

    if not fg.any():
        return np.full(fg.shape, np.inf, "float32")
    return ndimage.distance_transform_edt(~fg, sampling=spacing).astype("float32")


def distance_transform(mask, spacing=None):
    """Distance to the nearest foreground voxel per sample with
    `scipy.ndimage.distance_transform_edt`; `+inf` for a sample with no
    foreground (as `keras_seglosses.ops.distance_transform`)."""
    fg = _prepare(mask)
    spacing = check_spacing(spacing, fg.ndim - 1)
    return np.stack([_edt(m, spacing) for m in fg])


def signed_distance(mask, spacing=None):
    """Outside: distance to the mask; inside: minus the distance to the
    background; 0 everywhere for an empty or full sample."""
    fg = _prepare(mask)
    spacing = check_spacing(spacing, fg.ndim - 1)
    out = np.zeros(fg.shape, "float32")
    for b, m in enumerate(fg):
        if m.any() and not m.all():
            out[b] = np.where(m, -_edt(~m, spacing), _edt(m, spacing))
    return out


def surface(mask):
    """Mask minus its 6-connected erosion, border voxels included
    (`scipy.ndimage.binary_erosion`, `border_value=0`); float32 0/1."""
    from scipy import ndimage

    fg = _prepare(mask)
    return np.stack([m & ~ndimage.binary_erosion(m, border_value=0) for m in fg]).astype(
        "float32"
    )


def surface_distances(source, target, spacing=None):
    """`(distance map of the target surface, source surface mask)`, as
    `keras_seglosses.ops.surface_distances`."""
    s = surface(source)
    t = surface(target) > 0.5
    if t.shape != s.shape:
        raise ValueError(
            "Invalid value for argument `target`. Expected the shape of "
            f"`source`. Received: source.shape={s.shape}, target.shape={t.shape}"
        )
    spacing = check_spacing(spacing, t.ndim - 1)
    return np.stack([_edt(m, spacing) for m in t]), s
