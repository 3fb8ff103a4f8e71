"""Training on patches of a folder of cases of any size and spacing.

The input pipeline of bring-your-own data (SPEC.md Sec. 11): cases of
`cm_dataset.folder` stream from disk through an LRU cache into a
`tf.data.Dataset` of `(x, y)` patch batches for `model.fit`.

**Inputs** (`normalize`), per case, chosen by `intensity`:

* `"labels"`: CM anatomical label maps (0..13), encoded as in
  `cm_dataset.encoding` (`"scaled"` one channel, `"onehot"` 14).
* `"ct"` (the default): clip to a window in Hounsfield units, then scale
  linearly to [-1, 1]. `CT_WINDOW` = (-1000, 2000) HU runs from air (the
  ear canal and the mastoid's air cells that a mastoidectomy opens, -1000
  HU) to dense compact bone (about 2000 HU, the temporal bone's densest
  parts saturating there), so air, soft tissue, pneumatized and compact
  bone all keep their contrast while metal and its streaks are clipped. A
  fixed window keeps HU comparable across cases and needs no statistics of
  the training set (nnU-Net instead clips to the 0.5 and 99.5 percentiles
  of the training set's foreground intensities and z-scores with their
  mean and standard deviation, Isensee et al. 2021).
* `"mr"`: per channel z-score over the foreground, the nonzero mask of
  nnU-Net (`create_nonzero_mask`: voxels where any channel is nonzero,
  holes filled), `(v - mean) / max(std, 1e-8)` there, 0 outside (all
  voxels when no voxel is nonzero). nnU-Net uses this mask only where
  cropping to it shrinks the data by at least a quarter (skull-stripped
  brain MR) and all voxels otherwise; here it is always used, which is the
  same where nothing is exactly 0.

**Targets** (`case_targets`), from exactly the raters a subset is given
(a held-out rater never enters a label or a map): `targets="rpdl"` packs
the label and the reward-penalty map (penalty -1, normalized,
`keras_seglosses.rpmap.reward_penalty_map`) [000, Eq. 3, Fig. 2] on the
channel axis (SPEC.md Sec. 2), `"plain"` the label only. `label` is
`"each"` (one sample per (case, rater) pair, labelled with that rater, as
the paper's one pair per surgery), or a consensus of the case's raters,
one sample per case: `"soft"` (`count / K`), `"majority"` (strict, a tie
is background) or `"staple"` (STAPLE's posterior `> 0.5`), as
`cm_dataset.pipeline`.

**Patches.** A patch is a `P^3` crop of the normalized image with the
same crop of the targets. With probability `foreground_fraction` it is
centred on a voxel drawn uniformly from those that any of the case's
raters annotated, else its corner is uniform over all positions inside the
volume. `FOREGROUND_FRACTION` = 1/3 is nnU-Net's
`oversample_foreground_percent` (0.33); nnU-Net forces the last third of
every batch to be foreground (with its batch of 2: one sample, so 50 %),
here every sample is drawn independently with that probability (nnU-Net's
`probabilistic_oversampling` variant), so the fraction does not depend on
the batch size. A centre closer than `P / 2` to a border shifts the patch
inside the volume (nnU-Net pads beyond the border instead), so the drawn
voxel is always in the patch and no patch reads outside the case. A case
without any annotated voxel gets uniform patches only.

**Symmetries.** With `augment`, every training patch gets a random exact
symmetry of the cube (`cm_dataset.augment`) among those its case's spacing
allows (`allowed_symmetries`): the 8 axis reversals always, an axis
permutation only where it swaps axes of equal spacing (all 48 for
isotropic voxels, 16 for spacing (1, 1, 2.5), 8 when all differ), so a
patch never shows anatomy stretched by the voxel aspect.

**Padding.** An axis of a case shorter than `P` is padded evenly on both
sides (the odd voxel after) to `P`: the image with the normalized
background (-1 for CT, the normalized value of air; 0 for MR; the
encoding of label 0 for label maps), the labels with 0 and the RPMap with
the penalty -1 (the padding is background no rater marked).

**Resampling.** `resample=S` first resizes every case to `S^3` (images
linearly, label maps and annotations nearest-neighbour,
`scipy.ndimage.zoom`, corners aligned): after normalization for CT and MR
(as nnU-Net: normalize, then resample), before encoding for label maps.
Patches of `P <= S` are then drawn from the cube; `P == S` is the whole
case. The allowed symmetries follow the resampled spacing, `spacing *
shape / S`.

**Streaming and memory.** A case is read from disk when a patch first
needs it, prepared once (normalized image, per-voxel target codes, the
annotated voxels' indices) and then its `Case` is `release()`d, so at most
one raw case is held. Prepared cases live in an LRU cache of at most
`cache_cases` entries: memory is bounded by the cache, not by the data
set. Per voxel a prepared case holds `4 C'` bytes of image (1 byte for
label maps) and one byte per label volume (K for `"each"`, 1 otherwise);
`y` is decoded per patch from a table of the `2 (K + 1)` codes `label *
(K + 1) + count`, which gives the label and the RPMap bit for bit as the
map functions do. Each dataset has its own cache.

So that a small cache does not thrash, an epoch visits the cases in
chunks: the cases are shuffled and cut into chunks of `cache_cases`, and
the epoch's samples of a chunk are emitted together, shuffled among
themselves, before the next chunk's; each case is read at most once per
epoch, and the chunk last in the cache starts the next epoch. With
`cache_cases >= len(cases)` every case is read once and the order is a
plain shuffle; a smaller cache mixes at most `cache_cases` cases per
stretch of batches (as TorchIO's patch queue trades memory for mixing).

**Determinism.** All draws come from NumPy generators seeded with `seed`,
the subset and the epoch (`numpy.random.SeedSequence`), made before any
data is read, so they do not depend on the cache, threads or timing: the
same arguments give the same batches in every process. Each new iterator
of a training dataset (each `fit` epoch) is the next epoch, with fresh
patches; "val" and "test" give one fixed set of patches every time.
"""

