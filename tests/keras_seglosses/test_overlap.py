"""Dice and RPD metrics [000, Eq. 5-6] and their functional forms."""

import keras
import numpy as np
import pytest
from _references import np_dice, np_masked_overlaps, np_rpd

import keras_seglosses as ks
from keras_seglosses.metrics import functional as F
from keras_seglosses.targets import MapRead, map_reads


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


@pytest.mark.backends
@pytest.mark.parametrize("shape", [(3, 6, 7, 1), (2, 4, 5, 3, 3)])
def test_rpd_reads_the_map_at_map_index(rng, jit, shape):
    y, p, m = sample(rng, shape)
    # A decoy in slot 0 that would score differently if RPD read it.
    other = rng.normal(size=shape).astype("float32")
    want = np_rpd(y, p, m)
    assert not np.allclose(np_rpd(y, p, other), want)
    at_0, at_1 = ks.pack_targets(y, m), ks.pack_targets(y, other, m)
    got_0 = np.asarray(F.reward_penalty_dice(at_0, p))
    got_1 = np.asarray(jit(lambda a, b: F.reward_penalty_dice(a, b, map_index=1))(at_1, p))
    np.testing.assert_allclose(got_0, want, rtol=1e-6)
    np.testing.assert_allclose(got_1, want, rtol=1e-6)
    metric = ks.metrics.RPD(map_index=1)
    metric.update_state(at_1, p)
    np.testing.assert_allclose(float(metric.result()), want.mean(), rtol=1e-6)
    assert metric.map_reads() == (MapRead("rpmap", 1, 1),)
    assert map_reads(ks.metrics.RPD(), n_classes=shape[-1]) == (MapRead("rpmap", 0, 1),)
    with pytest.raises(ValueError, match="reward-penalty map"):
        ks.metrics.RPD(map_index=1).update_state(at_0, p)  # no slot 1


def test_rpd_config_keeps_map_index_and_old_configs_load(rng):
    y, p, m = sample(rng, (2, 4, 4, 1))
    yt = ks.pack_targets(y, np.zeros_like(m), m)
    metric = ks.metrics.RPD(threshold=0.4, map_index=1, name="rpd1")
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(restored) is ks.metrics.RPD and restored.map_index == 1
    assert restored.get_config() == metric.get_config()
    for each in (metric, restored):
        each.update_state(yt, p)
    assert float(restored.result()) == float(metric.result())
    old = {k: v for k, v in metric.get_config().items() if k != "map_index"}
    assert ks.metrics.RPD.from_config(old).map_index == 0
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="`map_index`"):
            ks.metrics.RPD(map_index=bad)
        with pytest.raises(ValueError, match="`map_index`"):
            F.reward_penalty_dice(yt, p, map_index=bad)


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


# ------------------------------------------------- confusion-matrix rates
RATES = {"sensitivity": ("tp", "fn"), "specificity": ("tn", "fp"), "precision": ("tp", "fp")}


def np_rate(y, p, name):
    """The rate from the confusion counts of `P' = 1[p > 0.5]`, per sample
    and channel; NaN where the denominator is 0."""
    pb = (p > 0.5).astype(float)
    axes = tuple(range(1, y.ndim - 1))
    counts = {"tp": (y * pb).sum(axes), "fp": ((1 - y) * pb).sum(axes),
              "fn": (y * (1 - pb)).sum(axes), "tn": ((1 - y) * (1 - pb)).sum(axes)}
    num, other = (counts[k] for k in RATES[name])
    with np.errstate(invalid="ignore"):
        return np.where(num + other > 0, num / (num + other), np.nan)


def _rate_case(rng, shape=(4, 6, 7, 3)):
    y = (rng.random(shape) > 0.6).astype("float32")
    p = rng.random(shape).astype("float32")
    y[0, ..., 0] = 0.0  # no ground truth: sensitivity undefined
    y[1, ..., 1] = 1.0  # no background: specificity undefined
    p[2, ..., 2] = 0.1  # empty prediction: precision undefined
    return y, p


