"""`isensee2017`: residual levels plus the deep-supervision sum, with an
independent parameter count and a numeric check of the sum's order.
Predictions against an independent Keras 2 model: test_weights.py."""

import keras
import numpy as np
import pytest

import models3d


def conv(k, cin, cout):
    return k**3 * cin * cout + cout


def block(k, cin, cout):
    return conv(k, cin, cout) + 4 * cout


def isensee_params(channels=1, labels=1, base=4, depth=5, levels=3):
    n = [base * 2**l for l in range(depth)]
    total, cin = 0, channels
    for l in range(depth):
        total += block(3, cin, n[l]) + 2 * block(3, n[l], n[l])
        cin = n[l]
    for l in range(depth - 1):
        total += block(3, n[l + 1], n[l]) + block(3, 2 * n[l], n[l]) + block(1, n[l], n[l])
    return total + sum(conv(1, n[l], labels) for l in range(levels))


def test_parameter_count_at_paper_settings():
    model = models3d.isensee2017()
    assert model.output_shape == (None, 64, 64, 64, 1)
    assert model.count_params() == isensee_params() == 519203


def test_deep_supervision_sum_order():
    model = models3d.isensee2017(input_shape=(16, 16, 16, 1), depth=4)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 16, 1)).astype("float32")
    probe = keras.Model(
        model.input,
        [model.get_layer(f"dec{l}_segmentation").output for l in range(3)]
        + [model.output],
    )
    s0, s1, s2, y = (keras.ops.convert_to_numpy(t) for t in probe(x, training=False))
    assert s0.shape[1] == 16 and s1.shape[1] == 8 and s2.shape[1] == 4

    def up(a):  # nearest-neighbour x2 on the three spatial axes
        return a.repeat(2, 1).repeat(2, 2).repeat(2, 3)

    expected = 1 / (1 + np.exp(-(s0 + up(s1 + up(s2)))))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_segmentation_levels_argument():
    with pytest.raises(ValueError, match=r"`n_segmentation_levels`.*depth - 1 = 2.*=3"):
        models3d.isensee2017(input_shape=(16, 16, 16, 1), depth=3)
    one = models3d.isensee2017(input_shape=(16, 16, 16, 1), depth=3, n_segmentation_levels=1)
    assert one.count_params() == isensee_params(base=4, depth=3, levels=1)