import collections
import collections.abc
import itertools
import math
import numbers
import threading

import numpy as np

from cm_dataset import augment as aug
from cm_dataset.encoding import INPUT_ENCODINGS, encode_input, input_table
from cm_dataset.folder import Case

__all__ = [
    "INTENSITY_MODES",
    "CT_WINDOW",
    "FOREGROUND_FRACTION",
    "TARGETS",
    "LABELS",
    "SUBSETS",
    "normalize",
    "input_channels",
    "allowed_symmetries",
    "resample_case",
    "case_targets",
    "make_patch_dataset",
    "PatchSampler",
    "Sample",
]

INTENSITY_MODES = ("labels", "ct", "mr")
#: CT window in HU: air (-1000) to the dense bone of the temporal bone (see
#: the module docstring).
CT_WINDOW = (-1000.0, 2000.0)
#: Probability that a training patch is centred on an annotated voxel:
#: nnU-Net's `oversample_foreground_percent`.
FOREGROUND_FRACTION = 1.0 / 3.0
TARGETS = ("rpdl", "plain")
LABELS = ("each", "soft", "majority", "staple")
SUBSETS = ("train", "val", "test")
# nnU-Net's floor on the standard deviation of a z-score.
_MIN_STD = 1e-8
# Bytes of cut patches per element of the generator, at most _GROUP
# batches (see PatchSampler._groups).
_GROUP_BYTES, _GROUP = 16 * 2**20, 8


def _invalid(name, expected, value):
    return ValueError(f"Invalid value for argument `{name}`. Expected {expected}. "
                      f"Received: {name}={value!r}")


def _choice(value, choices, name):
    if not isinstance(value, str) or value not in choices:
        raise _invalid(name, f"one of {choices}", value)
    return value


def _positive_int(value, name, allow_none=False):
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _invalid(name, "a positive integer" + (" or None" if allow_none else ""), value)
    return int(value)


def _check_window(window):
    if window is None:
        return CT_WINDOW
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise _invalid("window", "two numbers (low, high) in HU", window) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise _invalid("window", "two finite numbers low < high (HU)", window)
    return lo, hi


def _check_modes(intensity, window, input_encoding):
    _choice(intensity, INTENSITY_MODES, "intensity")
    _choice(input_encoding, INPUT_ENCODINGS, "input_encoding")
    if window is not None and intensity != "ct":
        raise _invalid("window", f"None with intensity={intensity!r} (a window is for CT)",
                       window)
    if input_encoding != "scaled" and intensity != "labels":
        raise _invalid("input_encoding", f"'scaled' with intensity={intensity!r} (the "
                       "encoding is for label-map inputs)", input_encoding)
    return _check_window(window) if intensity == "ct" else None


def _check_image(image, name="image"):
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"Invalid shape for argument `{name}`. Expected (X, Y, Z, C), "
                         f"channels last. Received: shape {image.shape}.")
    return image


def _label_volume(image):
    """uint8 `(X, Y, Z)` of a one-channel label-map image, checked as
    `encode_input` checks its input."""
    if image.shape[-1] != 1:
        raise ValueError(
            "Invalid shape for argument `image`. Expected one channel of CM anatomical labels "
            f"with intensity='labels'. Received: shape {image.shape} ({image.shape[-1]} "
            "channels).")
    labels = image[..., 0]
    try:
        encode_input(np.unique(labels))  # the integer and range checks, on the values only
    except ValueError as e:
        raise ValueError(str(e).replace("argument `x`", "argument `image`")) from None
    return labels.astype(np.uint8)


def _nonzero_mask(image):
    from scipy.ndimage import binary_fill_holes

    mask = np.any(image != 0, axis=-1)
    return binary_fill_holes(mask)


def normalize(image, intensity, *, window=None, input_encoding="scaled"):
    """The network input of one case's image.

    `"labels"`: CM anatomical labels through `cm_dataset.encoding`
    (`"scaled"`: `k / 6.5 - 1`; `"onehot"`: 14 channels). `"ct"`:
    `clip(v, low, high)` mapped linearly onto [-1, 1] (`low` to -1 and
    `high` to 1 exactly). `"mr"`: per channel, `(v - mean) / max(std,
    1e-8)` with mean and standard deviation over nnU-Net's nonzero mask
    (voxels where any channel is nonzero, holes filled; all voxels when
    there is none), 0 outside it. See the module docstring for the choices.

    Args:
        image: float array `(X, Y, Z, C)` (as `Case.image`).
        intensity: `"labels"`, `"ct"` or `"mr"`.
        window: `(low, high)` in HU for `"ct"`. Defaults to `None`
            (`CT_WINDOW`, -1000 to 2000).
        input_encoding: `"scaled"` or `"onehot"`, for `"labels"` only.
            Defaults to `"scaled"`.

    Returns:
        float32 array `(X, Y, Z, C')`, `C' = input_channels(C, ...)`.

    Raises:
        ValueError: an unknown `intensity` or `input_encoding`, a bad
            `window` (or one given for another intensity), an image that is
            not `(X, Y, Z, C)`, label maps with several channels or values
            that are not labels 0..13.

    Example:

    >>> import numpy as np
    >>> hu = np.array([-2000.0, -1000.0, 500.0, 2000.0, 3000.0]).reshape(5, 1, 1, 1)
    >>> normalize(hu, "ct").ravel().tolist()
    [-1.0, -1.0, 0.0, 1.0, 1.0]
    """
    lo_hi = _check_modes(intensity, window, input_encoding)
    image = _check_image(image)
    if intensity == "labels":
        return input_table(input_encoding)[_label_volume(image)]
    if intensity == "ct":
        lo, hi = lo_hi
        mid, half = np.float32((lo + hi) / 2.0), np.float32((hi - lo) / 2.0)
        out = np.clip(image.astype(np.float32, copy=False), np.float32(lo), np.float32(hi))
        out -= mid
        out /= half
        return out
    mask = _nonzero_mask(image)
    if not mask.any():
        mask = np.ones(mask.shape, bool)
    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[-1]):
        values = image[..., c][mask].astype(np.float64)
        mean, std = values.mean(), values.std()
        out[..., c][mask] = ((values - mean) / max(std, _MIN_STD)).astype(np.float32)
    return out