@pytest.mark.parametrize("name", sorted(RATES))
def test_confusion_rates_match_monai_and_the_counts(rng, name):
    import torch
    from monai.metrics import ConfusionMatrixMetric

    y, p = _rate_case(rng)
    expected = np_rate(y, p, name)
    assert np.isnan(expected).any()
    fn = getattr(F, name)
    np.testing.assert_allclose(np.asarray(fn(y, p, empty="nan")), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fn(y, p, empty="score")), np.where(np.isnan(expected), 1, expected),
                               rtol=1e-6)
    monai = ConfusionMatrixMetric(include_background=True, metric_name=name,
                                  compute_sample=True, reduction="none")
    to_torch = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).copy())  # noqa: E731
    monai(to_torch((p > 0.5).astype("float32")), to_torch(y))
    theirs = monai.aggregate()[0].numpy()
    np.testing.assert_allclose(np.asarray(fn(y, p, empty="nan")), theirs, rtol=1e-6)


@pytest.mark.backends
@pytest.mark.parametrize("name", sorted(RATES))
def test_confusion_rate_metrics_skip_undefined_values_when_asked(rng, jit, name):
    y, p = _rate_case(rng)
    expected = np_rate(y, p, name)
    cls = getattr(ks.metrics, name.capitalize())
    plain = cls()
    plain.update_state(y, p)
    assert float(plain.result()) == pytest.approx(
        np.where(np.isnan(expected), 1, expected).mean(-1).mean(), rel=1e-5)
    skipping = cls(empty="nan")
    # the compiled path of fit: a stateless update under jit
    update = jit(lambda vs, a, b: skipping.stateless_update_state(vs, a, b))
    for v, new in zip(skipping.variables, update([v.value for v in skipping.variables], y, p)):
        v.assign(new)
    per_sample = np.nanmean(expected, axis=-1)
    assert float(skipping.result()) == pytest.approx(np.nanmean(per_sample), rel=1e-5)
    assert float(skipping.excluded) == np.isnan(expected).sum()
    skipping.reset_state()
    assert float(skipping.excluded) == 0.0
    again = keras.metrics.deserialize(keras.metrics.serialize(skipping))
    assert (type(again), again.empty, again.threshold) == (cls, "nan", 0.5)


def test_confusion_rate_arguments_are_checked():
    with pytest.raises(ValueError, match="`empty`"):
        ks.metrics.Sensitivity(empty="zero")
    with pytest.raises(ValueError, match="`threshold`"):
        ks.metrics.Precision(threshold=2.0)
    with pytest.raises(ValueError, match="`empty`"):
        F.specificity(np.zeros((1, 2, 1)), np.zeros((1, 2, 1)), empty="skip")


