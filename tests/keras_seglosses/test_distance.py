"""keras_seglosses.ops.distance against scipy.ndimage, on every backend and
compiled (jax.jit / XLA)."""

import numpy as np
import pytest
from keras import ops
from _references import np_surface
from scipy import ndimage

from keras_seglosses.ops import distance_transform, signed_distance, surface, surface_distances
from keras_seglosses.ops.distance import _squared_distance, check_spacing, spacing_argument

CASES = [
    ((2, 9, 13), (0.7, 1.9)),
    ((2, 1, 8), (1.0, 1.0)),
    ((2, 8, 11, 9), (0.6, 1.3, 2.5)),
]


def edt(fg, spacing):
    """scipy's transform per sample; +inf where a sample has no foreground."""
    return np.stack(
        [
            ndimage.distance_transform_edt(~m, sampling=spacing)
            if m.any()
            else np.full(m.shape, np.inf)
            for m in fg
        ]
    )


def border(fg):
    return np.stack([np_surface(m) for m in fg])


def random_masks(rng, shape, density):
    m = rng.random(shape) < density
    m[-1] = False  # one empty sample
    return m


@pytest.mark.backends
@pytest.mark.parametrize("shape,spacing", CASES)
def test_distance_transform_matches_scipy_compiled(jit, rng, shape, spacing):
    fg = random_masks(rng, shape, 0.08)
    fn = jit(lambda m: distance_transform(m, spacing))
    got = ops.convert_to_numpy(fn(fg.astype("float32")))
    want = edt(fg, spacing)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-5, atol=1e-5)
    assert np.isinf(got[-1]).all()