def input_channels(channels, intensity, input_encoding="scaled"):
    """Channels of `normalize`'s output for an image of `channels` channels.

    Args:
        channels: int, the image's channels `C`.
        intensity: `"labels"`, `"ct"` or `"mr"`.
        input_encoding: `"scaled"` or `"onehot"`. Defaults to `"scaled"`.

    Returns:
        int: 1 or 14 for label maps (which must have one channel), else
        `channels`.

    Example:

    >>> input_channels(1, "labels", "onehot"), input_channels(2, "mr")
    (14, 2)
    """
    _check_modes(intensity, None, input_encoding)
    channels = _positive_int(channels, "channels")
    if intensity != "labels":
        return channels
    if channels != 1:
        raise _invalid("channels", "1 with intensity='labels' (one label-map channel)",
                       channels)
    return int(input_table(input_encoding).shape[1])


def _check_spacing(spacing):
    values = np.asarray(spacing, dtype=float).ravel()
    if values.shape != (3,) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise _invalid("spacing", "three positive numbers (mm per voxel)", spacing)
    return values


def allowed_symmetries(spacing, rtol=1e-3):
    """The symmetries of `cm_dataset.augment` that a voxel spacing allows.

    Symmetry `k` transposes the axes by `PERMUTATIONS[k // 8]` (output
    axis `i` is input axis `perm[i]`), then reverses some; it is allowed
    when every output axis keeps the spacing it had, i.e. the permutation
    only swaps axes of equal spacing (within `rtol`). Reversals change no
    spacing, so all 8 are always allowed.

    Args:
        spacing: three positive numbers, mm per voxel.
        rtol: float >= 0, relative tolerance for equal spacings. Defaults to
            `1e-3` (far above header round-off, far below a real
            anisotropy).

    Returns:
        tuple of ints `k` into `cm_dataset.augment.SYMMETRIES`, ascending:
        48 for isotropic spacing, 16 for two equal spacings, 8 for three
        different ones.

    Example:

    >>> len(allowed_symmetries((1, 1, 1))), len(allowed_symmetries((0.5, 0.5, 2.5)))
    (48, 16)
    >>> allowed_symmetries((1, 2, 3)) == tuple(range(8))
    True
    """
    s = _check_spacing(spacing)
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real) or not rtol >= 0:
        raise _invalid("rtol", "a number >= 0", rtol)
    ok = [all(math.isclose(s[p[i]], s[i], rel_tol=rtol) for i in range(3))
          for p in aug.PERMUTATIONS]
    return tuple(k for k, (p, _) in enumerate(aug.SYMMETRIES)
                 if ok[aug.PERMUTATIONS.index(p)])


def _zoom(volume, size, order):
    from scipy import ndimage

    factors = [size / n for n in volume.shape[:3]]
    if volume.ndim == 3:
        return ndimage.zoom(volume, factors, order=order)
    return np.stack([ndimage.zoom(volume[..., c], factors, order=order)
                     for c in range(volume.shape[-1])], axis=-1)


