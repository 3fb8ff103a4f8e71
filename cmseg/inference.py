"""Inference on volumes of any size: sliding windows with Gaussian
importance weighting, test-time augmentation by exact symmetries, and the
usual post-processing (largest connected component, small islands).

    prob = sliding_window(model.predict, volume, patch=(64, 64, 64))
    prob = symmetric_mean(lambda v: sliding_window(model.predict, v, patch), volume,
                          mode="flips")
    region = keep_largest_component(prob > 0.5)

Every function takes one volume `(*spatial, channels)` and returns the
model's output for it, `(*spatial, classes)`, as NumPy arrays; the model
is called on batches `(n, *patch, channels)`.
"""

import itertools
import math

import numpy as np

__all__ = ["gaussian_importance", "window_starts", "sliding_window", "symmetries",
           "symmetric_mean", "keep_largest_component", "remove_small_components",
           "TTA_MODES"]

#: `symmetric_mean` modes: no augmentation, the 2^d flips, or all 2^d d!
#: flips and axis permutations (48 in 3D; only for isotropic spacing).
TTA_MODES = ("none", "flips", "all")


def gaussian_importance(patch, sigma_scale=0.125):
    """Weights of a window's voxels: a Gaussian centred on the window with
    sigma `sigma_scale * patch` per axis (nnU-Net's 1/8), scaled to a
    maximum of 1, with no weight below the smallest positive one (so every
    voxel counts). Centres count more because a fully convolutional
    network sees less context near a window's border."""
    axes = []
    for n in patch:
        x = np.arange(n) - (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = np.multiply.outer(w, a)
    w = w / w.max()
    return np.maximum(w, w[w > 0].min()).astype(np.float32)


def window_starts(size, patch, overlap):
    """Start offsets of the windows along one axis: evenly spaced from 0 to
    `size - patch`, as few as give at least `overlap` (a fraction of the
    patch) between neighbours; `[0]` when the patch covers the axis."""
    if size <= patch:
        return [0]
    step = patch * (1.0 - overlap)
    n = int(math.ceil((size - patch) / max(step, 1.0))) + 1
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


def sliding_window(predict, volume, patch, overlap=0.5, batch_size=2, weighting="gaussian",
                   pad_value=0.0):
    """The model's output for a whole volume from windows of size `patch`.

    A volume smaller than the patch along an axis is padded to it with
    `pad_value` (and the output cropped back): the input value of "outside",
    as the training pipeline padded (`cmseg.predict.pad_value`). Overlapping predictions are averaged with
    `gaussian_importance` weights (`weighting="gaussian"`) or equally
    (`"constant"`).

    Args:
        predict: callable `(n, *patch, channels) -> (n, *patch, classes)`,
            e.g. `lambda b: model.predict(b, verbose=0)`.
        volume: array `(*spatial, channels)`.
        patch: the model's spatial input size, one int per axis.
        overlap: float in [0, 1), the least overlap of neighbouring windows
            as a fraction of the patch. Defaults to `0.5`.
        batch_size: windows per call of `predict`. Defaults to `2`.
        weighting: `"gaussian"` or `"constant"`. Defaults to `"gaussian"`.
        pad_value: scalar or one value per channel. Defaults to `0`.

    Returns:
        float32 array `(*spatial, classes)`.
    """
    volume = np.asarray(volume, np.float32)
    spatial = volume.shape[:-1]
    patch = tuple(int(p) for p in patch)
    if len(patch) != len(spatial):
        raise ValueError(f"sliding_window: patch {patch} has {len(patch)} axes, the volume "
                         f"{len(spatial)} spatial axes (shape {volume.shape}).")
    if not 0 <= overlap < 1:
        raise ValueError(f"sliding_window: overlap must be in [0, 1), got {overlap}.")
    if weighting not in ("gaussian", "constant"):
        raise ValueError(f"sliding_window: weighting must be 'gaussian' or 'constant', got "
                         f"{weighting!r}.")
    shape = tuple(max(p, s) for p, s in zip(patch, spatial))
    padded = np.empty(shape + volume.shape[-1:], np.float32)
    padded[...] = np.asarray(pad_value, np.float32)
    padded[tuple(slice(0, s) for s in spatial)] = volume
    weight = (gaussian_importance(patch) if weighting == "gaussian"
              else np.ones(patch, np.float32))[..., None]
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch))))
    total = norm = None
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        windows = [tuple(slice(o, o + p) for o, p in zip(start, patch)) for start in chunk]
        out = np.asarray(predict(np.stack([padded[w] for w in windows])), np.float32)
        if total is None:
            total = np.zeros(shape + out.shape[-1:], np.float32)
            norm = np.zeros(shape + (1,), np.float32)
        for w, o in zip(windows, out):
            total[w] += o * weight
            norm[w] += weight
    crop = tuple(slice(0, s) for s in spatial)
    return (total / norm)[crop]


