"""Reference implementations shared by the tests: numpy and scipy
transcriptions of the equations, written independently of the code under
test (no `keras_seglosses` import), plus the random inputs they are checked
on.

Arrays are channels_last, `(batch, *spatial, C)`, unless a function says
otherwise. Tests import this module as `from _references import ...`;
`tests/conftest.py` puts `tests/` on `sys.path` for it, since pytest's
importlib mode does not.
"""

import numpy as np
from scipy import ndimage

# ------------------------------------------------------------------ overlaps


def np_dice(y, p):
    """Dice [000, Eq. 5] of `P' = 1[p > 0.5]`, per sample and channel:
    `2 sum y P' / (sum y + sum P')`, 1 where both masks are empty."""
    pb = (p > 0.5).astype(float)
    axes = tuple(range(1, y.ndim - 1))
    num, den = 2 * (y * pb).sum(axes), (y + pb).sum(axes)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def np_rpd(y, p, m):
    """Reward-penalty Dice [000, Eq. 6] of `P' = 1[p > 0.5]`, per sample
    and channel: `2 sum y P' M / (sum y |M| + sum P' |M|)`, 1 where the
    denominator is 0."""
    pb = (p > 0.5).astype(float)
    axes = tuple(range(1, y.ndim - 1))
    num = 2 * (y * pb * m).sum(axes)
    den = (y * np.abs(m)).sum(axes) + (pb * np.abs(m)).sum(axes)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def on_volume(fn):
    """`fn` of `(batch, *spatial, C)` arrays as a function of single volumes
    `(*spatial)` returning a Python float (`on_volume(np_dice)(a, b)`)."""

    def of_volumes(*volumes):
        return float(fn(*(np.asarray(v)[None, ..., None] for v in volumes))[0, 0])

    return of_volumes


def np_rpmap(annotations):
    """Reward-penalty map [000, Fig. 2] of `annotations` `(K, *spatial)`:
    the count of annotations marking a voxel over the largest count, -1
    where none marks it."""
    count = np.asarray(annotations).astype(np.float64).sum(axis=0)
    return np.where(count > 0, count / max(count.max(), 1.0), -1.0)


# ------------------------------------------------------- region-loss pieces


def sums(x, batch):
    """Sums over the spatial axes, `(batch, C)`; over the batch too, `(C,)`,
    when `batch`."""
    s = x.sum(axis=tuple(range(1, x.ndim - 1)))
    return s.sum(0) if batch else s


def class_mean(per_class, n, batch, include_background=True):
    """Mean over classes (class 0 dropped unless `include_background`, when
    there are several), one value per sample of `n`: the pooled value
    repeated when `batch`."""
    if not include_background and per_class.shape[-1] > 1:
        per_class = per_class[..., 1:]
    v = per_class.mean(-1)
    return np.full(n, v) if batch else v


def numeric_gradient(f, x, points, h=1e-6):
    """Central differences of `sum f` at the flat indices `points`."""
    x = x.astype(np.float64)
    grad = np.zeros(len(points))
    for n, i in enumerate(zip(*np.unravel_index(points, x.shape))):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        grad[n] = (f(xp).sum() - f(xm).sum()) / (2 * h)
    return grad


def random_case(rng, shape, softmax):
    """Random `(labels, probabilities, logits)` of `shape`, float64: one-hot
    labels and softmax probabilities when `softmax`, else independent binary
    labels (40 % foreground) and sigmoid probabilities."""
    logits = rng.normal(size=shape) * 2
    if softmax:
        y = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
        e = np.exp(logits - logits.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
    else:
        y = (rng.random(shape) < 0.4).astype(np.float64)
        p = 1 / (1 + np.exp(-logits))
    return y, p, logits


# ------------------------------------------------------- distances and maps


def np_surface(mask):
    """Boundary voxels of one mask (any rank): the mask minus its erosion by
    the 1-connected cross, the volume border eroding as background (the
    MONAI convention)."""
    mask = np.asarray(mask, bool)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def np_signed(y, spacing=None):
    """phi_G per sample and channel: -distance to the background inside,
    distance to the mask outside, 0 for an empty or full mask."""
    out = np.zeros_like(y, dtype=np.float64)
    for b in range(y.shape[0]):
        for c in range(y.shape[-1]):
            m = y[b, ..., c] > 0.5
            if m.any() and not m.all():
                out[b, ..., c] = np.where(
                    m,
                    -ndimage.distance_transform_edt(m, sampling=spacing),
                    ndimage.distance_transform_edt(~m, sampling=spacing),
                )
    return out


def np_region_map(y, kind, spacing=None):
    """Region-wise maps [002] of one-hot labels, per sample and channel:
    `"rrw"` [Eq. 4] (absent class 1, full class -1), `"boundary"` [Eq. 3]
    (absent and full classes 0) or `"ac"` (`1 - Y`)."""
    y = (np.asarray(y) > 0.5).astype("float64")
    if kind == "ac":
        return 1.0 - y
    z = np.ones_like(y) if kind == "rrw" else np.zeros_like(y)
    for b in range(y.shape[0]):
        for k in range(y.shape[-1]):
            m = y[b, ..., k] > 0.5
            if kind == "rrw" and m.all():
                z[b, ..., k] = -1.0
            elif m.any() and not m.all():
                inside = ndimage.distance_transform_edt(m, sampling=spacing)
                if kind == "rrw":
                    z[b, ..., k] = np.where(m, -inside / inside[m].max(), 1.0)
                else:
                    outside = ndimage.distance_transform_edt(~m, sampling=spacing)
                    z[b, ..., k] = np.where(m, -inside, outside)
    return z


# ------------------------------------------------------------- CM inputs


def np_encode_input(x, encoding):
    """The CM network input of label volumes `x` (labels 0..13), as the
    original code computed it in float32: `"scaled"` is `x / 6.5 - 1` in one
    channel, `"onehot"` 14 channels."""
    x = np.asarray(x)
    if encoding == "scaled":
        return (x.astype(np.float32) / np.float32(6.5) - np.float32(1.0))[..., None]
    return np.eye(14, dtype=np.float32)[x.astype(np.int64)]
