"""The 48 exact cube symmetries, the original's 216 variants, TF twin."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from cm_dataset import augment as aug


@pytest.fixture(scope="module")
def cube():
    return np.random.default_rng(0).integers(0, 1000, (6, 6, 6))


def _key(v):
    return np.ascontiguousarray(v).tobytes()


def _closure(cube):
    """Reference group: everything reachable from `cube` by np.rot90 quarter
    turns in the three planes and np.flip of axis 0 (a breadth-first search,
    independent of the module's enumeration)."""
    moves = [
        lambda v: np.rot90(v, 1, (0, 1)),
        lambda v: np.rot90(v, 1, (0, 2)),
        lambda v: np.rot90(v, 1, (1, 2)),
        lambda v: np.flip(v, 0),
    ]
    seen, frontier = {_key(cube): cube}, [cube]
    while frontier:
        nxt = []
        for v in frontier:
            for m in moves:
                w = m(v)
                if _key(w) not in seen:
                    seen[_key(w)] = w
                    nxt.append(w)
        frontier = nxt
    return set(seen)


def test_48_distinct_symmetries_are_the_whole_group(cube):
    ours = {_key(aug.apply(cube, k)) for k in range(aug.N_SYMMETRIES)}
    assert len(ours) == 48
    assert ours == _closure(cube)
    np.testing.assert_array_equal(aug.apply(cube, 0), cube)


def test_inverse_and_compose(cube):
    for k in range(48):
        np.testing.assert_array_equal(aug.apply(aug.apply(cube, k), aug.inverse(k)), cube)
        for j in (5, 17, 40):
            np.testing.assert_array_equal(
                aug.apply(aug.apply(cube, k), j), aug.apply(cube, aug.compose(j, k))
            )


def test_channels_are_carried(cube):
    stacked = np.stack([cube, -cube], axis=-1)
    for k in (7, 29):
        out = aug.apply(stacked, k)
        np.testing.assert_array_equal(out[..., 0], aug.apply(cube, k))
        np.testing.assert_array_equal(out[..., 1], -aug.apply(cube, k))


def test_original216_only_48_distinct(cube):
    """Materialize the original's variants as its code did: mirror in every
    subset of the axes, then `scipy.ndimage.rotate` (linear interpolation,
    as the original) by 90, 180 or 270 degrees in the planes (0, 1), (0, 2),
    (1, 2) in turn. Only 48 differ, and variant `r * 8 + m` is the symmetry
    `original216_indices()` names for it."""
    idx = aug.original216_indices()
    assert len(idx) == 216 and len(set(idx)) == 48
    variants = []
    for angles in itertools.product((90, 180, 270), repeat=3):
        for m in range(8):
            v = cube
            for axis in range(3):
                if m >> axis & 1:
                    v = np.flip(v, axis)
            for angle, axes in zip(angles, ((0, 1), (0, 2), (1, 2))):
                v = ndimage.rotate(v, angle, axes=axes, reshape=True, order=1, mode="nearest")
            variants.append(v)
    assert len({_key(v) for v in variants}) == 48
    for j, v in enumerate(variants):
        np.testing.assert_array_equal(aug.apply(cube, idx[j]), v)


def test_apply_tf_matches_numpy(cube):
    vol = np.stack([cube, cube * 2], axis=-1).astype(np.int32)
    fn = tf.function(lambda v, k: aug.apply_tf(v, k))
    for k in range(48):
        want = aug.apply(vol, k)
        np.testing.assert_array_equal(fn(tf.constant(vol), tf.constant(k)).numpy(), want)
        np.testing.assert_array_equal(aug.apply_tf(tf.constant(vol), k).numpy(), want)
    out = fn(tf.constant(vol), tf.constant(3))
    assert out.shape == vol.shape


@pytest.mark.parametrize("k", [-1, 48, 1.0, True])
def test_bad_index(cube, k):
    with pytest.raises(ValueError, match="argument `k`"):
        aug.apply(cube, k)
