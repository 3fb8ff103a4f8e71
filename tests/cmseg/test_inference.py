"""`cmseg.inference`: sliding windows, symmetric test-time augmentation and
connected-component post-processing against their definitions."""

import itertools

import keras
import numpy as np
import pytest
from scipy import ndimage

from cmseg import inference


def _pointwise_model(channels=2, classes=1, seed=0):
    """A fully convolutional model whose output at a voxel depends on that
    voxel only (1x1x1 convolutions): equal under any crop and symmetry."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((None, None, None, channels))
    h = keras.layers.Conv3D(4, 1, activation="relu")(x)
    return keras.Model(x, keras.layers.Conv3D(classes, 1, activation="sigmoid")(h))


def test_sliding_window_equals_the_whole_volume_for_a_pointwise_model(rng):
    model = _pointwise_model()
    volume = rng.random((37, 29, 22, 2)).astype("f4")  # odd sizes, one below the patch
    whole = model.predict(volume[None], verbose=0)[0]
    for overlap, weighting in ((0.5, "gaussian"), (0.25, "constant"), (0.0, "gaussian")):
        got = inference.sliding_window(lambda b: model.predict(b, verbose=0), volume,
                                       (16, 16, 24), overlap=overlap, weighting=weighting,
                                       batch_size=3)
        assert got.shape == whole.shape
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)


def test_window_starts_cover_the_axis_with_the_overlap():
    for size, patch, overlap in ((77, 32, 0.5), (91, 32, 0.5), (53, 32, 0.25), (64, 64, 0.5),
                                 (20, 32, 0.5), (100, 30, 0.0)):
        starts = inference.window_starts(size, patch, overlap)
        assert starts[0] == 0 and starts[-1] == max(0, size - patch)
        covered = np.zeros(max(size, patch), bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered[:size].all()
        gaps = np.diff(starts)
        assert (gaps <= patch * (1 - overlap) + 1e-9).all()


def test_gaussian_importance_peaks_at_the_centre_and_stays_positive():
    w = inference.gaussian_importance((9, 12, 5))
    assert w.shape == (9, 12, 5) and w.max() == 1.0 and (w > 0).all()
    assert w[4, 5:7, 2].min() == pytest.approx(w.max(), rel=0.05)
    expected = np.exp(-0.5 * ((np.arange(9) - 4) / (9 / 8)) ** 2)
    np.testing.assert_allclose(w[:, 5, 2] / w[4, 5, 2], expected / expected[4], rtol=0.05)


def test_symmetries_and_their_mean_for_an_exactly_symmetric_model(rng):
    assert len(inference.symmetries(3, "flips")) == 8
    assert len(inference.symmetries(3, "all")) == 48
    assert len(inference.symmetries(3, "all", spacing=(1.0, 1.0, 2.5))) == 16  # 2 perms x 8
    assert len(inference.symmetries(2, "none")) == 1
    model = _pointwise_model(channels=1)
    volume = rng.random((12, 10, 8, 1)).astype("f4")
    plain = model.predict(volume[None], verbose=0)[0]
    for mode in ("flips", "all"):
        got = inference.symmetric_mean(lambda v: model.predict(v[None], verbose=0)[0], volume,
                                       mode=mode)
        np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-6)
    # A model that is not symmetric: the mean is the mean of the transformed copies.
    def lopsided(v):
        return np.cumsum(v, axis=0)

    vol = rng.random((4, 5, 6, 1))
    by_hand = np.mean([np.flip(lopsided(np.flip(vol, f)), f) if f else lopsided(vol)
                       for n in range(4) for f in itertools.combinations(range(3), n)], axis=0)
    np.testing.assert_allclose(inference.symmetric_mean(lopsided, vol, "flips"), by_hand,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="--tta"):
        inference.symmetries(3, "rot90")


def test_largest_component_and_small_islands_against_scipy_labels(rng):
    mask = ndimage.binary_opening(rng.random((30, 31, 29)) > 0.62)
    mask[0, 0, 0], mask[1, 1, 1] = True, True  # joined only at a corner
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    assert n > 2
    largest = labels == 1 + int(np.argmax(sizes))
    np.testing.assert_array_equal(inference.keep_largest_component(mask), largest)
    six, _ = ndimage.label(mask)
    assert six.max() >= n  # 6-connectivity splits at least as much
    kept = inference.remove_small_components(mask, 20)
    expected = np.isin(labels, 1 + np.flatnonzero(sizes >= 20))
    np.testing.assert_array_equal(kept, expected)
    assert not inference.keep_largest_component(np.zeros((4, 4, 4))).any()
    with pytest.raises(ValueError, match="connectivity 8"):
        inference.keep_largest_component(mask, connectivity=8)


@pytest.mark.parametrize("pad_value", [-1.0, 0.0, [-1.0, 0.5]])
def test_sliding_window_pads_with_the_given_value(pad_value):
    """A volume smaller than the window is padded with the input value of
    "outside" (air, -1, for CT; per channel for one-hot labels), not 0: a
    model that averages its window sees the padding."""
    c = np.size(pad_value)
    volume = np.ones((4, 3, 5, c), np.float32)

    def window_mean(batch):
        return np.broadcast_to(batch.mean(axis=(1, 2, 3), keepdims=True), batch.shape)

    out = inference.sliding_window(window_mean, volume, (6, 6, 6), pad_value=pad_value)
    pad = np.broadcast_to(np.asarray(pad_value, np.float32), (c,))
    want = (60 + (216 - 60) * pad) / 216
    assert out.shape == volume.shape
    np.testing.assert_allclose(out, np.broadcast_to(want, out.shape), rtol=1e-6)
