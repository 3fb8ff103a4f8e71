"""Region-wise maps [002, Eq. 3-4, Sec. 3.2] against scipy's exact Euclidean
distance transform."""

import keras
import numpy as np
import pytest
from _references import np_region_map
from scipy import ndimage

import keras_seglosses as ks


# ------------------------------------------------------------ scipy reference
def _two_class(y):
    y = (np.asarray(y) > 0.5).astype("float64")
    return np.concatenate([1 - y, y], -1) if y.shape[-1] == 1 else y


def scipy_rrw(y, spacing=None):
    """[002, Eq. 4]; absent class 1, full class -1 (the documented choices)."""
    return np_region_map(_two_class(y), "rrw", spacing)


def scipy_boundary(y, spacing=None):
    """[002, Eq. 3]; absent and full classes 0."""
    return np_region_map(_two_class(y), "boundary", spacing)


def one_hot(rng, shape, absent=None, full_sample=None):
    """Blobby one-hot labels (smoothed noise, argmax), optionally with one
    class absent from sample 0 and one sample filled by class 0."""
    c = shape[-1]
    noise = ndimage.uniform_filter(rng.random(shape), size=(1,) + (3,) * (len(shape) - 2) + (1,))
    if absent is not None:
        noise[0, ..., absent] = -1.0
    labels = np.argmax(noise, -1)
    if full_sample is not None:
        labels[full_sample] = 0
    return np.eye(c, dtype="float32")[labels]


def np_(x):
    return keras.ops.convert_to_numpy(x)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize(
    "shape, spacing",
    [((3, 9, 7, 3), None), ((3, 9, 7, 3), (1.0, 2.5)), ((2, 5, 6, 4, 4), (2.0, 1.0, 0.5))],
)
def test_rrw_and_boundary_match_scipy(rng, shape, spacing):
    y = one_hot(rng, shape, absent=1, full_sample=1)
    z = np_(ks.rrw_map(y, spacing))
    np.testing.assert_allclose(z, scipy_rrw(y, spacing), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np_(ks.boundary_map(y, spacing)), scipy_boundary(y, spacing), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(np_(ks.ac_map(y)), 1.0 - y)


def test_rrw_properties(rng):
    y = one_hot(rng, (3, 8, 8, 3), absent=2, full_sample=2)
    z = np_(ks.rrw_map(y))
    assert np.all(np.isfinite(z))
    inside = y > 0.5
    # inside the class in [-1, 0), each present class reaches -1, 1 elsewhere
    assert np.all(z[inside] >= -1.0) and np.all(z[inside] < 0.0)
    np.testing.assert_array_equal(z[~inside], 1.0)
    lowest = np.min(np.where(inside, z, 0.0), axis=(1, 2))
    np.testing.assert_array_equal(lowest, np.where(inside.any((1, 2)), -1.0, 0.0))
    # absent class: 1 everywhere; full class: -1 everywhere
    np.testing.assert_array_equal(z[0, ..., 2], 1.0)
    np.testing.assert_array_equal(z[2, ..., 0], -1.0)
    np.testing.assert_array_equal(z[2, ..., 1:], 1.0)


def test_boundary_map_of_absent_or_full_class_is_zero(rng):
    y = one_hot(rng, (3, 6, 6, 3), absent=2, full_sample=2)
    z = np_(ks.boundary_map(y))
    np.testing.assert_array_equal(z[0, ..., 2], 0.0)
    np.testing.assert_array_equal(z[2], 0.0)
    assert np.all(np.isfinite(z))


@pytest.mark.parametrize("fn", [ks.rrw_map, ks.boundary_map, ks.ac_map])
def test_binary_labels_are_two_classes(rng, fn):
    y = (rng.random((2, 6, 7, 1)) > 0.6).astype("float32")
    y[1] = 0.0  # empty foreground
    two = np.concatenate([1 - y, y], -1)
    got = np_(fn(y))
    assert got.shape == (2, 6, 7, 2)
    np.testing.assert_allclose(got, np_(fn(two)), rtol=1e-6)
    assert np.all(np.isfinite(got))


def test_soft_labels_are_binarized(rng):
    y = one_hot(rng, (2, 6, 6, 3))
    soft = np.where(y > 0.5, 0.8, 0.1).astype("float32")
    np.testing.assert_allclose(np_(ks.rrw_map(soft)), np_(ks.rrw_map(y)))
    np.testing.assert_allclose(np_(ks.ac_map(soft)), 1.0 - y)


@pytest.mark.backends
def test_compiled_maps_match_scipy(rng, jit):
    y = one_hot(rng, (2, 4, 6, 5, 3), absent=0)
    spacing = (1.0, 1.5, 2.0)
    rrw, boundary = jit(lambda t: (ks.rrw_map(t, spacing), ks.boundary_map(t, spacing)))(y)
    np.testing.assert_allclose(np_(rrw), scipy_rrw(y, spacing), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(boundary), scipy_boundary(y, spacing), rtol=1e-5, atol=1e-5)


@pytest.mark.backends
def test_maps_carry_no_gradient(rng):
    y = one_hot(rng, (1, 4, 4, 3)).astype("float32")

    def total(t):
        return keras.ops.sum(ks.rrw_map(t) + ks.boundary_map(t) + ks.ac_map(t))

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grad = np.asarray(jax.jit(jax.grad(total))(y))
    elif backend == "tensorflow":
        import tensorflow as tf

        v = tf.constant(y)
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = total(v)
        grad = tape.gradient(out, v)
        grad = np.zeros_like(y) if grad is None else grad.numpy()
    else:
        import torch

        t = torch.tensor(y, requires_grad=True)
        out = total(t)
        assert not out.requires_grad
        grad = np.zeros_like(y)
    np.testing.assert_array_equal(grad, 0.0)


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match="channels_last labels"):
        ks.rrw_map(np.zeros((4, 4)))
