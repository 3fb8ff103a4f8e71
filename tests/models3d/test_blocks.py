"""Building blocks: a conv block against a numpy transcription
(Conv3D -> BatchNorm (inference) -> LeakyReLU), layer naming, modules."""

import keras
import numpy as np
import pytest

from models3d import blocks


@pytest.mark.backends
def test_conv_block_matches_numpy(jit):
    rng = np.random.default_rng(0)
    inputs = keras.Input((4, 4, 4, 3))
    outputs = blocks.apply_conv_block(inputs, 5, kernel_size=1, name="b")
    model = keras.Model(inputs, outputs)
    w, b = rng.normal(size=(1, 1, 1, 3, 5)), rng.normal(size=5)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
    mean, var = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    model.get_layer("b_conv").set_weights([w, b])
    model.get_layer("b_bn").set_weights([gamma, beta, mean, var])
    x = rng.normal(size=(2, 4, 4, 4, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(jit(lambda t: model(t, training=False))(x))
    z = x @ w[0, 0, 0] + b
    z = gamma * (z - mean) / np.sqrt(var + 1e-3) + beta
    expected = np.where(z > 0, z, 0.3 * z)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_modules_layer_names_and_shapes():
    inputs = keras.Input((8, 8, 8, 2))
    x = blocks.apply_conv_block(inputs, 4, strides=2, name="entry")
    assert tuple(x.shape) == (None, 4, 4, 4, 4)
    x = blocks.apply_context_module(x, 4, 0.3, name="ctx")
    x = blocks.apply_up_sampling_module(x, 2, name="up")
    assert tuple(x.shape) == (None, 8, 8, 8, 2)
    x = blocks.apply_localization_module(x, 2, name="loc")
    names = [l.name for l in keras.Model(inputs, x).layers[1:]]
    assert names == [
        "entry_conv", "entry_bn", "entry_act",
        "ctx_block1_conv", "ctx_block1_bn", "ctx_block1_act", "ctx_dropout",
        "ctx_block2_conv", "ctx_block2_bn", "ctx_block2_act",
        "up_upsample", "up_block_conv", "up_block_bn", "up_block_act",
        "loc_block1_conv", "loc_block1_bn", "loc_block1_act",
        "loc_block2_conv", "loc_block2_bn", "loc_block2_act",
    ]


def test_check_arguments_returns_normalized_values():
    shape, labels, base, depth, rate = blocks.check_arguments(
        [32, 32, 16, 1], 2, 4, 4, "softmax", 0
    )
    assert shape == (32, 32, 16, 1) and (labels, base, depth) == (2, 4, 4)
    assert rate == 0.0 and isinstance(rate, float)
    with pytest.raises(ValueError, match=r"`depth`.*integer >= 2.*depth=True"):
        blocks.check_arguments((8, 8, 8, 1), 1, 4, True, "sigmoid")