def test_dice_and_rpd_with_empty_nan_follow_monai_ignore_empty(rng):
    import torch
    from monai.metrics import DiceMetric

    y, p, m = sample(rng, (4, 6, 7, 2))
    y[0, ..., 0] = 0.0
    p[0, ..., 0] = 0.1  # both empty
    y[1, ..., 1] = 0.0  # ground truth empty, prediction not
    yt = ks.pack_targets(y, m)
    ours = np.asarray(F.dice(yt, p, empty="nan"))
    t = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).copy())  # noqa: E731
    theirs = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(
        t((p > 0.5).astype("float32")), t(y)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert np.isnan(ours[0, 0]) and np.isnan(ours[1, 1])
    rpd = np.asarray(F.reward_penalty_dice(yt, p, empty="nan"))
    np.testing.assert_array_equal(np.isnan(rpd), np.isnan(ours))
    scored = np.asarray(F.dice(yt, p))
    assert scored[0, 0] == 1.0 and scored[1, 1] == 0.0
    metric = ks.metrics.Dice(empty="nan")
    metric.update_state(yt, p)
    assert float(metric.result()) == pytest.approx(np.nanmean(np.nanmean(ours, -1)), rel=1e-6)
    assert float(metric.excluded) == 2.0


@pytest.mark.parametrize("make", [
    lambda **kw: ks.metrics.Dice(**kw), lambda **kw: ks.metrics.RPD(**kw),
    lambda **kw: ks.metrics.Sensitivity(**kw), lambda **kw: ks.metrics.HD95(**kw),
    lambda **kw: ks.metrics.NSD(**kw), lambda **kw: ks.metrics.ASD(**kw),
    lambda **kw: ks.metrics.QUBIQ(**kw), lambda **kw: ks.metrics.ConsensusDice(**kw),
], ids=["dice", "rpd", "sensitivity", "hd95", "nsd", "asd", "qubiq", "consensus_dice"])
def test_every_metric_leaves_the_background_channel_out_when_asked(rng, make):
    y, p, m = sample(rng, (3, 6, 7, 5, 3))
    yt = ks.pack_targets(y, m)
    with_bg, without = make(), make(include_background=False)
    with_bg.update_state(yt, p)
    without.update_state(yt, p)
    per_channel = np.asarray(with_bg._per_channel(yt, p, **with_bg._fn_kwargs))
    assert float(with_bg.result()) == pytest.approx(per_channel.mean(), rel=1e-5)
    assert float(without.result()) == pytest.approx(per_channel[:, 1:].mean(), rel=1e-5)
    again = keras.metrics.deserialize(keras.metrics.serialize(without))
    assert again.include_background is False


# ------------------------------------------------------------ ignore masks
OVERLAPS = {"dice": F.dice, "sensitivity": F.sensitivity, "specificity": F.specificity,
            "precision": F.precision}


def _masked_sample(rng, shape=(4, 6, 7, 5, 2)):
    """Labels, prediction, rpmap and a per-channel ignore mask; sample 0's
    channel 0 has its only foreground (ground truth and prediction) inside
    the ignored voxels, so that its counted masks are empty."""
    y, p, m = sample(rng, shape)
    mask = (rng.random(shape) > 0.3).astype("float32")
    mask[:, 1:3, 2:5] = 0.0  # a block through the objects
    y[0, ..., 0] = 0.0
    p[0, ..., 0] = 0.1
    y[0, 1:3, 2:5, :, 0] = 1.0
    p[0, 1:3, 2:4, :, 0] = 0.9
    return y, p, m, mask


def test_masked_overlaps_match_the_counted_voxels_and_monai(rng):
    import torch
    from monai.metrics import DiceMetric, compute_dice

    y, p, m, mask = _masked_sample(rng)
    want = np_masked_overlaps(y, p, mask)
    packed = ks.pack_targets(y, m, mask)
    for name, fn in OVERLAPS.items():
        got = np.asarray(fn(packed, p, mask_index=1, empty="nan"))
        np.testing.assert_allclose(got, want[name], rtol=1e-6, err_msg=name)
        scored = np.asarray(fn(packed, p, mask_index=1))
        np.testing.assert_allclose(scored, np.nan_to_num(want[name], nan=1.0), rtol=1e-6,
                                   err_msg=name)
    assert np.isnan(want["dice"][0, 0]) and np.isnan(want["sensitivity"][0, 0])
    # Without the mask these would differ: the test would not see a no-op.
    assert not np.allclose(np.asarray(F.specificity(y, p)), want["specificity"])
    # MONAI has no mask: it scores the inputs multiplied by the mask.
    t = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).copy())  # noqa: E731
    pb = (p > 0.5).astype("float32")
    theirs = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(
        t(pb * mask), t(y * mask)).numpy()
    np.testing.assert_allclose(np.asarray(F.dice(packed, p, mask_index=1, empty="nan")), theirs,
                               rtol=1e-6)
    theirs = compute_dice(t(pb * mask), t(y * mask), ignore_empty=False).numpy()
    np.testing.assert_allclose(np.asarray(F.dice(packed, p, mask_index=1)), theirs, rtol=1e-6)


def test_masked_rpd_sums_over_the_counted_voxels(rng):
    y, p, m, mask = _masked_sample(rng)
    keep = mask > 0.5
    want = np_rpd(y * keep, p * keep, m * keep)
    got = np.asarray(F.reward_penalty_dice(ks.pack_targets(y, mask, m), p, map_index=1,
                                           mask_index=0))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(np_rpd(y, p, m), want)


