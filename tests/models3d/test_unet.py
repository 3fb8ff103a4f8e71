"""`basic_unet`: layer structure and parameter count from the architecture
facts (SPEC.md section 6), counted here independently of the builder.
Predictions against an independent Keras 2 model: test_weights.py."""

import keras
import numpy as np

import models3d


def conv(k, cin, cout):
    return k**3 * cin * cout + cout


def block(k, cin, cout):  # Conv3D + BatchNorm (gamma, beta, mean, variance)
    return conv(k, cin, cout) + 4 * cout


def encoder_decoder_params(channels, base, depth):
    n = [base * 2**l for l in range(depth)]
    total, cin = 0, channels
    for l in range(depth):
        total += block(3, cin, n[l]) + 2 * block(3, n[l], n[l])
        cin = n[l]
    for l in range(depth - 1):
        total += block(3, n[l + 1], n[l]) + block(3, 2 * n[l], n[l]) + block(1, n[l], n[l])
    return total


def unet_params(channels=1, labels=1, base=4, depth=5):
    return encoder_decoder_params(channels, base, depth) + conv(1, base, labels)


def test_parameter_count_at_paper_settings():
    model = models3d.basic_unet()
    assert model.input_shape == (None, 64, 64, 64, 1)
    assert model.output_shape == (None, 64, 64, 64, 1)
    assert model.count_params() == unet_params() == 519177


def test_parameter_count_other_settings():
    model = models3d.basic_unet(
        input_shape=(16, 32, 16, 2), n_labels=3, n_base_filters=3, depth=3,
        activation="softmax",
    )
    assert model.count_params() == unet_params(2, 3, 3, 3)


def test_structure_and_layer_names():
    model = models3d.basic_unet(input_shape=(16, 16, 16, 1), depth=3)
    names = [l.name for l in model.layers]
    assert len(names) == len(set(names))
    for expected in [
        "enc0_entry_conv", "enc1_entry_conv", "enc2_context_dropout",
        "dec1_up_upsample", "dec0_concat", "dec0_localization_block2_conv",
        "head_conv", "head_act",
    ]:
        assert expected in names
    # No residual additions in the U-net; stride 2 below the first level.
    assert not any(isinstance(l, keras.layers.Add) for l in model.layers)
    assert model.get_layer("enc0_entry_conv").strides == (1, 1, 1)
    assert model.get_layer("enc1_entry_conv").strides == (2, 2, 2)
    assert model.get_layer("enc2_context_dropout").rate == 0.3
    assert model.get_layer("dec0_localization_block2_conv").kernel_size == (1, 1, 1)
    assert isinstance(model.get_layer("enc0_entry_act"), keras.layers.LeakyReLU)
    # The concatenation puts the encoder features first, as the original.
    concat = model.get_layer("dec0_concat")
    assert concat.input[0].shape[-1] == 4 and concat.input[1].shape[-1] == 4
    assert concat.input[0] is model.get_layer("enc0_context_block2_act").output


def test_dropout_only_in_training():
    model = models3d.basic_unet(input_shape=(8, 8, 8, 1), depth=2)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 1)).astype("float32")
    a = keras.ops.convert_to_numpy(model(x, training=False))
    b = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_array_equal(a, b)
