"""`cm_dataset.patches`: normalization against hand-computed NumPy, the
spacing-allowed symmetries, patches as exact crops (and exact symmetries) of
the normalized image and targets, foreground sampling, padding, resampling
against scipy, determinism, the cache bound and argument errors."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from cm_dataset import augment as aug
from cm_dataset import folder, patches
from cm_dataset.encoding import encode_input
from cm_dataset.folder import load_folder
from cm_dataset.patches import (
    CT_WINDOW,
    FOREGROUND_FRACTION,
    PatchSampler,
    allowed_symmetries,
    case_targets,
    input_channels,
    make_patch_dataset,
    normalize,
    resample_case,
)
from keras_seglosses.multirater import majority_vote, soft_label, staple
from keras_seglosses.rpmap import reward_penalty_map

nib = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")

P = 8  # patch edge of most tests: small, but below every case's size somewhere
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _masks(rng, shape, k):
    """k overlapping blobs of a few percent, each with voxels of its own."""
    base = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    top = np.quantile(base, 0.85)
    return [(base + 0.3 * top * rng.normal(size=shape) > top).astype(np.uint8)
            for _ in range(k)]


def _write_case(root, name, shape, spacing, raters, ext=".nii.gz", kind="ct", seed=0):
    rng = np.random.default_rng(seed)
    case = root / name
    case.mkdir(parents=True)
    if kind == "ct":
        image = rng.integers(-1500, 3000, shape).astype(np.int16)
    elif kind == "mr":
        image = rng.gamma(2.0, 100.0, shape).astype(np.float32)
        image[:2] = 0  # background around the object
    else:
        image = rng.integers(0, 14, shape).astype(np.uint8)
    volumes = {"image": image}
    volumes.update({f"annotation-{r}": m for r, m in zip(raters, _masks(rng, shape, len(raters)))})
    affine = np.diag([*spacing, 1.0])
    for stem, array in volumes.items():
        path = str(case / f"{stem}{ext}")
        if ext == ".nrrd":
            nrrd.write(path, array, {"space": "right-anterior-superior",
                                     "space directions": np.diag(spacing),
                                     "space origin": np.zeros(3)})
        else:
            nib.save(nib.Nifti1Image(array, affine), path)


def _folder(root, kind="ct"):
    # odd sizes, anisotropic and all-different spacings, 2-4 raters; case "c"
    # is thinner than the patch along two axes
    _write_case(root, "a", (37, 29, 23), (1.0, 1.0, 2.5), ("r1", "r2", "r3"), kind=kind, seed=1)
    _write_case(root, "b", (20, 24, 18), (0.8, 0.8, 0.8), ("r1", "r2"), ".nrrd", kind, seed=2)
    _write_case(root, "c", (6, 30, 5), (0.7, 0.9, 1.3), ("r1", "r2", "r3", "r4"), kind=kind,
                seed=3)
    return load_folder(root, lazy=True)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def label_cases(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("labels"), kind="labels")


def _all(cases):
    return {c.name: c.raters for c in cases}


def _padded(volume, size, value):
    """Pad the spatial axes (the first three) to `size` as the module
    documents: evenly, the odd voxel after."""
    pad = [((size - n) // 2, size - n - (size - n) // 2) if n < size else (0, 0)
           for n in volume.shape[:3]]
    return np.pad(volume, pad + [(0, 0)] * (volume.ndim - 3), constant_values=value)


def _expected(case, raters, sample, corner, *, intensity="ct", label="each",
              input_encoding="scaled", size=P, resample=None):
    """The patch recomputed from the public functions: normalize, targets,
    resample, pad, crop, symmetry."""
    image = case.image
    labels, rpmap = case_targets(case, raters, label=label)
    if resample:
        if intensity == "labels":
            image, _ = resample_case(image, None, resample, order_image=0)
        else:
            image, _ = resample_case(normalize(image, intensity), None, resample)
        stack = case.annotation_stack(raters)
        _, stack = resample_case(None, stack, resample)
        labels, rpmap = _consensus_of(stack, label), reward_penalty_map(stack)
        if intensity == "labels":
            image = normalize(image, intensity, input_encoding=input_encoding)
    else:
        image = normalize(image, intensity, input_encoding=input_encoding)
    background = normalize(np.zeros((1, 1, 1, 1), np.float32), intensity,
                           input_encoding=input_encoding)[0, 0, 0] if intensity != "ct" else -1
    x = _padded(image, size, 0)
    if intensity != "mr":
        # padding value per channel (the label-0 encoding for one-hot inputs)
        mask = _padded(np.ones(image.shape[:3], bool), size, False)
        x[~mask] = background
    lab = _padded(labels[sample.label], size, 0)
    rp = _padded(rpmap, size, -1.0)
    crop = tuple(slice(c, c + size) for c in corner)
    y = np.stack([lab[crop], rp[crop]], axis=-1).astype(np.float32)
    return aug.apply(x[crop], sample.symmetry), aug.apply(y, sample.symmetry)


def _consensus_of(stack, label):
    if label == "each":
        return stack
    if label == "soft":
        return soft_label(stack).astype(np.float32)[None]
    if label == "majority":
        return majority_vote(stack).astype(np.uint8)[None]
    return (staple(stack).probability > 0.5).astype(np.uint8)[None]


# -- normalize ---------------------------------------------------------------


def test_normalize_ct_against_numpy(rng):
    image = rng.uniform(-3000, 4000, (7, 5, 3, 2)).astype(np.float32)
    lo, hi = CT_WINDOW
    want = (np.clip(image.astype(np.float64), lo, hi) - lo) / (hi - lo) * 2 - 1
    got = normalize(image, "ct")
    assert got.dtype == np.float32 and got.shape == image.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert normalize(np.float32([[[[lo, hi, lo - 5, hi + 5]]]]).reshape(4, 1, 1, 1),
                     "ct").ravel().tolist() == [-1.0, 1.0, -1.0, 1.0]
    got = normalize(image, "ct", window=(-100, 300))
    np.testing.assert_allclose(got, (np.clip(image, -100, 300) + 100) / 400 * 2 - 1, atol=1e-6)


def test_normalize_mr_zscore_over_nonzero(rng):
    image = rng.gamma(2.0, 50.0, (9, 8, 7, 2)).astype(np.float32) + 1
    image[:2] = 0
    image[:, :, -1] = 0
    image[4, 4, 3, 1] = 0  # one channel zero, the other not: still foreground
    mask = np.any(image != 0, axis=-1)
    got = normalize(image, "mr")
    for c in range(2):
        v = image[..., c][mask].astype(np.float64)
        np.testing.assert_allclose(got[..., c][mask], (v - v.mean()) / v.std(), atol=1e-5)
        assert np.all(got[..., c][~mask] == 0)
    # nnU-Net fills holes in the nonzero mask: an enclosed zero is foreground
    holed = image.copy()
    holed[4, 4, 3, :] = 0
    got = normalize(holed, "mr")
    v = holed[..., 0][mask].astype(np.float64)
    np.testing.assert_allclose(got[4, 4, 3, 0], -v.mean() / v.std(), rtol=1e-5)
    # no nonzero voxel: all voxels, z-score of a constant is 0
    assert np.all(normalize(np.zeros((3, 3, 3, 1)), "mr") == 0)


def test_normalize_labels_is_the_cm_encoding(rng):
    labels = rng.integers(0, 14, (5, 6, 7, 1)).astype(np.float32)
    np.testing.assert_array_equal(normalize(labels, "labels"), encode_input(labels[..., 0]))
    onehot = normalize(labels, "labels", input_encoding="onehot")
    np.testing.assert_array_equal(onehot, encode_input(labels[..., 0], "onehot"))
    with pytest.raises(ValueError, match="one channel"):
        normalize(np.zeros((2, 2, 2, 2)), "labels")
    with pytest.raises(ValueError, match="integer anatomical labels"):
        normalize(np.full((2, 2, 2, 1), 0.5), "labels")


def test_input_channels():
    assert input_channels(1, "labels") == 1
    assert input_channels(1, "labels", "onehot") == 14
    assert input_channels(3, "mr") == 3 and input_channels(1, "ct") == 1
    with pytest.raises(ValueError, match="`channels`"):
        input_channels(2, "labels")


# -- symmetries --------------------------------------------------------------


@pytest.mark.parametrize("spacing, n", [((1, 1, 1), 48), ((0.7, 0.7, 0.7), 48),
                                        ((1, 1, 2), 16), ((1, 2, 1), 16), ((2, 1, 1), 16),
                                        ((1, 2, 3), 8), ((1, 1.0005, 1), 48)])
def test_allowed_symmetries(spacing, n):
    allowed = allowed_symmetries(spacing)
    assert len(allowed) == n
    assert set(range(8)) <= set(allowed)  # every flip, identity permutation
    for k in allowed:
        perm = aug.SYMMETRIES[k][0]
        np.testing.assert_allclose([spacing[p] for p in perm], spacing, rtol=1e-3)
    if spacing == (1, 1.0005, 1):
        assert len(allowed_symmetries(spacing, rtol=0.0)) == 16


# -- resample ----------------------------------------------------------------


def test_resample_case_against_scipy(rng):
    image = rng.normal(size=(13, 9, 7, 2)).astype(np.float32)
    ann = {"a": (rng.random((13, 9, 7)) > 0.5).astype(np.uint8),
           "b": (rng.random((13, 9, 7)) > 0.7).astype(np.uint8)}
    out, out_ann = resample_case(image, ann, 10)
    assert out.shape == (10, 10, 10, 2) and out.dtype == np.float32
    for c in range(2):
        want = ndimage.zoom(image[..., c], (10 / 13, 10 / 9, 10 / 7), order=1)
        np.testing.assert_array_equal(out[..., c], want)
    for r, a in ann.items():
        np.testing.assert_array_equal(out_ann[r], ndimage.zoom(a, (10 / 13, 10 / 9, 10 / 7),
                                                               order=0))
        assert out_ann[r].dtype == np.uint8
    stack = np.stack(list(ann.values()))
    _, out_stack = resample_case(None, stack, 10)
    np.testing.assert_array_equal(out_stack, np.stack(list(out_ann.values())))
    single, none = resample_case(image[..., 0], None, 4, order_image=0)
    assert none is None
    np.testing.assert_array_equal(single, ndimage.zoom(image[..., 0], (4 / 13, 4 / 9, 4 / 7),
                                                       order=0))
    with pytest.raises(ValueError, match="`size`"):
        resample_case(image, None, 0)
    with pytest.raises(ValueError, match="spatial shape"):
        resample_case(image, {"a": np.zeros((3, 3, 3))}, 4)


# -- targets -----------------------------------------------------------------


@pytest.mark.parametrize("label", ["each", "soft", "majority", "staple"])
def test_case_targets_from_given_raters_only(cases, label):
    case = cases[0]
    raters = ("r1", "r3")
    stack = case.annotation_stack(raters)
    labels, rpmap = case_targets(case, raters, label=label)
    np.testing.assert_array_equal(labels, _consensus_of(stack, label))
    assert labels.dtype == (np.float32 if label == "soft" else np.uint8)
    np.testing.assert_array_equal(rpmap, reward_penalty_map(stack))
    assert not np.array_equal(rpmap, reward_penalty_map(case.annotation_stack()))
    plain = case_targets(case, raters, targets="plain", label=label)
    assert plain[1] is None
    with pytest.raises(ValueError, match="`raters`.*r9"):
        case_targets(case, ("r1", "r9"))


# -- patches -----------------------------------------------------------------


@pytest.mark.parametrize("label", ["each", "soft", "staple"])
def test_patches_are_exact_crops_with_exact_symmetries(cases, label):
    raters = {"a": ("r1", "r2", "r3"), "b": ("r2", "r1"), "c": ("r1", "r3", "r4")}
    sampler = PatchSampler(cases, raters, patch_size=P, batch_size=3, seed=3, label=label,
                           foreground_fraction=0.5, samples_per_epoch=30)
    seen = set()
    for sample in sampler.plan(0):
        case = cases[sample.case]
        x, y = sampler.patch(sample)
        want_x, want_y = _expected(case, raters[case.name], sample, sampler.locate(sample),
                                   label=label)
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
        assert sample.symmetry in allowed_symmetries(case.spacing)
        seen.add(sample.symmetry // 8)
    assert len(seen) > 1  # permutations happen where spacing allows


def test_dataset_gives_the_sampler_batches(cases, monkeypatch):
    # groups of 2 batches: the generator's reused buffers are yielded 3 times
    monkeypatch.setattr(patches, "_GROUP", 2)
    kwargs = dict(patch_size=P, batch_size=4, seed=5, samples_per_epoch=27)
    ds = make_patch_dataset(cases, _all(cases), **kwargs)
    got = [(x.numpy(), y.numpy()) for x, y in ds]
    want = list(PatchSampler(cases, _all(cases), **kwargs).batches(0))
    assert len(got) == len(want) == 6 == int(ds.cardinality())  # 27 // 4, last dropped
    assert not np.array_equal(got[0][1], got[2][1])
    for (gx, gy), (wx, wy) in zip(got, want):
        assert gx.shape == (4, P, P, P, 1) and gy.shape == (4, P, P, P, 2)
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


def test_label_inputs_onehot_and_plain_targets(label_cases):
    raters = _all(label_cases)
    kwargs = dict(patch_size=P, batch_size=2, seed=1, intensity="labels",
                  input_encoding="onehot", targets="plain", label="majority")
    sampler = PatchSampler(label_cases, raters, **kwargs)
    x, y = next(iter(make_patch_dataset(label_cases, raters, **kwargs)))
    assert x.shape == (2, P, P, P, 14) and y.shape == (2, P, P, P, 1)
    for j, sample in enumerate(sampler.plan(0)[:2]):
        case = label_cases[sample.case]
        want_x, want_y = _expected(case, raters[case.name], sample, sampler.locate(sample),
                                   intensity="labels", label="majority",
                                   input_encoding="onehot")
        np.testing.assert_array_equal(x[j], want_x)
        np.testing.assert_array_equal(y[j], want_y[..., :1])


@pytest.mark.parametrize("kind, background", [("mr", 0.0), ("labels", -1.0)])
def test_padding_of_a_small_case(tmp_path, kind, background):
    _write_case(tmp_path, "s", (5, 12, 3), (1, 1, 1), ("r1", "r2"), kind=kind, seed=4)
    cases = load_folder(tmp_path, lazy=True)
    sampler = PatchSampler(cases, None, patch_size=P, intensity=kind, foreground_fraction=0.0,
                           augment=False, samples_per_epoch=4)
    for sample in sampler.plan(0):
        corner = sampler.locate(sample)
        assert corner[0] == 0 and corner[2] == 0  # padded to exactly P
        x, y = sampler.patch(sample)
        # 5 -> 8: one voxel before, two after; 3 -> 8: two before, three after
        assert np.all(x[0] == background) and np.all(x[6:] == background)
        assert np.all(x[:, :, :2] == background) and np.all(x[:, :, 5:] == background)
        assert np.all(y[0, ..., 0] == 0) and np.all(y[0, ..., 1] == -1)
        assert np.all(y[:, :, 5:, 1] == -1)
        want_x, want_y = _expected(cases[0], ("r1", "r2"), sample, corner, intensity=kind)
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)


def test_ct_padding_is_minus_one(cases):
    sampler = PatchSampler(cases[2:], None, patch_size=P, augment=False,
                           foreground_fraction=0.0, samples_per_epoch=4)
    x, y = sampler.patch(sampler.plan(0)[0])
    # case "c" is 6 x 30 x 5: one voxel before along axis 0, one after
    assert np.all(x[0] == -1) and np.all(x[-1] == -1) and np.all(y[0, ..., 1] == -1)


def _contains_annotation(sampler, sample):
    entry = sampler.prepared(sample.case)
    crop = tuple(slice(c, c + sampler.patch_size) for c in sampler.locate(sample))
    return bool(np.any(entry.table[entry.codes[0][crop], -1] > 0))  # a reward in the RPMap


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """One case whose annotations are two small cubes, so that uniform
    patches seldom touch them."""
    root = tmp_path_factory.mktemp("sparse")
    _write_case(root, "s", (30, 26, 20), (1, 1, 1), ("r1", "r2"), ext=".nii.gz", seed=5)
    for rater, at in (("r1", (3, 4, 5)), ("r2", (20, 18, 12))):
        mask = np.zeros((30, 26, 20), np.uint8)
        mask[at[0]:at[0] + 3, at[1]:at[1] + 3, at[2]:at[2] + 2] = 1
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(root / "s" / f"annotation-{rater}.nii.gz"))
    return load_folder(root, lazy=True)


def test_foreground_fraction(sparse):
    one = PatchSampler(sparse, None, patch_size=P, foreground_fraction=1.0,
                       samples_per_epoch=200)
    for sample in one.plan(0):
        assert sample.corner is None
        x, y = one.patch(sample)
        assert np.any(y[..., 1] > 0)  # an annotated voxel in every patch
    # with 0, the fraction of patches touching an annotation is that of
    # uniform corners, counted exactly over every corner
    counts = case_targets(sparse[0], None)[1] > 0
    windows = np.lib.stride_tricks.sliding_window_view(counts, (P, P, P))
    expected = windows.any(axis=(3, 4, 5)).mean()
    zero = PatchSampler(sparse, None, patch_size=P, foreground_fraction=0.0,
                        samples_per_epoch=900)
    plan = zero.plan(0)
    assert all(s.corner is not None for s in plan)
    observed = np.mean([_contains_annotation(zero, s) for s in plan])
    assert 0.1 < expected < 0.5
    assert abs(observed - expected) < 0.07  # about 5 standard errors
    # the default: a third of the samples are foreground
    default = PatchSampler(sparse, None, patch_size=P, samples_per_epoch=900)
    plan = default.plan(0)
    share = np.mean([s.corner is None for s in plan])
    assert FOREGROUND_FRACTION == pytest.approx(1 / 3) and abs(share - 1 / 3) < 0.07
    observed = np.mean([_contains_annotation(default, s) for s in plan])
    assert abs(observed - (1 / 3 + 2 / 3 * expected)) < 0.07


def test_symmetries_follow_spacing(cases):
    sampler = PatchSampler(cases, None, patch_size=P, samples_per_epoch=300)
    used = {i: set() for i in range(len(cases))}
    for s in sampler.plan(0):
        used[s.case].add(s.symmetry)
    assert used[0] <= set(allowed_symmetries((1, 1, 2.5))) and len(used[0]) > 8
    assert len(used[1]) > 16  # isotropic: all 48 in play
    assert used[2] <= set(range(8))  # all spacings differ: flips only
    val = PatchSampler(cases, None, subset="val", patch_size=P)
    assert {s.symmetry for s in val.plan()} == {0}


def test_resample(cases, label_cases):
    raters = {"a": ("r1", "r2"), "b": ("r1",), "c": ("r2", "r4")}
    for p in (12, 8):
        sampler = PatchSampler(cases, raters, patch_size=p, resample=12, samples_per_epoch=12)
        for sample in sampler.plan(0)[:6]:
            case = cases[sample.case]
            x, y = sampler.patch(sample)
            want_x, want_y = _expected(case, raters[case.name], sample, sampler.locate(sample),
                                       size=p, resample=12)
            np.testing.assert_array_equal(x, want_x)
            np.testing.assert_array_equal(y, want_y)
    sampler = PatchSampler(label_cases, raters, patch_size=12, resample=12, intensity="labels")
    sample = sampler.plan(0)[0]
    case = label_cases[sample.case]
    x, _ = sampler.patch(sample)
    want_x, _ = _expected(case, raters[case.name], sample, (0, 0, 0), size=12, resample=12,
                          intensity="labels")
    np.testing.assert_array_equal(x, want_x)
    # case "a": 37 x 29 x 23 at (1, 1, 2.5) mm -> 12^3 at 3.08 x 2.42 x 4.79 mm
    assert sampler.symmetries[0] == tuple(range(8))
    with pytest.raises(ValueError, match="`patch_size`.*resample=12"):
        PatchSampler(cases, raters, patch_size=16, resample=12)


def test_determinism_and_epochs(cases):
    kwargs = dict(patch_size=P, batch_size=2, seed=7, samples_per_epoch=8)
    a = make_patch_dataset(cases, _all(cases), **kwargs)
    b = make_patch_dataset(cases, _all(cases), **kwargs)
    first = [y.numpy() for _, y in a]
    assert all(np.array_equal(u, v.numpy()) for u, (_, v) in zip(first, b))
    second = [y.numpy() for _, y in a]  # the next iterator is the next epoch
    assert not all(np.array_equal(u, v) for u, v in zip(first, second))
    sampler = PatchSampler(cases, _all(cases), **kwargs)
    assert all(np.array_equal(u, v) for u, (_, v) in zip(second, sampler.batches(1)))
    other = make_patch_dataset(cases, _all(cases), **{**kwargs, "seed": 8})
    assert not all(np.array_equal(u, v.numpy()) for u, (_, v) in zip(first, other))
    val = make_patch_dataset(cases, _all(cases), subset="val", patch_size=P, batch_size=3)
    once = [(x.numpy(), y.numpy()) for x, y in val]
    twice = [(x.numpy(), y.numpy()) for x, y in val]
    # every sample kept: 3 + 2 + 4 pairs in batches of 3, 3, 3
    assert [len(x) for x, _ in once] == [3, 3, 3] and int(val.cardinality()) == 3
    for (x1, y1), (x2, y2) in zip(once, twice):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    short = make_patch_dataset(cases, _all(cases), subset="test", patch_size=P, batch_size=4)
    assert [int(x.shape[0]) for x, _ in short] == [4, 4, 1]


def test_epoch_pairs_are_balanced(cases):
    sampler = PatchSampler(cases, _all(cases), patch_size=P, samples_per_epoch=18)
    plan = sampler.plan(0)
    counts = {}
    for s in plan:
        counts[(s.case, s.label)] = counts.get((s.case, s.label), 0) + 1
    assert len(counts) == 9 and set(counts.values()) == {2}  # 9 pairs, twice each
    consensus = PatchSampler(cases, _all(cases), patch_size=P, label="soft")
    assert consensus.n_samples == 3 and {s.label for s in consensus.plan(0)} == {0}


_SCRIPT = """
import hashlib, sys
import numpy as np
from cm_dataset.folder import load_folder
from cm_dataset.patches import PatchSampler
cases = load_folder(sys.argv[1], lazy=True)
s = PatchSampler(cases, None, patch_size=8, batch_size=2, seed=11, samples_per_epoch=6)
h = hashlib.sha256(repr(s.plan(0)).encode() + repr(s.plan(1)).encode())
for x, y in s.batches(2):
    h.update(x.tobytes()); h.update(y.tobytes())