@pytest.mark.backends
def test_distance_transform_input_dtypes(rng):
    fg = rng.random((2, 6, 7, 5)) < 0.1
    fg[:, 0, 0, 0] = True
    want = edt(fg, (1.0, 2.0, 0.5))
    for x in (fg, fg.astype("int32"), fg.astype("float32") * 0.9, fg.astype("float16")):
        got = ops.convert_to_numpy(distance_transform(x, spacing=(1.0, 2.0, 0.5)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_distance_transform_long_axes(rng):
    # Non-power-of-two lengths exercise the doubling pass's last step.
    fg = np.zeros((1, 37, 3, 21), bool)
    fg[0, 36, 2, 20] = True
    got = ops.convert_to_numpy(distance_transform(fg, spacing=2.0))
    np.testing.assert_allclose(got, edt(fg, (2.0, 2.0, 2.0)), rtol=1e-6)


@pytest.mark.backends
@pytest.mark.parametrize(
    "radius,spacing",
    [(0.0, (0.6, 1.3, 0.6)), (1.2, (0.6, 1.3, 0.6)), (2.5, (0.6, 1.3, 0.6)), (0.3, (0.1, 0.25, 0.1))],
)
def test_radius_limited_transform_is_exact_up_to_radius(jit, rng, radius, spacing):
    # What NSD relies on: distances <= radius exact, all others > radius.
    # Voxels exactly at the radius must be found: 1.2 = 2 x 0.6, and
    # 0.3 = 3 x 0.1 although 0.3 / 0.1 rounds below 3.
    fg = random_masks(rng, (3, 17, 19, 21), 0.01)
    got = ops.convert_to_numpy(jit(lambda m: ops.sqrt(_squared_distance(m, spacing, radius)))(fg))
    want = edt(fg, spacing)
    near = want <= radius * (1 + 1e-6)
    assert near[:-1].any() and (~near[:-1]).any()
    np.testing.assert_allclose(got[near], want[near], rtol=1e-6, atol=1e-6)
    assert (got[~near] > radius).all()
    full = ops.convert_to_numpy(ops.sqrt(_squared_distance(ops.convert_to_tensor(fg), spacing)))
    np.testing.assert_array_equal(got[near], full[near])  # bitwise: NSD compares with <=


@pytest.mark.backends
@pytest.mark.parametrize("shape,spacing", CASES[1:])
def test_signed_distance_compiled(jit, rng, shape, spacing):
    fg = rng.random(shape) < 0.4
    fg[0] = True  # full sample
    got = ops.convert_to_numpy(jit(lambda m: signed_distance(m, spacing))(fg))
    for b, m in enumerate(fg):
        if m.any() and not m.all():
            want = np.where(
                m,
                -ndimage.distance_transform_edt(m, sampling=spacing),
                ndimage.distance_transform_edt(~m, sampling=spacing),
            )
        else:
            want = np.zeros(m.shape)
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)


@pytest.mark.backends
@pytest.mark.parametrize("shape", [(2, 6, 7), (2, 5, 6, 7)])
def test_surface_matches_scipy_erosion_with_border(jit, rng, shape):
    fg = rng.random(shape) < 0.7  # dense: many voxels touch the border
    got = ops.convert_to_numpy(jit(surface)(fg))
    np.testing.assert_array_equal(got, border(fg).astype("float32"))
    full = np.ones(shape, bool)
    # A full volume: only its border layer is surface (outside is background).
    inner = np.zeros(shape, bool)
    inner[(slice(None),) + (slice(1, -1),) * (len(shape) - 1)] = True
    np.testing.assert_array_equal(ops.convert_to_numpy(surface(full)), (~inner).astype("float32"))


@pytest.mark.backends
def test_surface_distances_directed(jit, rng):
    spacing = (1.5, 0.8, 1.0)
    a = rng.random((3, 8, 9, 7)) < 0.3
    b = rng.random((3, 8, 9, 7)) < 0.3
    b[2] = False
    d, m = jit(lambda x, y: surface_distances(x, y, spacing))(a, b)
    d, m = ops.convert_to_numpy(d), ops.convert_to_numpy(m)
    np.testing.assert_array_equal(m, border(a).astype("float32"))
    np.testing.assert_allclose(d[:2], edt(border(b[:2]), spacing), rtol=1e-5, atol=1e-5)
    assert np.isinf(d[2]).all()


def test_bad_input_names_argument():
    m = np.zeros((1, 4, 4, 4))
    with pytest.raises(ValueError, match="`spacing`.*3 positive"):
        distance_transform(m, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="`spacing`"):
        signed_distance(m, spacing=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="`mask`.*Received: mask.shape=\\(4, 4\\)"):
        distance_transform(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="`mask`"):
        surface(np.zeros((1, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="`target`"):
        surface_distances(m, np.zeros((1, 4, 4)))


def test_spacing_argument_plain_values_or_one_error():
    # `__init__`-time validation, before the number of spatial axes is known.
    assert spacing_argument(None) is None
    assert spacing_argument(2) == 2.0 and type(spacing_argument(np.float32(2))) is float
    assert spacing_argument((1, 2)) == [1.0, 2.0]
    assert spacing_argument(np.array([0.5, 1, 2])) == [0.5, 1.0, 2.0]
    assert check_spacing(2, 3) == (2.0, 2.0, 2.0) and check_spacing([1, 2], 2) == (1.0, 2.0)
    for bad in (0, -1.0, np.inf, np.nan, True, "1.5", [], [1.0], [1, 2, 3, 4], (1, 0), (1, True),
                [1.0, np.inf], [[1.0, 2.0]], {"x": 1}):
        with pytest.raises(ValueError, match=r"^Invalid value for argument `spacing`\. Expected None, "
                           r"a positive number, or a sequence of 2 or 3 positive numbers.*Received: "):
            spacing_argument(bad)


def test_every_constructor_validates_spacing_the_same_way():
    import keras_seglosses as ks
    from keras_seglosses.metrics import ASD, HD95, NSD

    for cls in (ks.Boundary, ks.HausdorffDT, ks.DistancePenalizedCrossEntropy, ks.RegionWise,
                ks.DiceBoundary, ks.DiceHD, HD95, NSD, ASD):
        assert cls(spacing=(1, 2)).get_config()["spacing"] == [1.0, 2.0], cls.__name__
        with pytest.raises(ValueError, match=r"`spacing`.*2 or 3 positive.*spacing=\[1, 0\]"):
            cls(spacing=[1, 0])


def test_no_gradient_needed_but_safe(rng):
    # Distances are constants for autodiff: used inside losses they must not
    # inject NaN gradients (the +inf of empty samples included).
    x = ops.convert_to_tensor(rng.random((2, 5, 5)).astype("float32"))
    d = distance_transform(x)
    assert ops.convert_to_numpy(ops.sum(ops.where(ops.isinf(d), 0.0, d))) >= 0