def symmetries(ndim, mode="flips", spacing=None):
    """The exact symmetries of a voxel grid for test-time augmentation:
    `(permutation, flipped axes)` pairs. `"flips"`: every subset of axes
    flipped (8 in 3D); `"all"`: also every permutation of the axes (48 in
    3D), which only maps a grid onto itself when the spacing is the same
    along the permuted axes: with `spacing` given, axes are permuted only
    among equal spacings (within a relative 1e-3, as the training
    pipeline's `cm_dataset.patches.allowed_symmetries`: header round-off of
    a rotated affine is not anisotropy)."""
    if mode not in TTA_MODES:
        raise ValueError(f"Invalid value for --tta. Expected one of {', '.join(TTA_MODES)}. "
                         f"Received: {mode!r}")
    flips = [tuple(a for a in range(ndim) if bits >> a & 1) for bits in range(2**ndim)]
    if mode == "none":
        return [(tuple(range(ndim)), ())]
    perms = [tuple(range(ndim))]
    if mode == "all":
        spacing = tuple(spacing) if spacing is not None else (1.0,) * ndim
        perms = [p for p in itertools.permutations(range(ndim))
                 if all(math.isclose(spacing[a], spacing[b], rel_tol=1e-3)
                        for a, b in enumerate(p))]
    return [(p, f) for p in perms for f in flips]


def symmetric_mean(predict_volume, volume, mode="flips", spacing=None):
    """Mean of `predict_volume` over the symmetries of `mode` (see
    `symmetries`): each transformed copy is predicted and its output
    transformed back before averaging.

    Args:
        predict_volume: callable `(*spatial, channels) -> (*spatial,
            classes)`, e.g. a `sliding_window` over the model.
        volume: array `(*spatial, channels)`.
        mode: `"none"`, `"flips"` or `"all"`. Defaults to `"flips"`.
        spacing: voxel size per axis (for `"all"`). Defaults to isotropic.
    """
    volume = np.asarray(volume, np.float32)
    ndim = volume.ndim - 1
    total = None
    transforms = symmetries(ndim, mode, spacing)
    for perm, flipped in transforms:
        x = np.transpose(volume, perm + (ndim,))
        if flipped:
            x = np.flip(x, flipped)
        y = np.asarray(predict_volume(np.ascontiguousarray(x)), np.float32)
        if flipped:
            y = np.flip(y, flipped)
        y = np.transpose(y, tuple(np.argsort(perm)) + (ndim,))
        total = y if total is None else total + y
    return total / len(transforms)


#: Neighbourhood size -> `ndimage.generate_binary_structure` rank, per ndim.
_CONNECTIVITY = {3: {6: 1, 18: 2, 26: 3}, 2: {4: 1, 8: 2}}


def _components(mask, connectivity):
    from scipy import ndimage

    ranks = _CONNECTIVITY.get(mask.ndim, {})
    if connectivity not in ranks:
        raise ValueError(f"connectivity {connectivity} is not one of {sorted(ranks)} for a "
                         f"{mask.ndim}D mask.")
    structure = ndimage.generate_binary_structure(mask.ndim, ranks[connectivity])
    return ndimage.label(mask, structure=structure)


def keep_largest_component(mask, connectivity=26):
    """The largest connected component of a binary mask (all of an empty
    one). `connectivity`: 6, 18 or 26 in 3D (26, MONAI's default, counts
    corner neighbours), 4 or 8 in 2D."""
    mask = np.asarray(mask, bool)
    labels, n = _components(mask, connectivity)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def remove_small_components(mask, min_size, connectivity=26):
    """The mask without connected components smaller than `min_size`
    voxels."""
    mask = np.asarray(mask, bool)
    labels, n = _components(mask, connectivity)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    keep = sizes >= int(min_size)
    keep[0] = False
    return keep[labels]