def resample_case(image, annotations, size, order_image=1):
    """Resize a case to `size^3` voxels.

    `scipy.ndimage.zoom` with factors `size / shape` (corner voxels mapped
    onto corner voxels): the image with spline order `order_image` (1:
    linear, for intensities; 0: nearest-neighbour, for label maps), the
    annotations nearest-neighbour, so they stay binary.

    Args:
        image: `(X, Y, Z)` or `(X, Y, Z, C)` (channels resized alike), or
            `None`.
        annotations: dict rater -> `(X, Y, Z)`, a stack `(K, X, Y, Z)`, one
            volume `(X, Y, Z)`, or `None`.
        size: int >= 1, the output edge `S`.
        order_image: int 0..5, the spline order for the image. Defaults to
            `1`.

    Returns:
        `(image, annotations)` resized to `(S, S, S[, C])` and `(S, S, S)`
        per annotation, of the input dtypes and container (`None` stays
        `None`).

    Raises:
        ValueError: a bad `size` or `order_image`, volumes that are not 3D
            or whose spatial shapes differ.

    Example:

    >>> import numpy as np
    >>> image, ann = resample_case(np.zeros((4, 6, 8, 1), np.float32),
    ...                            {"a": np.ones((4, 6, 8), np.uint8)}, 5)
    >>> image.shape, ann["a"].shape, ann["a"].dtype
    ((5, 5, 5, 1), (5, 5, 5), dtype('uint8'))
    """
    size = _positive_int(size, "size")
    if (isinstance(order_image, bool) or not isinstance(order_image, numbers.Integral)
            or not 0 <= order_image <= 5):
        raise _invalid("order_image", "an integer spline order 0..5", order_image)
    shapes = []
    if image is not None:
        image = np.asarray(image)
        if image.ndim not in (3, 4):
            raise ValueError("Invalid shape for argument `image`. Expected (X, Y, Z) or "
                             f"(X, Y, Z, C). Received: shape {image.shape}.")
        shapes.append(image.shape[:3])
    volumes = None
    if annotations is not None:
        if isinstance(annotations, dict):
            volumes = {r: np.asarray(a) for r, a in annotations.items()}
        else:
            a = np.asarray(annotations)
            volumes = {None: a} if a.ndim == 3 else dict(enumerate(a))
        for v in volumes.values():
            if v.ndim != 3:
                raise ValueError("Invalid shape for argument `annotations`. Expected "
                                 "(X, Y, Z) volumes (a dict of them or a stack (K, X, Y, Z)). "
                                 f"Received: a volume of shape {v.shape}.")
            shapes.append(v.shape)
    if len(set(shapes)) > 1:
        raise ValueError("Invalid value for argument `annotations`. Expected the spatial "
                         f"shape of the image. Received: shapes {sorted(set(shapes))}.")
    if image is not None:
        image = _zoom(image, size, order_image).astype(image.dtype, copy=False)
    if volumes is None:
        return image, None
    out = {r: _zoom(v, size, 0) for r, v in volumes.items()}
    if isinstance(annotations, dict):
        return image, out
    if np.asarray(annotations).ndim == 3:
        return image, out[None]
    return image, np.stack([out[k] for k in range(len(out))])


def _check_raters(case, raters):
    if raters is None:
        return tuple(case.raters)
    if isinstance(raters, str):
        raters = (raters,)
    raters = tuple(raters)
    missing = [r for r in raters if r not in case.raters]
    if missing:
        raise _invalid("raters", f"raters of case {case.name!r}, among {list(case.raters)}",
                       raters)
    if not raters:
        raise _invalid("raters", f"at least one rater for case {case.name!r} (none left)",
                       raters)
    if len(set(raters)) != len(raters):
        raise _invalid("raters", f"distinct raters for case {case.name!r}", raters)
    return raters


def _consensus(stack, label):
    """`(K', ...)` label volumes of a `(K, ...)` annotation stack."""
    from keras_seglosses.multirater import majority_vote, soft_label, staple

    if label == "each":
        return stack
    if label == "soft":
        return soft_label(stack).astype(np.float32)[None]
    if label == "majority":
        return majority_vote(stack).astype(np.uint8)[None]
    return (staple(stack).probability > 0.5).astype(np.uint8)[None]


def case_targets(case, raters, *, targets="rpdl", label="each"):
    """The full-volume targets of one case from the given raters only.

    Args:
        case: `cm_dataset.folder.Case`.
        raters: the rater ids to use (a held-out rater is left out here),
            or `None` for all of the case's.
        targets: `"rpdl"` (labels and RPMap) or `"plain"` (labels only).
            Defaults to `"rpdl"`.
        label: `"each"` (one volume per rater, in the order of `raters`),
            `"soft"` (`count / K`), `"majority"` (`count / K > 0.5`) or
            `"staple"` (STAPLE posterior `> 0.5`) of those K raters.
            Defaults to `"each"`.

    Returns:
        `(labels, rpmap)`: labels `(K', X, Y, Z)`, uint8 (float32 for
        `"soft"`), `K' = K` for `"each"` else 1; rpmap float32 `(X, Y, Z)`,
        `reward_penalty_map` of exactly those raters (penalty -1,
        normalized), or `None` for `"plain"`.

    Raises:
        ValueError: a rater the case lacks, no rater, a repeated rater, an
            unknown `targets` or `label`.
    """
    from keras_seglosses.rpmap import reward_penalty_map

    _choice(targets, TARGETS, "targets")
    _choice(label, LABELS, "label")
    stack = case.annotation_stack(_check_raters(case, raters))
    labels = _consensus(stack, label)
    return labels, (reward_penalty_map(stack) if targets == "rpdl" else None)


#: One planned sample: case index, label volume index (the rater's position
#: for "each", else 0), `corner` of a uniform patch, or `pick` in [0, 1) that
#: selects the annotated centre voxel of a foreground patch (`corner` None),
#: and the symmetry index.
Sample = collections.namedtuple("Sample", "case label corner pick symmetry")


class _Prepared:
    """One cached case: what a patch is cut from."""

    __slots__ = ("x", "codes", "table", "foreground", "shape")

    def __init__(self, x, codes, table, foreground):
        self.x, self.codes, self.table, self.foreground = x, codes, table, foreground
        self.shape = codes.shape[1:]


def _code_table(counts, k, label, targets):
    """Float32 `(2 (K + 1), channels)`: row `y * (K + 1) + c` holds the label
    and RPMap value of a voxel with label bit `y` and count `c`, computed
    with the operations of `soft_label`, `majority_vote` and
    `reward_penalty_map`, so the decoded values equal theirs."""
    base = k + 1
    y, c = np.divmod(np.arange(2 * base), base)
    table = np.zeros((2 * base, 2 if targets == "rpdl" else 1), np.float32)
    if label == "soft":
        table[:, 0] = (c.astype(np.float64) / k).astype(np.float32)
    elif label == "majority":
        table[:, 0] = c.astype(np.float64) / k > 0.5
    else:
        table[:, 0] = y
    if targets == "rpdl":
        top = max(float(counts.max()), 1.0)
        table[:, 1] = np.where(c > 0, c.astype(np.float32) / top, np.float32(-1.0))
    return table


