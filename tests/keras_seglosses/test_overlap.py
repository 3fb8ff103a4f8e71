"""Dice and RPD metrics [000, Eq. 5-6] and their functional forms."""

import keras
import numpy as np
import pytest

import keras_seglosses as ks
from keras_seglosses.metrics import functional as F


def np_dice(y, p):
    pb = (p > 0.5).astype(float)
    axes = tuple(range(1, y.ndim - 1))
    num, den = 2 * (y * pb).sum(axes), (y + pb).sum(axes)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def np_rpd(y, p, m):
    pb = (p > 0.5).astype(float)
    axes = tuple(range(1, y.ndim - 1))
    num = 2 * (y * pb * m).sum(axes)
    den = (y * np.abs(m)).sum(axes) + (pb * np.abs(m)).sum(axes)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def sample(rng, shape):
    y = (rng.random(shape) > 0.6).astype("float32")
    p = rng.random(shape).astype("float32")
    ann = (rng.random((5,) + shape) > 0.5) | y[None].astype(bool)
    m = np.stack([ks.reward_penalty_map(ann[:, b]) for b in range(shape[0])])
    return y, p, m


@pytest.mark.parametrize("shape", [(3, 6, 7, 1), (2, 6, 5, 3), (2, 5, 4, 6, 1), (2, 4, 5, 3, 3)])
def test_functional_forms_match_equations(rng, shape):
    y, p, m = sample(rng, shape)
    yt = ks.pack_targets(y, m)
    np.testing.assert_allclose(np.asarray(F.dice(yt, p)), np_dice(y, p), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(F.reward_penalty_dice(yt, p)), np_rpd(y, p, m), rtol=1e-6)


@pytest.mark.backends
def test_metrics_mean_over_samples_and_both_empty_is_one(rng, jit):
    y, p, m = sample(rng, (4, 5, 5, 5, 1))
    y[0] = 0
    p[0] = 0.1  # sample 0: both empty -> 1
    yt = ks.pack_targets(y, m)
    for metric, ref in [(ks.metrics.Dice(), np_dice(y, p)), (ks.metrics.RPD(), np_rpd(y, p, m))]:
        assert ref[0, 0] == 1.0
        metric.update_state(yt[:2], p[:2])
        metric.update_state(yt[2:], p[2:])
        np.testing.assert_allclose(float(metric.result()), ref.mean(), rtol=1e-6)
    per_sample = jit(lambda a, b: F.dice(a, b))(yt, p)
    np.testing.assert_allclose(np.asarray(per_sample), np_dice(y, p), rtol=1e-6)


def test_threshold_and_config_round_trip(rng):
    y, p, m = sample(rng, (2, 4, 4, 1))
    yt = ks.pack_targets(y, m)
    for cls in (ks.metrics.Dice, ks.metrics.RPD):
        metric = cls(threshold=0.3, name="x")
        clone = cls.from_config(metric.get_config())
        metric.update_state(yt, p)
        clone.update_state(yt, p)
        assert clone.threshold == 0.3 and clone.name == "x"
        assert float(clone.result()) == float(metric.result())
    d = ks.metrics.Dice(threshold=0.3)
    d.update_state(y, p)
    np.testing.assert_allclose(float(d.result()), np_dice(y, p + 0.2).mean(), rtol=1e-6)


def test_rpd_is_invariant_to_scaling_the_map(rng):
    y, p, m = sample(rng, (2, 5, 5, 1))
    a = np.asarray(F.reward_penalty_dice(ks.pack_targets(y, m), p))
    b = np.asarray(F.reward_penalty_dice(ks.pack_targets(y, 7 * m), p))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_metric_errors_are_clear():
    with pytest.raises(ValueError, match="reward-penalty map"):
        F.reward_penalty_dice(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="threshold"):
        ks.metrics.Dice(threshold=2)
    with pytest.raises(ValueError, match="differ in batch or spatial"):
        F.dice(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 3, 1)))


def test_metric_serializes_in_a_saved_model(tmp_path):
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(loss=ks.Dice(), metrics=[ks.metrics.Dice(threshold=0.25), ks.metrics.RPD()])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.ones((1, 4, 4, 1), "float32")
    y = ks.pack_targets(np.ones((1, 4, 4, 1)), np.ones((1, 4, 4, 1)))
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)
