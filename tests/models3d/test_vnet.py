"""`vnet`: residual encoder levels; same parameters as the U-net (additions
have none), counted independently. Predictions: test_weights.py."""

import keras
import numpy as np

import models3d


def conv(k, cin, cout):
    return k**3 * cin * cout + cout


def block(k, cin, cout):
    return conv(k, cin, cout) + 4 * cout


def vnet_params(channels=1, labels=1, base=4, depth=5):
    n = [base * 2**l for l in range(depth)]
    total, cin = 0, channels
    for l in range(depth):
        total += block(3, cin, n[l]) + 2 * block(3, n[l], n[l])
        cin = n[l]
    for l in range(depth - 1):
        total += block(3, n[l + 1], n[l]) + block(3, 2 * n[l], n[l]) + block(1, n[l], n[l])
    return total + conv(1, base, labels)


def test_parameter_count_at_paper_settings():
    model = models3d.vnet()
    assert model.output_shape == (None, 64, 64, 64, 1)
    assert model.count_params() == vnet_params() == 519177


def test_residual_levels():
    model = models3d.vnet(input_shape=(16, 16, 16, 1), depth=3)
    for level in range(3):
        add = model.get_layer(f"enc{level}_add")
        assert add.input[0] is model.get_layer(f"enc{level}_entry_act").output
        assert add.input[1] is model.get_layer(f"enc{level}_context_block2_act").output
    assert model.get_layer("dec1_concat").input[0] is model.get_layer("enc1_add").output


def test_residual_sum_in_numbers():
    # With the context module's last BatchNorm scaled to zero, the level
    # output equals entry + LeakyReLU(beta) = entry + beta (beta >= 0).
    model = models3d.vnet(input_shape=(8, 8, 8, 1), depth=2)
    bn = model.get_layer("enc0_context_block2_bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([0 * gamma, 0 * beta + 0.5, mean, var])
    probe = keras.Model(
        model.input,
        [model.get_layer("enc0_entry_act").output, model.get_layer("enc0_add").output],
    )
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 1)).astype("float32")
    entry, level = (keras.ops.convert_to_numpy(t) for t in probe(x, training=False))
    np.testing.assert_allclose(level, entry + 0.5, rtol=1e-6, atol=1e-6)
