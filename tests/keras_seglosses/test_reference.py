"""keras_seglosses.reference against brute-force NumPy definitions."""

import itertools

import numpy as np
import pytest

from keras_seglosses import reference


def brute_distance(fg, spacing):
    pts = np.argwhere(fg) * spacing
    out = np.full(fg.shape, np.inf)
    for idx in itertools.product(*map(range, fg.shape)):
        if len(pts):
            out[idx] = np.sqrt((((np.asarray(idx) * spacing) - pts) ** 2).sum(-1)).min()
    return out


def brute_surface(fg):
    padded = np.pad(fg, 1)
    out = np.zeros_like(fg)
    for idx in zip(*np.nonzero(fg)):
        p = np.asarray(idx) + 1
        for axis in range(fg.ndim):
            for step in (-1, 1):
                q = p.copy()
                q[axis] += step
                out[idx] |= not padded[tuple(q)]
    return out


@pytest.mark.parametrize("shape,spacing", [((2, 5, 6), (1.0, 2.0)), ((2, 4, 5, 3), (0.5, 1.0, 1.5))])
def test_reference_matches_brute_force(rng, shape, spacing):
    fg = rng.random(shape) < 0.3
    fg[0] = False
    fg[1].flat[0] = True
    d = reference.distance_transform(fg, spacing)
    for b in range(shape[0]):
        np.testing.assert_allclose(d[b], brute_distance(fg[b], np.asarray(spacing)), rtol=1e-6)
        np.testing.assert_array_equal(reference.surface(fg)[b], brute_surface(fg[b]))
    s = reference.signed_distance(fg, spacing)
    assert (s[0] == 0).all()
    inside = brute_distance(~fg[1], np.asarray(spacing))
    np.testing.assert_allclose(s[1], np.where(fg[1], -inside, d[1]), rtol=1e-6)
    dist, surf = reference.surface_distances(fg, fg[::-1], spacing)
    np.testing.assert_array_equal(surf, reference.surface(fg))
    with pytest.raises(ValueError, match="`spacing`"):
        reference.distance_transform(fg, spacing=(1.0,))
    with pytest.raises(ValueError, match="`target`"):
        reference.surface_distances(fg, fg[:, :-1], spacing)