def test_masked_metrics_average_the_masked_values_and_round_trip(rng):
    y, p, m, mask = _masked_sample(rng)
    want = np_masked_overlaps(y, p, mask)
    packed = ks.pack_targets(y, m, mask)
    for name in OVERLAPS:
        cls = getattr(ks.metrics, name.capitalize())
        metric = cls(mask_index=1)
        assert metric.map_reads() == (MapRead("mask", 1, 1),)
        metric.update_state(packed[:2], p[:2])
        metric.update_state(packed[2:], p[2:])
        per_sample = np.nan_to_num(want[name], nan=1.0).mean(-1)
        assert float(metric.result()) == pytest.approx(per_sample.mean(), rel=1e-5), name
        skipping = cls(mask_index=1, empty="nan")
        skipping.update_state(packed, p)
        assert float(skipping.result()) == pytest.approx(
            np.nanmean(np.nanmean(want[name], -1)), rel=1e-5), name
        assert float(skipping.excluded) == np.isnan(want[name]).sum()
        restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
        assert restored.mask_index == 1 and restored.get_config() == metric.get_config()
    rpd = ks.metrics.RPD(map_index=0, mask_index=1)
    assert map_reads(rpd) == (MapRead("rpmap", 0, 1), MapRead("mask", 1, 1))
    rpd.update_state(packed, p)
    keep = mask > 0.5
    assert float(rpd.result()) == pytest.approx(np_rpd(y * keep, p * keep, m).mean(), rel=1e-5)
    # configs written before `mask_index` existed load without a mask
    old = {k: v for k, v in rpd.get_config().items() if k != "mask_index"}
    assert ks.metrics.RPD.from_config(old).mask_index is None
    assert map_reads(ks.metrics.RPD.from_config(old)) == (MapRead("rpmap", 0, 1),)


@pytest.mark.backends
def test_masked_overlaps_compile(rng, jit):
    y, p, m, mask = _masked_sample(rng)
    want = np_masked_overlaps(y, p, mask)
    packed = ks.pack_targets(y, m, mask)
    fn = jit(lambda a, b: [F.dice(a, b, mask_index=1), F.specificity(a, b, mask_index=1),
                           F.reward_penalty_dice(a, b, map_index=0, mask_index=1)])
    dice, spec, rpd = (keras.ops.convert_to_numpy(v) for v in fn(packed, p))
    np.testing.assert_allclose(dice, np.nan_to_num(want["dice"], nan=1.0), rtol=1e-6)
    np.testing.assert_allclose(spec, np.nan_to_num(want["specificity"], nan=1.0), rtol=1e-6)
    keep = mask > 0.5
    np.testing.assert_allclose(rpd, np_rpd(y * keep, p * keep, m), rtol=1e-6)
    # the Keras metric on the compiled path of `fit`: a stateless update
    metric = ks.metrics.Sensitivity(mask_index=1, empty="nan")
    update = jit(lambda vs, a, b: metric.stateless_update_state(vs, a, b))
    for v, new in zip(metric.variables, update([v.value for v in metric.variables], packed, p)):
        v.assign(new)
    assert float(metric.result()) == pytest.approx(
        np.nanmean(np.nanmean(want["sensitivity"], -1)), rel=1e-5)


def test_mask_index_is_checked():
    y = np.zeros((1, 4, 4, 1), "float32")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`mask_index`"):
            ks.metrics.Dice(mask_index=bad)
        with pytest.raises(ValueError, match="`mask_index`"):
            F.precision(ks.pack_targets(y, y), y, mask_index=bad)
    with pytest.raises(ValueError, match="`mask_index`.*`map_index=0`"):
        ks.metrics.RPD(mask_index=0)
    with pytest.raises(ValueError, match="`mask_index`"):
        F.reward_penalty_dice(ks.pack_targets(y, y), y, map_index=0, mask_index=0)
    with pytest.raises(ValueError, match="ignore mask.*pack_targets"):
        F.dice(y, y, mask_index=0)  # no slot 0
    with pytest.raises(ValueError, match="ignore mask.*pack_targets"):
        ks.metrics.Specificity(mask_index=1).update_state(ks.pack_targets(y, y), y)