def _pad_widths(shape, size):
    return [((size - n) // 2, size - n - (size - n) // 2) if n < size else (0, 0)
            for n in shape]


class PatchSampler:
    """The plan and the patches behind `make_patch_dataset`.

    Takes `make_patch_dataset`'s arguments (which see) and validates them.
    `plan(epoch)` lists an epoch's samples without reading any data;
    `locate(sample)` gives a sample's crop corner in the (padded, resampled)
    case, `patch(sample)` its `(x, y)`; `batches(epoch)` yields the NumPy
    batches that `dataset()` streams. The dataset is a thin wrapper, so
    these reproduce its batches exactly.

    Attributes:
        n_samples: samples per epoch.
        n_batches: batches per epoch (the last short one dropped for
            "train").
        x_channels, y_channels: channels of x and y.
        symmetries: per case, `allowed_symmetries` of its spacing (the
            resampled one with `resample`).
        loads: number of cases read and prepared so far.
    """

    def __init__(self, cases, raters, *, subset="train", patch_size=64, batch_size=2, seed=0,
                 targets="rpdl", label="each", intensity="ct", window=None,
                 input_encoding="scaled", foreground_fraction=FOREGROUND_FRACTION,
                 augment=True, cache_cases=4, resample=None, samples_per_epoch=None):
        self.subset = _choice(subset, SUBSETS, "subset")
        self.patch_size = _positive_int(patch_size, "patch_size")
        self.batch_size = _positive_int(batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise _invalid("seed", "a non-negative integer", seed)
        self.seed = int(seed)
        self.targets = _choice(targets, TARGETS, "targets")
        self.label = _choice(label, LABELS, "label")
        self.intensity = intensity
        self.window = _check_modes(intensity, window, input_encoding)
        self.input_encoding = input_encoding
        f = foreground_fraction
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 <= f <= 1.0:
            raise _invalid("foreground_fraction", "a number in [0, 1]", f)
        self.foreground_fraction = float(f)
        if not isinstance(augment, (bool, np.bool_)):
            raise _invalid("augment", "True or False", augment)
        self.augment = bool(augment) and self.subset == "train"
        self.cache_cases = _positive_int(cache_cases, "cache_cases")
        self.resample = _positive_int(resample, "resample", allow_none=True)
        if self.resample is not None and self.patch_size > self.resample:
            raise _invalid("patch_size", f"at most resample={self.resample} (patches of the "
                           "resampled cube)", patch_size)
        self._check_cases(cases, raters)
        self.x_channels = input_channels(self.cases[0].channels, intensity, input_encoding)
        self.y_channels = 2 if targets == "rpdl" else 1
        self.pairs = [(i, j) for i, r in enumerate(self.raters)
                      for j in range(len(r) if label == "each" else 1)]
        n = _positive_int(samples_per_epoch, "samples_per_epoch", allow_none=True)
        self.n_samples = len(self.pairs) if n is None else n
        if self.subset == "train":
            self.n_batches = self.n_samples // self.batch_size
            if self.n_batches == 0:
                raise _invalid("samples_per_epoch", f"at least batch_size={self.batch_size} "
                               "samples per training epoch (the last short batch is dropped)",
                               self.n_samples)
        else:
            self.n_batches = -(-self.n_samples // self.batch_size)
        self.shapes, self.symmetries = [], []
        for case in self.cases:
            shape = (self.resample,) * 3 if self.resample else tuple(case.shape)
            spacing = np.asarray(case.spacing, float)
            if self.resample:
                spacing = spacing * np.asarray(case.shape) / self.resample
            self.shapes.append(tuple(max(n, self.patch_size) for n in shape))
            self.symmetries.append(allowed_symmetries(spacing))
        self._x_table = input_table(input_encoding) if intensity == "labels" else None
        self._max_raters = max(len(r) for r in self.raters)
        self._code_dtype = np.uint8 if 2 * (self._max_raters + 1) <= 256 else np.int32
        self._cache = collections.OrderedDict()
        self._lock = threading.RLock()
        self._orders = []
        self._fixed_plan = None
        self._epochs = itertools.count()
        self.loads = 0

    def _check_cases(self, cases, raters):
        if isinstance(cases, Case):
            cases = [cases]
        cases = list(cases) if isinstance(cases, (list, tuple)) else None
        if not cases or not all(isinstance(c, Case) for c in cases):
            raise _invalid("cases", "a non-empty list of cm_dataset.folder.Case",
                           type(cases).__name__ if cases is None else cases)
        names = [c.name for c in cases]
        if len(set(names)) != len(names):
            raise _invalid("cases", "cases with distinct names", names)
        if raters is not None and not isinstance(raters, collections.abc.Mapping):
            raise _invalid("raters", "a dict case name -> tuple of rater ids",
                           type(raters).__name__)
        chosen = []
        for case in cases:
            if raters is not None and case.name not in raters:
                raise _invalid("raters", f"an entry for case {case.name!r}", dict(raters))
            chosen.append(_check_raters(case, None if raters is None else raters[case.name]))
        channels = {c.channels for c in cases}
        if len(channels) > 1:
            found = {c.name: c.channels for c in cases}
            raise _invalid("cases", "cases with the same number of image channels", found)
        if self.intensity == "labels" and channels != {1}:
            raise _invalid("intensity", "'ct' or 'mr' for multi-channel images ('labels' "
                           f"needs one label-map channel; the cases have {channels.pop()})",
                           self.intensity)
        self.cases, self.raters = cases, chosen

    # -- the plan ------------------------------------------------------------

    def _rng(self, epoch, stream):
        key = (SUBSETS.index(self.subset), int(epoch), stream)
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def _case_order(self, epoch):
        """The case order of a training epoch: a shuffle, with the cases of
        the previous epoch's last chunk (still cached) moved to the front."""
        n, size = len(self.cases), self.cache_cases
        while len(self._orders) <= epoch:
            e = len(self._orders)
            order = self._rng(e, 0).permutation(n)
            if e > 0 and size < n:
                previous = self._orders[-1]
                tail = previous[(n - 1) // size * size:]
                order = np.concatenate([tail, order[~np.isin(order, tail)]])
            self._orders.append(order)
        return self._orders[epoch]

    def plan(self, epoch=0):
        """The samples of one epoch, in the order batches take them.

        "train": the `n_samples` (case, label) pairs are whole shuffles of
        all pairs, the last one cut short; cases are visited in chunks of
        `cache_cases` (module docstring), shuffled within a chunk. "val" and
        "test": pair `i % len(pairs)` for sample `i`, grouped by case, the
        same for every `epoch`. Each sample is a foreground patch with
        probability `foreground_fraction` and gets a random allowed symmetry
        when augmenting ("train" only).

        Args:
            epoch: int >= 0, ignored for "val" and "test". Defaults to `0`.

        Returns:
            list of `Sample`.
        """
        if self.subset != "train":
            if self._fixed_plan is None:
                self._fixed_plan = self._draw(0, None)
            return list(self._fixed_plan)
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise _invalid("epoch", "a non-negative integer", epoch)
        with self._lock:
            order = self._case_order(int(epoch))
        return self._draw(int(epoch), order)

    def _draw(self, epoch, order):
        rng, n, pairs = self._rng(epoch, 1), self.n_samples, np.array(self.pairs)
        if order is None:
            chosen = pairs[np.arange(n) % len(pairs)]
            chosen = chosen[np.argsort(chosen[:, 0], kind="stable")]
        else:
            rounds = -(-n // len(pairs))
            index = np.concatenate([rng.permutation(len(pairs)) for _ in range(rounds)])[:n]
            chunk = np.empty(len(self.cases), np.int64)
            chunk[order] = np.arange(len(self.cases)) // self.cache_cases
            chosen = pairs[index]
            chosen = chosen[np.argsort(chunk[chosen[:, 0]], kind="stable")]
        foreground = rng.random(n) < self.foreground_fraction
        picks = rng.random(n)
        free = np.array([[s - self.patch_size + 1 for s in self.shapes[i]] for i in chosen[:, 0]])
        corners = rng.integers(0, free)
        turns = rng.random(n)
        samples = []
        for j, (i, label) in enumerate(chosen.tolist()):
            allowed = self.symmetries[i] if self.augment else (0,)
            k = allowed[min(int(turns[j] * len(allowed)), len(allowed) - 1)]
            if foreground[j]:
                samples.append(Sample(i, label, None, float(picks[j]), k))
            else:
                samples.append(Sample(i, label, tuple(corners[j].tolist()), None, k))
        return samples

    # -- the cache -----------------------------------------------------------

    def prepared(self, index):
        """The cached arrays of case `index`, reading it on a miss (the
        least recently used entry is dropped first)."""
        with self._lock:
            entry = self._cache.get(index)
            if entry is not None:
                self._cache.move_to_end(index)
                return entry
            while len(self._cache) >= self.cache_cases:
                self._cache.popitem(last=False)
            entry = self._prepare(self.cases[index], self.raters[index])
            if entry.shape != self.shapes[index]:
                # the plan drew corners for this shape without reading the case
                raise RuntimeError(f"case {self.cases[index].name!r}: prepared shape "
                                   f"{entry.shape}, planned {self.shapes[index]}")
            self._cache[index] = entry
            self.loads += 1
            return entry

    def _prepare(self, case, raters):
        try:
            image = case.image
            stack = case.annotation_stack(raters)
        finally:
            # Everything needed is copied out below; the Case's own arrays
            # would double the memory of the cache.
            case.release()
        size = self.resample
        if self.intensity == "labels":
            x = _label_volume(image)
            if size:
                x, stack = resample_case(x, stack, size, order_image=0)
        else:
            x = normalize(image, self.intensity, window=self.window)
            if size:
                x, stack = resample_case(x, stack, size)
        del image
        k = stack.shape[0]
        counts = stack.sum(axis=0, dtype=np.uint8 if k < 256 else np.int32)
        bits = _consensus(stack, self.label) if self.label in ("each", "staple") else None
        dtype = self._code_dtype
        if bits is None:
            codes = counts.astype(dtype)[None]
        else:
            codes = bits.astype(dtype) * dtype(k + 1) + counts.astype(dtype)
        del stack, bits
        table = _code_table(counts, k, self.label, self.targets)
        pad = _pad_widths(codes.shape[1:], self.patch_size)
        if any(p != (0, 0) for p in pad):
            codes = np.pad(codes, [(0, 0)] + pad)
            background = {"ct": -1.0, "mr": 0.0, "labels": 0}[self.intensity]
            x = np.pad(x, pad + [(0, 0)] * (x.ndim - 3), constant_values=background)
        # every code is `label * (K + 1) + count`: annotated where count > 0
        foreground = np.flatnonzero(codes[0] % dtype(k + 1))
        if codes[0].size < 2**31:
            foreground = foreground.astype(np.int32)
        return _Prepared(np.ascontiguousarray(x), codes, table, foreground)

    # -- patches -------------------------------------------------------------

    def locate(self, sample):
        """The corner `(i, j, k)` of a sample's crop in its prepared case."""
        if sample.corner is not None:
            return sample.corner
        entry = self.prepared(sample.case)
        fg = entry.foreground
        if fg.size == 0:
            # nothing annotated: a uniform corner, from the same draw
            free = [s - self.patch_size + 1 for s in entry.shape]
            flat = min(int(sample.pick * math.prod(free)), math.prod(free) - 1)
            return tuple(int(v) for v in np.unravel_index(flat, free))
        centre = np.unravel_index(int(fg[min(int(sample.pick * fg.size), fg.size - 1)]),
                                  entry.shape)
        half = self.patch_size // 2
        return tuple(int(min(max(c - half, 0), s - self.patch_size))
                     for c, s in zip(centre, entry.shape))

    def _cut(self, sample, x_out, codes_out):
        """Write a sample's crop, symmetry applied, into the batch slots:
        the normalized image (the raw labels for label maps) and the target
        codes; return the case's code table."""
        entry = self.prepared(sample.case)
        crop = tuple(slice(c, c + self.patch_size) for c in self.locate(sample))
        np.copyto(x_out, aug.apply(entry.x[crop], sample.symmetry))
        np.copyto(codes_out, aug.apply(entry.codes[sample.label][crop], sample.symmetry))
        return entry.table

    def _buffers(self, *lead):
        p, width = self.patch_size, 2 * (self._max_raters + 1)
        labels = self._x_table is not None
        x_shape = lead + (p, p, p) + (() if labels else (self.x_channels,))
        return (np.empty(x_shape, np.uint8 if labels else np.float32),
                np.empty(lead + (p, p, p), self._code_dtype),
                np.zeros(lead + (width, self.y_channels), np.float32))

    def _batch_starts(self, epoch):
        plan = self.plan(epoch)
        end = self.n_batches * self.batch_size if self.subset == "train" else len(plan)
        return plan, range(0, end, self.batch_size)

    def _fill(self, samples, x, codes, tables):
        tables[:] = 0
        for j, sample in enumerate(samples):
            table = self._cut(sample, x[j], codes[j])
            tables[j, :len(table)] = table

    def _groups(self, epoch):
        """An epoch's batches as cut, before decoding, several at a time:
        `(x or labels, codes, tables)`, each with a leading group axis.
        `from_generator` costs about a millisecond per element whatever its
        size, so a group of about 16 MiB is one element. The buffers are
        reused: `from_generator` copies what it is given before asking for
        more."""
        plan, starts = self._batch_starts(epoch)
        b = self.batch_size
        full = [s for s in starts if s + b <= len(plan)]
        x, codes, _ = self._buffers(1, b)
        group = int(min(max(_GROUP_BYTES // (x.nbytes + codes.nbytes), 1), _GROUP))
        buffers = self._buffers(min(group, max(len(full), 1)), b)
        for g in range(0, len(full), group):
            chunk = full[g:g + group]
            out = buffers if len(chunk) == len(buffers[0]) else self._buffers(len(chunk), b)
            for i, start in enumerate(chunk):
                self._fill(plan[start:start + b], *(a[i] for a in out))
            yield out
        if len(full) < len(starts):  # the short last batch of "val" and "test"
            rest = plan[starts[-1]:]
            out = self._buffers(1, len(rest))
            self._fill(rest, *(a[0] for a in out))
            yield out

    def _decode_numpy(self, x, codes, tables):
        if self._x_table is not None:
            x = np.take(self._x_table, x.astype(np.intp), axis=0)
        y = np.stack([np.take(t, c.astype(np.intp), axis=0) for t, c in zip(tables, codes)])
        return np.array(x, np.float32), y

    def patch(self, sample):
        """`(x, y)` float32 of one sample, `(P, P, P, C')` and `(P, P, P, 1 or 2)`."""
        out = self._buffers(1)
        self._fill([sample], *out)
        x, y = self._decode_numpy(*out)
        return x[0], y[0]

    def batches(self, epoch=0):
        """The `(x, y)` batches of one epoch (see `plan`), float32, decoded
        with NumPy: what the dataset gives, without TensorFlow."""
        plan, starts = self._batch_starts(epoch)
        for start in starts:
            samples = plan[start:start + self.batch_size]
            out = self._buffers(len(samples))
            self._fill(samples, *out)
            yield self._decode_numpy(*out)

    def dataset(self):
        """The `tf.data.Dataset` of `make_patch_dataset`."""
        import tensorflow as tf

        p = self.patch_size
        batch = self.batch_size if self.subset == "train" else None
        labels = self._x_table is not None
        signature = (
            tf.TensorSpec((None, batch, p, p, p) + (() if labels else (self.x_channels,)),
                          tf.uint8 if labels else tf.float32),
            tf.TensorSpec((None, batch, p, p, p), tf.as_dtype(self._code_dtype)),
            tf.TensorSpec((None, batch, 2 * (self._max_raters + 1), self.y_channels),
                          tf.float32),
        )

        def epoch():
            # Called once per iterator, when it first needs a batch: each
            # new iterator of a training set is the next epoch.
            with self._lock:
                e = next(self._epochs)
            yield from self._groups(e)

        x_table = tf.constant(self._x_table if labels else np.zeros((1, 1), np.float32))

        @tf.function(jit_compile=True, reduce_retracing=True)
        def decode(x, codes, tables):
            # In TensorFlow's threads, beside the generator's Python thread;
            # XLA fuses the cast into the gather (unfused TF gathers are
            # several times slower). A gather is exact.
            y = tf.gather(tables, tf.cast(codes, tf.int32), batch_dims=1)
            if labels:
                x = tf.gather(x_table, tf.cast(x, tf.int32))
            return x, y

        ds = tf.data.Dataset.from_generator(epoch, output_signature=signature).unbatch()
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.apply(tf.data.experimental.assert_cardinality(self.n_batches))
        return ds.prefetch(2)


def make_patch_dataset(cases, raters, *, subset="train", patch_size=64, batch_size=2, seed=0,
                       targets="rpdl", label="each", intensity="ct", window=None,
                       input_encoding="scaled", foreground_fraction=FOREGROUND_FRACTION,
                       augment=True, cache_cases=4, resample=None, samples_per_epoch=None):
    """`tf.data.Dataset` of `(x, y)` patch batches from a folder of cases.

    Sampling, normalization, symmetries, padding, resampling, the cache and
    determinism are described in the module docstring. "train": one epoch
    is `samples_per_epoch` samples, each a random (case, rater) pair (every
    pair once per `len(pairs)` samples), a random patch and, with
    `augment`, a random allowed symmetry; every new iterator draws a new
    epoch; the last short batch is dropped (so JAX does not recompile).
    "val" and "test": a fixed, seeded set of unaugmented patches, the same
    every time, every sample kept. A Python generator cuts the patches in
    NumPy (a crop and a symmetry as a strided view, one copy of the image
    and one of the one-byte target codes per patch), several batches per
    element; TensorFlow's threads decode the codes into y (and label maps
    into x) with an XLA-compiled table gather, beside it; two batches are
    prefetched. The dataset runs on tf.data under every Keras backend.
    Its cardinality is one epoch: with `fit(steps_per_epoch=...)` add
    `.repeat()`.

    Args:
        cases: list of `cm_dataset.folder.Case` (lazy ones are read when
            needed, then released).
        raters: dict case name -> tuple of the rater ids this subset uses
            (labels and RPMap from those only), or `None` for all raters
            of every case. Extra names are ignored.
        subset: `"train"`, `"val"` or `"test"`. Defaults to `"train"`.
        patch_size: int, the patch edge `P`. Defaults to `64`.
        batch_size: int. Defaults to `2`.
        seed: int >= 0. Defaults to `0`.
        targets: `"rpdl"` (label, RPMap) or `"plain"` (label). Defaults to
            `"rpdl"`.
        label: `"each"`, `"soft"`, `"majority"` or `"staple"`. Defaults to
            `"each"`.
        intensity: `"labels"`, `"ct"` or `"mr"`. Defaults to `"ct"`.
        window: `(low, high)` HU for `"ct"`. Defaults to `None`
            (`CT_WINDOW`).
        input_encoding: `"scaled"` or `"onehot"` (label maps only).
            Defaults to `"scaled"`.
        foreground_fraction: float in [0, 1], the probability of a patch
            centred on an annotated voxel. Defaults to `FOREGROUND_FRACTION`
            (1/3, nnU-Net's).
        augment: bool, random allowed symmetries ("train" only). Defaults
            to `True`.
        cache_cases: int, the most prepared cases held. Defaults to `4`.
        resample: int `S` or `None`: resize every case to `S^3` first
            (`patch_size <= S`). Defaults to `None`.
        samples_per_epoch: int or `None` (one per (case, rater) pair for
            `"each"`, one per case otherwise). Defaults to `None`.

    Returns:
        `tf.data.Dataset` of float32 `(x, y)`: x `(B, P, P, P, C')` (`C'`
        of `input_channels`), y `(B, P, P, P, 2)` for `"rpdl"`, `(B, P, P,
        P, 1)` for `"plain"`; its cardinality is the number of batches.

    Raises:
        ValueError: naming the argument, what was expected and what was
            received: a bad size, count, seed, mode or fraction, a case
            missing from `raters`, a rater a case lacks, a case with no
            rater, cases with different channels, `patch_size > resample`.

    Example:

    >>> import os, tempfile, numpy as np
    >>> from cm_dataset.folder import load_folder
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "c1"))
    >>> np.save(os.path.join(d, "c1", "image.npy"), np.zeros((12, 10, 9), np.float32))
    >>> for r in "ab":
    ...     np.save(os.path.join(d, "c1", f"annotation-{r}.npy"), np.ones((12, 10, 9), np.uint8))
    >>> cases = load_folder(d, lazy=True)
    >>> ds = make_patch_dataset(cases, {"c1": ("a", "b")}, patch_size=8)
    >>> [tuple(t.shape) for t in next(iter(ds))]
    [(2, 8, 8, 8, 1), (2, 8, 8, 8, 2)]

    Reference:
        Isensee et al., nnU-Net, Nature Methods 18, 2021 (foreground
        oversampling, nonzero-mask z-score); He et al., IJCNN 2020 [000,
        Eq. 3] (RPMap).
    """
    return PatchSampler(
        cases, raters, subset=subset, patch_size=patch_size, batch_size=batch_size, seed=seed,
        targets=targets, label=label, intensity=intensity, window=window,
        input_encoding=input_encoding, foreground_fraction=foreground_fraction,
        augment=augment, cache_cases=cache_cases, resample=resample,
        samples_per_epoch=samples_per_epoch,
    ).dataset()
