"""Exact order statistics of non-negative float32 values, found by counting.

Non-negative IEEE float32 values order like their bit patterns read as int32,
so a cut point of a monotone count over the values (the k-th largest value,
a percentile, the value where a cumulative weight reaches a fraction) is an
integer search over those bit patterns. A sort of every voxel costs several
times more under XLA on CPU (10-30x for the TopK loss), and sorting only part
of a volume (the surface voxels) needs dynamic shapes, which `jit` refuses.

Used by the TopK loss (`keras_seglosses.losses.distribution`) and the
percentile Hausdorff distances (`keras_seglosses.metrics`).
"""

import keras
from keras import ops

__all__ = ["search_bits", "default_ways", "INF_BITS"]

INF_BITS = 0x7F800000  # the bit pattern of float32 +inf

# One above +inf: the search interval is [0, _END), so every non-negative
# float32, +inf included, can be the answer.
_END = INF_BITS + 1


def _passes(ways):
    """Passes that shrink `[0, _END)` to one integer, `ways` parts a pass."""
    span, passes = _END, 0
    while span > 1:
        span, passes = -(-span // ways), passes + 1
    return passes


def default_ways():
    """4 under XLA (TensorFlow, JAX), where the three evaluations of a pass
    fuse into one read of the data: 16 passes instead of 31. 2 (bisection)
    on torch, which runs eagerly, one kernel per operation and evaluation,
    so that 31 passes of one evaluation cost less than 16 of three."""
    return 2 if keras.backend.backend() == "torch" else 4


def search_bits(predicate, shape=(), carry=(), ways=None):
    """The largest int32 `t` in `[0, INF_BITS]` at which `predicate` holds.

    `predicate` must be monotone in `t`: true up to the answer, false beyond
    it, independently for each element of `shape`. Each pass evaluates it at
    `ways - 1` cuts that split the remaining interval into `ways` parts
    (16 passes for 4 parts, 31 for a bisection).

    The search is exact and runs as a `fori_loop` of static length, so it
    compiles under XLA and `jax.jit` on any shape, including a batch axis
    of unknown size. It never views int32 as float32 itself: TensorFlow's
    `ops.view` needs a static last axis, so callers convert through one.

    Args:
        predicate: `predicate(cuts, carry)` with `cuts` a list of `ways - 1`
            int32 tensors of `shape`, increasing; it returns the list of the
            bool tensors `predicate(cut)`.
        shape: shape of the search: `()` for one value, `(rows,)` for one
            per row (the size may be dynamic). Defaults to `()`.
        carry: tensors handed to `predicate` through the loop and returned,
            so that later uses read the loop's output instead of having
            their computation fused (recomputed) into every pass. Defaults
            to `()`.
        ways: int >= 2, the parts a pass splits the interval into. Defaults
            to `None`: `default_ways()`, 4 on TensorFlow and JAX, 2 on torch.

    Returns:
        Tuple `(t, carry)`, `t` int32 of `shape`: 0 where the predicate holds
        nowhere, `INF_BITS` where it holds everywhere.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> v = ops.convert_to_tensor(np.array([0.5, 2.0, 1.0, 3.0], "float32"))
    >>> bits = ops.view(v, "int32")
    >>> def at_least_two_above(cuts, _):  # the 2nd largest: #{v >= t} >= 2
    ...     return [ops.sum(ops.cast(bits >= c, "int32")) >= 2 for c in cuts]
    >>> t, _ = search_bits(at_least_two_above)
    >>> float(ops.view(t, "float32"))
    2.0
    """
    ways = default_ways() if ways is None else int(ways)
    if ways < 2:
        raise ValueError(
            f"Invalid value for argument `ways`. Expected an integer >= 2. Received: ways={ways}"
        )

    def body(_, state):
        # invariant: the answer lies in [lo, hi); the cuts stay below hi
        lo, hi, carry = state
        span = hi - lo
        cuts = [lo + (span // ways) * j + ((span % ways) * j) // ways for j in range(1, ways)]
        holds = predicate(cuts, carry)
        for cut, ok in zip(cuts, holds):  # true, then false
            lo = ops.where(ok, cut, lo)
        for cut, ok in zip(cuts[::-1], holds[::-1]):
            hi = ops.where(ok, hi, cut)
        return lo, hi, carry

    lo = ops.zeros(shape, "int32")
    state = (lo, lo + _END, carry)
    lo, _, carry = ops.fori_loop(0, _passes(ways), body, state)
    return lo, carry