print(h.hexdigest())
"""


def test_same_batches_in_another_process(cases):
    root = os.path.dirname(cases[0].directory)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, root], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED="123", TF_CPP_MIN_LOG_LEVEL="3"),
                         cwd=ROOT, check=True)
    s = PatchSampler(cases, None, patch_size=8, batch_size=2, seed=11, samples_per_epoch=6)
    h = hashlib.sha256(repr(s.plan(0)).encode() + repr(s.plan(1)).encode())
    for x, y in s.batches(2):
        h.update(x.tobytes())
        h.update(y.tobytes())
    assert out.stdout.strip().splitlines()[-1] == h.hexdigest()


@pytest.mark.parametrize("cache_cases", [1, 2])
def test_cache_bounds_the_cases_held(cases, monkeypatch, cache_cases):
    for case in cases:
        case.release()
    held, reads = [], []
    real = folder._read_voxels

    def spy(probe):
        held.append(sum(c._image is not None or c._annotations is not None for c in cases))
        reads.append(probe.path)
        return real(probe)

    monkeypatch.setattr(folder, "_read_voxels", spy)
    sampler = PatchSampler(cases, _all(cases), patch_size=P, cache_cases=cache_cases,
                           samples_per_epoch=20)
    sizes = []
    for epoch in range(3):
        loads = sampler.loads
        for _ in sampler.batches(epoch):
            sizes.append(len(sampler._cache))
        assert sampler.loads - loads <= len(cases)  # each case read once per epoch at most
    assert max(sizes) <= cache_cases
    assert max(held) <= 1  # a Case is released as soon as it is prepared
    assert all(not c.loaded for c in cases)
    assert reads  # the spy saw the reads


@pytest.mark.parametrize("kwargs, match", [
    (dict(patch_size=0), "`patch_size`.*positive integer.*patch_size=0"),
    (dict(patch_size=8.0), "`patch_size`"),
    (dict(batch_size=-1), "`batch_size`"),
    (dict(seed=-1), "`seed`"),
    (dict(intensity="pet"), "`intensity`.*'labels', 'ct', 'mr'.*intensity='pet'"),
    (dict(intensity="mr", window=(0, 1)), "`window`.*intensity='mr'"),
    (dict(window=(100, -100)), "`window`.*low < high"),
    (dict(input_encoding="onehot"), "`input_encoding`.*intensity='ct'"),
    (dict(targets="legacy"), "`targets`"),
    (dict(label="mean"), "`label`"),
    (dict(subset="dev"), "`subset`"),
    (dict(foreground_fraction=1.5), "`foreground_fraction`.*\\[0, 1\\]"),
    (dict(augment="yes"), "`augment`"),
    (dict(cache_cases=0), "`cache_cases`"),
    (dict(resample=0), "`resample`"),
    (dict(samples_per_epoch=1, batch_size=2), "`samples_per_epoch`.*batch_size=2"),
    (dict(raters={"a": ("r1",), "b": ("r1",)}), "`raters`.*entry for case 'c'"),
    (dict(raters={"a": ("r1", "r7"), "b": ("r1",), "c": ("r1",)}), "`raters`.*'a'.*r7"),
    (dict(raters={"a": (), "b": ("r1",), "c": ("r1",)}), "`raters`.*none left"),
    (dict(raters={"a": ("r1", "r1"), "b": ("r1",), "c": ("r1",)}), "`raters`.*distinct"),
    (dict(raters=[("r1",)]), "`raters`.*dict"),
])
def test_argument_errors(cases, kwargs, match):
    kwargs = {"raters": _all(cases), **kwargs}
    raters = kwargs.pop("raters")
    with pytest.raises(ValueError, match=match):
        make_patch_dataset(cases, raters, **kwargs)


def test_case_errors(cases, tmp_path):
    with pytest.raises(ValueError, match="`cases`.*non-empty list"):
        make_patch_dataset([], {})
    with pytest.raises(ValueError, match="`cases`.*distinct names"):
        make_patch_dataset([cases[0], cases[0]], None)
    (tmp_path / "two").mkdir()
    for name in ("image_0000", "image_0001", "annotation-r1"):
        np.save(tmp_path / "two" / f"{name}.npy", np.zeros((9, 9, 9), np.uint8))
    two = load_folder(tmp_path, lazy=True)
    assert two[0].channels == 2
    with pytest.raises(ValueError, match="`cases`.*same number of image channels"):
        make_patch_dataset(cases + two, None)
    with pytest.raises(ValueError, match="`intensity`.*multi-channel"):
        make_patch_dataset(two, None, intensity="labels")
    with pytest.raises(ValueError, match="`spacing`"):
        allowed_symmetries((1, 0, 1))
    assert patches.SUBSETS == ("train", "val", "test")


def test_fit_two_epochs(cases):
    import keras

    import keras_seglosses

    ds = make_patch_dataset(cases, _all(cases), patch_size=P, batch_size=2, samples_per_epoch=4)
    model = keras.Sequential([keras.Input((P, P, P, 1)),
                              keras.layers.Conv3D(1, 1, activation="sigmoid")])
    model.compile(optimizer="adam", loss=keras_seglosses.RewardPenaltyDice())
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))
