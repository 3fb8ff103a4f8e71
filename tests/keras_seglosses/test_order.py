"""The bit-pattern order-statistic search (`keras_seglosses.ops.order`)
against numpy's sort, for every split of the interval, compiled."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_seglosses.ops.order import INF_BITS, search_bits


def values(rng, rows, n):
    """Non-negative float32 rows: continuous, heavily tied, zeros, huge, inf."""
    v = np.stack([
        rng.exponential(3.0, n),
        rng.choice([0.0, 0.25, 7.0], n),
        np.where(rng.random(n) < 0.5, 0.0, rng.random(n) * 1e-38),  # subnormals
        rng.uniform(0, 3e38, n),
        np.where(rng.random(n) < 0.3, np.inf, rng.random(n)),
    ][:rows]).astype("float32")
    return v


def kth_smallest(bits, k, ways):
    """Per row, the largest t with #{bits < t} <= k: the k-th smallest (0-based)."""
    bits = ops.convert_to_tensor(bits)

    def at_most_k_below(cuts, _):
        return [ops.sum(ops.cast(bits < t[:, None], "int32"), axis=-1) <= k for t in cuts]

    t, _ = search_bits(at_most_k_below, ops.shape(bits)[:1], ways=ways)
    return t


@pytest.mark.backends
@pytest.mark.parametrize("ways", [2, 3, 4])
def test_kth_smallest_per_row_matches_sort(jit, rng, ways):
    v = values(rng, 5, 37)
    bits = v.view("int32")
    want = np.sort(v, axis=-1)
    for k in (0, 1, 18, 36):
        got = jit(lambda b: kth_smallest(b, k, ways))(bits)
        got = ops.convert_to_numpy(got).astype("int32").view("float32")
        np.testing.assert_array_equal(got, want[:, k], err_msg=f"k={k}")


@pytest.mark.backends
def test_scalar_search_with_carry_and_edge_answers(jit, rng):
    v = values(rng, 1, 50)[0]
    v = v[np.isfinite(v)]

    def largest(x, count):
        # the count-th largest: the largest t with #{x >= t} >= count
        def enough(cuts, carried):
            return [ops.sum(ops.cast(carried >= ops.view(c, "float32"), "int32")) >= count
                    for c in cuts]

        t, carried = search_bits(enough, carry=ops.convert_to_tensor(x))
        return t, carried

    for count in (1, 7, v.size):
        t, carried = jit(lambda x: largest(x, count))(v)
        got = np.asarray(ops.convert_to_numpy(t), "int32").reshape(1).view("float32")[0]
        assert got == np.sort(v)[::-1][count - 1], count
        np.testing.assert_array_equal(ops.convert_to_numpy(carried), v)

    def always(value):
        return lambda cuts, _: [ops.convert_to_tensor(value) for _ in cuts]

    assert int(ops.convert_to_numpy(search_bits(always(True))[0])) == INF_BITS
    assert int(ops.convert_to_numpy(search_bits(always(False))[0])) == 0


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="unknown static shapes are TF's")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_unknown_number_of_rows_in_tf_graph(rng, jit_compile):
    import tensorflow as tf

    v = values(rng, 5, 16)
    fn = tf.function(
        lambda b: kth_smallest(b, 5, 4),
        input_signature=[tf.TensorSpec((None, 16), tf.int32)],
        jit_compile=jit_compile,
    )
    got = fn(v.view("int32")).numpy().view("float32")
    np.testing.assert_array_equal(got, np.sort(v, axis=-1)[:, 5])


def test_ways_must_split():
    with pytest.raises(ValueError, match="`ways`.*Received: ways=1"):
        search_bits(lambda cuts, _: [], ways=1)
