import numpy as np
import pytest
from keras import ops

from keras_seglosses import pack_targets, unpack_targets
from keras_seglosses.targets import packed_or_computed, require_map_columns


def test_pack_then_unpack_returns_the_parts(rng):
    labels = (rng.random((2, 5, 6, 7, 3)) > 0.5).astype("float32")
    m1, m2 = rng.normal(size=(2, 2, 5, 6, 7, 3)).astype("float32")
    packed = pack_targets(labels, m1, m2)
    assert packed.shape == (2, 5, 6, 7, 9) and packed.dtype == np.float32
    got_labels, maps = unpack_targets(packed, 3)
    np.testing.assert_array_equal(got_labels, labels)
    assert len(maps) == 2
    np.testing.assert_array_equal(maps[0], m1)
    np.testing.assert_array_equal(maps[1], m2)


def test_pack_accepts_channel_less_map_for_binary_labels(rng):
    labels = np.zeros((2, 4, 4, 1), "float32")
    m = rng.random((2, 4, 4)).astype("float32")
    packed = pack_targets(labels, m)
    np.testing.assert_array_equal(packed[..., 1], m)


@pytest.mark.backends
def test_pack_and_unpack_tensors():
    labels = ops.ones((2, 3, 3, 1))
    packed = pack_targets(labels, ops.zeros((2, 3, 3, 1)))
    assert tuple(packed.shape) == (2, 3, 3, 2)
    got, maps = unpack_targets(packed, 1)
    np.testing.assert_array_equal(ops.convert_to_numpy(got), 1.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(maps[0]), 0.0)


def test_pack_rejects_map_of_other_shape():
    with pytest.raises(ValueError, match=r"map 0 .*Expected the shape of `labels`"):
        pack_targets(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 5, 1)))


def test_unpack_rejects_channel_count_not_a_multiple():
    with pytest.raises(ValueError, match="multiple of the 2 channel"):
        unpack_targets(np.zeros((1, 4, 4, 3)), 2)


def test_unpack_rejects_missing_channel_axis():
    with pytest.raises(ValueError, match="channels_last"):
        unpack_targets(np.zeros((4,)), 1)


@pytest.mark.backends
@pytest.mark.parametrize("batch", [True, False])
def test_map_columns_are_the_flattened_channels(rng, batch):
    labels = rng.random((2, 3, 4, 2)).astype("float32")
    m1, m2 = rng.random((2, 2, 3, 4, 2)).astype("float32")
    ys, ms = require_map_columns(pack_targets(labels, m1, m2), 2, 1, batch, "L", "second map")
    lead = (-1,) if batch else (2, -1)
    for k in range(2):
        np.testing.assert_array_equal(ops.convert_to_numpy(ys[k]), labels[..., k].reshape(lead))
        np.testing.assert_array_equal(ops.convert_to_numpy(ms[k]), m2[..., k].reshape(lead))
    with pytest.raises(ValueError, match=r"`L` needs the second map.*at least 6 channels.*pack_targets"):
        require_map_columns(pack_targets(labels, m1), 2, 1, batch, "L", "second map")


def test_packed_or_computed_reads_the_slot_or_computes(rng):
    y, a, b = rng.random((3, 2, 4, 5, 1)).astype("float32")
    computed = np.full(y.shape, 7.0, "float32")

    def read(t, index, channels=None):
        return ops.convert_to_numpy(packed_or_computed(t, 1, index, lambda: computed, channels))

    packed = pack_targets(y, a, b)
    np.testing.assert_array_equal(read(packed, 0), a)
    np.testing.assert_array_equal(read(packed, 1), b)
    np.testing.assert_array_equal(read(packed, 2), computed)  # no third map
    # a two-channel map of one sigmoid channel spans two slots
    np.testing.assert_array_equal(read(packed, 0, 2), np.concatenate([a, b], -1))
    np.testing.assert_array_equal(read(packed, 1, 2), computed)
    with pytest.raises(ValueError, match="multiple of the 2 channel"):
        packed_or_computed(packed, 2, 0, lambda: computed)
