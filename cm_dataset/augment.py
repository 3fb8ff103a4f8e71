"""Exact flips and axis permutations of a cube: the 48 symmetries.

The original training code augmented every training volume with 8
mirrorings (flip any subset of the 3 axes) times 27 rotation triples (90,
180 or 270 degrees in each of the three axis planes), materializing 216
copies with `scipy.ndimage.rotate` before training [000, Sec. V]. On a
cube every rotation by a multiple of 90 degrees, and every mirroring, is a
reversal and transposition of axes: the whole set lies in the group of 48
symmetries of the cube (6 axis permutations x 8 axis reversals), and only 48
of the 216 variants differ (`original216_indices`). Here a symmetry is
applied exactly, without interpolation, on the fly, and identically to the
input, the labels and the reward-penalty map.

Symmetry `k` (0..47) is `(PERMUTATIONS[k // 8], FLIPS[k % 8])`: transpose the
three spatial axes by the permutation, then reverse the output axes whose
flag is 1. Trailing (channel) axes are left alone.
"""

import itertools

import numpy as np

__all__ = [
    "N_SYMMETRIES",
    "SYMMETRIES",
    "apply",
    "inverse",
    "compose",
    "original216_indices",
    "apply_tf",
    "AUGMENT_MODES",
]

PERMUTATIONS = tuple(itertools.permutations(range(3)))
FLIPS = tuple(itertools.product((0, 1), repeat=3))
#: `(permutation, flips)` of each of the 48 symmetries.
SYMMETRIES = tuple((p, f) for p in PERMUTATIONS for f in FLIPS)
N_SYMMETRIES = len(SYMMETRIES)
#: Values of `make_dataset(augment=...)`.
AUGMENT_MODES = ("random", "all48", "original216", None)


def _check_index(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < N_SYMMETRIES:
        raise ValueError(
            f"Invalid value for argument `k`. Expected an integer symmetry index in "
            f"0..{N_SYMMETRIES - 1}. Received: k={k!r}"
        )
    return int(k)


def apply(volume, k):
    """Apply symmetry `k` to a NumPy volume (a view, no copy).

    Args:
        volume: array whose first three axes are spatial (equal sizes);
            further axes (channels) are carried along.
        k: int, 0..47. 0 is the identity.

    Returns:
        array of the same shape.

    Example:

    >>> import numpy as np
    >>> v = np.arange(8).reshape(2, 2, 2)
    >>> apply(v, 0).tolist() == v.tolist(), apply(v, 1)[0, 0].tolist()
    (True, [1, 0])
    """
    perm, flips = SYMMETRIES[_check_index(k)]
    v = np.asarray(volume)
    out = np.transpose(v, perm + tuple(range(3, v.ndim)))
    return out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


_PROBE = np.arange(27).reshape(3, 3, 3)
_SIGNATURES = {apply(_PROBE, k).tobytes(): k for k in range(N_SYMMETRIES)}


def _identify(cube):
    """Index of the symmetry that maps the probe to `cube` (a 3x3x3 array)."""
    return _SIGNATURES[np.ascontiguousarray(cube).tobytes()]


def compose(k2, k1):
    """Index of "apply `k1`, then `k2`"."""
    return _identify(apply(apply(_PROBE, _check_index(k1)), _check_index(k2)))


def inverse(k):
    """Index of the symmetry that undoes `k`: `apply(apply(v, k), inverse(k)) == v`.

    Example:

    >>> import numpy as np
    >>> v = np.arange(27).reshape(3, 3, 3)
    >>> bool((apply(apply(v, 13), inverse(13)) == v).all())
    True
    """
    k = _check_index(k)
    return next(j for j in range(N_SYMMETRIES) if compose(j, k) == 0)


def original216_indices():
    """The original's 216 augmentation variants as symmetry indices.

    The released code mirrored every training volume in the 8 ways of
    flipping any subset of the three axes, then rotated each mirrored copy
    by every triple of 90, 180 and 270 degrees: first in the plane of axes
    (0, 1), then (0, 2), then (1, 2) (`scipy.ndimage.rotate`), and stacked
    the 27 rotations of all mirrored copies [000, Sec. V]. Variant
    `r * 8 + m` here is its rotation triple `r = 9a + 3b + c` (angles
    `90 * (a + 1)`, `90 * (b + 1)`, `90 * (c + 1)`) of mirroring `m` (bit
    `i` of `m` flips axis `i`), its order in the original's arrays.
    Quarter-turn rotations of a cube are exact transpositions and reversals,
    so every variant is one of the 48 symmetries, and only 48 distinct ones
    occur.

    Returns:
        tuple of 216 ints in 0..47.

    Example:

    >>> idx = original216_indices()
    >>> len(idx), len(set(idx))
    (216, 48)
    """
    out = []
    for a, b, c in itertools.product(range(3), repeat=3):
        for m in range(8):
            flip = tuple(slice(None, None, -1) if m >> i & 1 else slice(None) for i in range(3))
            v = _PROBE[flip]
            # scipy.ndimage.rotate by +90 degrees in the plane (i, j) is
            # np.rot90(k=1, axes=(i, j)).
            v = np.rot90(v, a + 1, axes=(0, 1))
            v = np.rot90(v, b + 1, axes=(0, 2))
            v = np.rot90(v, c + 1, axes=(1, 2))
            out.append(_identify(v))
    return tuple(out)


def apply_tf(volume, k):
    """TensorFlow twin of `apply` for use inside `tf.data` pipelines.

    Built from `tf.transpose` and `tf.reverse` only (no Keras ops: they fail
    inside `tf.data` under the JAX backend), exact, with a static output
    shape. `k` may be a scalar tensor: the permutation and the axes to
    reverse are looked up, so one transpose and one reverse serve all 48
    (no branches; a 48-way `tf.switch_case` is several times slower inside
    `tf.data`).

    Args:
        volume: tensor `(S, S, S, ...)`.
        k: int or scalar int tensor, 0..47.

    Returns:
        tensor of the same shape and dtype.
    """
    import tensorflow as tf

    rank = volume.shape.rank
    rest = list(range(3, rank))
    if isinstance(k, (int, np.integer)):
        perm, flips = SYMMETRIES[_check_index(k)]
        out = tf.transpose(volume, list(perm) + rest)
        axes = [i for i in range(3) if flips[i]]
        return tf.reverse(out, axes) if axes else out
    k = tf.cast(k, tf.int32)
    perms = tf.constant([list(p) + rest for p, _ in SYMMETRIES], tf.int32)
    flips = tf.constant([[bool(v) for v in f] for _, f in SYMMETRIES], tf.bool)
    out = tf.transpose(volume, tf.gather(perms, k))
    # The axes to reverse, 0 to 3 of them: a dynamic-length axis list.
    out = tf.reverse(out, tf.boolean_mask(tf.range(3), tf.gather(flips, k)))
    return tf.ensure_shape(out, volume.shape)
