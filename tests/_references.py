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


def np_masked_counts(y, p, mask, threshold=0.5):
    """Confusion counts of `P' = 1[p > threshold]` against `y`, counting
    only the voxels where `mask > 0.5`, per sample and channel: a dict of
    `"tp"`, `"fp"`, `"fn"`, `"tn"` (int arrays `(batch, C)`)."""
    g, pb, keep = np.asarray(y) > 0.5, np.asarray(p) > threshold, np.asarray(mask) > 0.5
    axes = tuple(range(1, g.ndim - 1))
    return {"tp": (g & pb & keep).sum(axes), "fp": (~g & pb & keep).sum(axes),
            "fn": (g & ~pb & keep).sum(axes), "tn": (~g & ~pb & keep).sum(axes)}


def np_masked_overlaps(y, p, mask, threshold=0.5):
    """Dice, sensitivity, specificity and precision of the `np_masked_counts`,
    per sample and channel: a dict of float arrays `(batch, C)`, NaN where a
    denominator is 0 (Dice too: both counted masks empty)."""
    c = {k: v.astype(np.float64) for k, v in np_masked_counts(y, p, mask, threshold).items()}

    def ratio(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    return {"dice": ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
            "sensitivity": ratio(c["tp"], c["tp"] + c["fn"]),
            "specificity": ratio(c["tn"], c["tn"] + c["fp"]),
            "precision": ratio(c["tp"], c["tp"] + c["fp"])}


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


# ------------------------------------------------------------ ignore masks


def random_ignore_mask(rng, shape, fraction=0.25):
    """An ignore mask (1 counts, 0 ignored) for arrays of `shape`
    `(batch, *spatial, C)`, the same in every channel: about `fraction` of
    the voxels at random, plus a block around the centre (so that it cuts
    through objects and changes their distance maps and skeletons)."""
    spatial = shape[1:-1]
    mask = (rng.random((shape[0], *spatial, 1)) >= fraction).astype(np.float64)
    block = tuple(slice(s // 4, s // 4 + max(s // 3, 1)) for s in spatial)
    mask[(slice(None), *block)] = 0.0
    return np.repeat(mask, shape[-1], axis=-1)


def perturb_ignored(rng, mask, *arrays):
    """Each array with other values where `mask` is 0: binary arrays
    flipped, others redrawn over their range (and beyond)."""
    out = []
    for a in arrays:
        a = np.asarray(a, np.float64)
        if set(np.unique(a)) <= {0.0, 1.0}:
            other = 1.0 - a
        else:
            other = rng.uniform(a.min() - 1.0, a.max() + 1.0, a.shape)
        out.append(np.where(mask == 0, other, a))
    return out


def np_masked_dice(y, p, mask, smooth=1.0, batch=False):
    """Dice loss [000, Eq. 2] of independent channels, each over its own
    counted entries (`mask > 0.5`, per voxel and channel): per sample (or
    pooled over the batch) and channel `1 - (2 sum m y p + s) / (sum m y +
    sum m p + s)`, the mean over channels, one value per sample."""
    m = (np.asarray(mask) > 0.5).astype(np.float64)
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    per_class = 1 - (2 * sums(m * y * p, batch) + smooth) / (
        sums(m * y, batch) + sums(m * p, batch) + smooth)
    return class_mean(per_class, len(y), batch)


def np_masked_bce(y, p, mask, eps=1e-7):
    """Binary cross entropy of independent channels averaged over the
    counted (voxel, channel) entries of each sample (`mask > 0.5`)."""
    m = (np.asarray(mask) > 0.5).astype(np.float64)
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    n = len(y)
    return (m * ce).reshape(n, -1).sum(1) / m.reshape(n, -1).sum(1)


# ------------------------------------------------------- distances and maps


def np_surface(mask):
    """Boundary voxels of one mask (any rank): the mask minus its erosion by
    the 1-connected cross, the volume border eroding as background (the
    MONAI convention)."""
    mask = np.asarray(mask, bool)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def np_surface_metrics(g, p, spacing, tolerance, q=95):
    """Voxel-convention surface metrics of two non-empty masks of one volume,
    surfaces by `np_surface`, distances by scipy's exact Euclidean distance
    transform, percentiles by `numpy.percentile`: a dict with the keys

    `"hd max"` (the larger directed percentile, MONAI), `"hd pooled"` (both
    directed sets together, medpy), `"hd mean"` (their mean), `"hd directed"`
    (prediction to ground truth), `"asd mean"`, `"asd pooled"`,
    `"asd directed"` likewise for the mean distance, and `"nsd voxel"`
    (boundary voxels within `tolerance` of the other surface, both ways,
    over all boundary voxels)."""
    sg, sp = np_surface(g), np_surface(p)
    d_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    both = np.concatenate([d_gp, d_pg])
    hd_gp, hd_pg = np.percentile(d_gp, q), np.percentile(d_pg, q)
    return {
        "hd max": max(hd_gp, hd_pg), "hd pooled": np.percentile(both, q),
        "hd mean": 0.5 * (hd_gp + hd_pg), "hd directed": hd_pg,
        "asd mean": 0.5 * (d_gp.mean() + d_pg.mean()), "asd pooled": both.mean(),
        "asd directed": d_pg.mean(),
        "nsd voxel": float((both <= tolerance).sum()) / both.size,
    }


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


# A folder of multi-annotator cases for the bring-your-own-data tests:
# odd sizes, anisotropic spacing, 2-3 raters, NIfTI and NRRD side by side.
FOLDER_SPACING = (0.8, 0.8, 2.0)
FOLDER_SHAPES = ((37, 29, 23), (33, 35, 21), (41, 27, 25))


def ball_case(shape, spacing=FOLDER_SPACING, radius=6.0, n_raters=2, low=-200.0,
              high=1500.0):
    """A CT-like image (a bright ball of `radius + 2` mm in HU) and
    `n_raters` nested ball annotations of radius `radius + k` mm (uint8)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    r = np.linalg.norm((grid - (np.array(shape) - 1) / 2.0) * np.asarray(spacing), axis=-1)
    image = np.where(r < radius + 2, high, low).astype(np.float32)
    return image, [(r < radius + k).astype(np.uint8) for k in range(n_raters)]


def write_case_folder(root, shapes=FOLDER_SHAPES, spacing=FOLDER_SPACING, raters=(2, 3, 3)):
    """Write `root/caseNN/image.{nii.gz,nrrd}` and `annotation-rK` files
    (case 2 as NRRD in LPS, the others NIfTI); returns {case: (image,
    annotations)} as written."""
    import os

    import nibabel
    import nrrd

    written = {}
    for i, (shape, k) in enumerate(zip(shapes, raters)):
        name = f"case{i + 1:02d}"
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        image, masks = ball_case(shape, spacing, n_raters=k)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = (-10.0, 5.0, 30.0)
        nrrd_header = {"space": "left-posterior-superior",
                       "space directions": np.diag(spacing), "space origin": [10.0, -5.0, 30.0]}

        def save(stem, array):
            if i == 1:
                nrrd.write(os.path.join(d, stem + ".nrrd"), array, dict(nrrd_header))
            else:
                nibabel.save(nibabel.Nifti1Image(array, affine), os.path.join(d, stem + ".nii.gz"))

        save("image", image)
        for r, m in enumerate(masks):
            save(f"annotation-r{r + 1}", m)
        written[name] = (image, masks)
    return written


CT_PREPROCESSING = {"intensity": "ct", "window": [-1000.0, 2000.0], "input_encoding": "scaled",
                    "channels": 1, "input_channels": 1, "patch_size": 8, "resample": None}


def write_affine_run(rundir, preprocessing, scale=0.5, shift=0.5, patch=8, config=None):
    """A run directory whose model maps its input x to `scale * x + shift`
    voxel by voxel (a 1x1x1 convolution: sliding windows and flips leave it
    exact), with the `preprocessing` (and the other `config` entries) its
    config.json records; returns the model's path."""
    import json
    import os

    import keras

    inputs = keras.Input((patch, patch, patch, preprocessing["input_channels"]))
    conv = keras.layers.Conv3D(1, 1, kernel_initializer=keras.initializers.Constant(scale),
                               bias_initializer=keras.initializers.Constant(shift))
    os.makedirs(rundir, exist_ok=True)
    path = os.path.join(rundir, "model.keras")
    keras.Model(inputs, conv(inputs)).save(path)
    with open(os.path.join(rundir, "config.json"), "w") as f:
        json.dump({**(config or {}), "preprocessing": preprocessing}, f)
    return path
