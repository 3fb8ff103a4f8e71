"""Metrics of multi-annotator segmentation (GED, Hungarian-matched IoU,
QUBIQ, consensus Dice) against independent transcriptions, and the Keras
metrics QUBIQ and ConsensusDice on every backend, compiled."""

import itertools
import math

import keras
import numpy as np
import pytest

import keras_seglosses as ks
from keras_seglosses.metrics import _multirater_functional as F
from keras_seglosses.metrics.multirater import QUBIQ, ConsensusDice
from keras_seglosses.multirater import majority_vote, soft_label, staple
from keras_seglosses.targets import MapRead, map_reads


# ----------------------------------------- independent references (loops)
def ref_iou(a, b, empty="one"):
    inter = union = 0
    for x, y in zip(a.ravel(), b.ravel()):
        inter += int(x and y)
        union += int(x or y)
    if union == 0:
        return 1.0 if empty == "one" else None
    return inter / union


def ref_expected_distance(first, second, empty):
    values = []
    for a in first:
        for b in second:
            iou = ref_iou(a, b, empty)
            if iou is not None:
                values.append(1.0 - iou)
    return sum(values) / len(values) if values else float("nan")


def ref_ged(y, s, empty="one"):
    """Kohl et al. 2018, Eq. 4, every ordered pair, self pairs included."""
    return (2 * ref_expected_distance(s, y, empty) - ref_expected_distance(s, s, empty)
            - ref_expected_distance(y, y, empty))


def ref_hungarian(y, s):
    """Brute force over every matching of the two sets tiled to lcm(K, M)."""
    size = math.lcm(len(y), len(s))
    ty = [y[i % len(y)] for i in range(size)]
    ts = [s[i % len(s)] for i in range(size)]
    iou = [[ref_iou(a, b) for b in ts] for a in ty]
    best = max(sum(iou[i][j] for i, j in enumerate(perm)) for perm in itertools.permutations(range(size)))
    return best / size


def ref_dice(a, b):
    a, b = np.asarray(a, bool).ravel(), np.asarray(b, bool).ravel()
    inter = sum(int(x and y) for x, y in zip(a, b))
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * inter / total


def ref_qubiq(p, annotations, thresholds):
    k = len(annotations)
    soft = sum(a.astype(float) for a in annotations) / k
    return sum(ref_dice(p > t, soft > t) for t in thresholds) / len(thresholds)


def random_set(rng, n, shape=(5, 6), fill=0.5, empty_every=0):
    masks = rng.random((n,) + shape) < fill
    if empty_every:
        masks[::empty_every] = False
    return masks


# -------------------------------------------------------------------- GED
def test_ged_matches_transcription(rng):
    for trial in range(12):
        k, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        y = random_set(rng, k, fill=rng.uniform(0.1, 0.6), empty_every=int(rng.integers(0, 3)))
        s = random_set(rng, m, fill=rng.uniform(0.1, 0.6), empty_every=int(rng.integers(0, 3)))
        for empty in ("one", "nan"):
            want = ref_ged(y, s, empty)
            got = F.generalized_energy_distance(y, s, empty=empty)
            if math.isnan(want):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(want, abs=1e-12)


def test_ged_hand_solved_sets():
    a = np.array([[1, 1, 0, 0, 0, 0]], bool)
    b = np.array([[0, 0, 1, 1, 0, 0]], bool)
    c = np.array([[0, 0, 0, 0, 1, 1]], bool)
    z = np.zeros((1, 6), bool)
    ab = np.concatenate([a, b])
    # identical sets: 0, whatever the order and repetition
    assert F.generalized_energy_distance(ab, ab[::-1]) == 0.0
    assert F.generalized_energy_distance(ab, np.concatenate([ab, ab])) == 0.0
    # disjoint single masks: 2 E[d] = 2
    assert F.generalized_energy_distance(a, b) == 2.0
    # {A, B} against {C}, all disjoint: 2 * 1 - 0 - 1/2
    assert F.generalized_energy_distance(ab, c) == 1.5
    # the two empty-mask rules on Y = {A, empty}, S = {A, A}
    az = np.concatenate([a, z])
    assert F.generalized_energy_distance(az, np.concatenate([a, a])) == 0.5
    assert F.generalized_energy_distance(az, np.concatenate([a, a]), empty="nan") == pytest.approx(1 / 3)
    # all empty: 0 under "one", nothing left to average under "nan"
    assert F.generalized_energy_distance(z, z) == 0.0
    assert math.isnan(F.generalized_energy_distance(z, z, empty="nan"))


def test_ged_is_symmetric_and_nonnegative(rng):
    for _ in range(5):
        y, s = random_set(rng, 3), random_set(rng, 4)
        g = F.generalized_energy_distance(y, s)
        assert g >= -1e-12
        assert g == pytest.approx(F.generalized_energy_distance(s, y), abs=1e-12)


# ------------------------------------------------------- Hungarian matching
@pytest.mark.parametrize("k, m", [(1, 1), (2, 2), (2, 3), (3, 2), (2, 4), (4, 2), (3, 3), (1, 5)])
def test_hungarian_iou_matches_brute_force(rng, k, m):
    for _ in range(3):
        y = random_set(rng, k, shape=(4, 5), empty_every=3)
        s = random_set(rng, m, shape=(4, 5))
        assert F.hungarian_iou(y, s) == pytest.approx(ref_hungarian(y, s), abs=1e-12)


def test_hungarian_iou_hand_solved():
    a = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    assert F.hungarian_iou(a, a[::-1]) == 1.0
    # 2 annotations against 4 samples (2 of each): the annotations repeat twice
    assert F.hungarian_iou(a, np.concatenate([a, a])) == 1.0
    # 3 samples, 2 annotations: tiled to 6, one sample of each kind doubled
    s = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], bool)
    assert F.hungarian_iou(a, s) == pytest.approx(5 / 6)
    z = np.zeros((1, 4), bool)
    assert F.hungarian_iou(z, z) == 1.0


# ------------------------------------------------------------------- QUBIQ
def test_qubiq_matches_transcription(rng):
    thresholds = F.QUBIQ_THRESHOLDS
    for k in (1, 2, 3, 5, 10):
        a = random_set(rng, k, shape=(6, 7), fill=0.4)
        p = rng.random((6, 7))
        # values exactly on the thresholds exercise the strict comparison
        p[0] = np.array([0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])
        assert F.qubiq_score(p, a) == pytest.approx(ref_qubiq(p, a, thresholds), abs=1e-12)
        assert F.qubiq_score(p, a, thresholds=(0.5,)) == pytest.approx(ref_dice(p > 0.5, soft_label(a) > 0.5))


def test_qubiq_threshold_equal_does_not_count():
    a = np.array([[1, 1, 0], [1, 0, 0]])  # soft label 1, 0.5, 0
    # at t = 0.5 the soft label's 0.5 is background: prediction 0.5 matches it
    assert F.qubiq_score(np.array([1.0, 0.5, 0.0]), a, thresholds=(0.5,)) == 1.0
    assert F.qubiq_score(np.array([1.0, 0.51, 0.0]), a, thresholds=(0.5,)) == pytest.approx(2 / 3)
    assert F.qubiq_score(np.zeros(3), np.zeros((2, 3))) == 1.0


# -------------------------------------------------------- consensus Dice
def test_consensus_dice_against_each_consensus(rng):
    sitk = pytest.importorskip("SimpleITK")
    a = random_set(rng, 5, shape=(8, 9, 10), fill=0.3)
    a[1:] |= a[0]
    p = rng.random(a.shape[1:])
    f = sitk.STAPLEImageFilter()
    w = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(x.astype(np.uint8)) for x in a]))
    assert F.consensus_dice(p, a) == pytest.approx(ref_dice(p > 0.5, w > 0.5))
    votes = a.sum(0) * 2 > len(a)
    assert F.consensus_dice(p, a, consensus="majority") == pytest.approx(ref_dice(p > 0.5, votes))
    assert F.consensus_dice(p, a, consensus="majority", threshold=0.2) == pytest.approx(
        ref_dice(p > 0.2, votes)
    )


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise():
    y, s = np.ones((2, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match=r"argument `empty`. Expected one of \['one', 'nan'\]. Received: empty='x'"):
        F.generalized_energy_distance(y, s, empty="x")
    with pytest.raises(ValueError, match=r"argument `consensus`.*Received: consensus='mean'"):
        F.consensus_dice(np.ones(4), y, consensus="mean")
    with pytest.raises(ValueError, match=r"argument `samples`.*K >= 1"):
        F.generalized_energy_distance(y, np.ones((0, 4)))
    with pytest.raises(ValueError, match=r"argument `samples`.*K >= 1"):
        F.hungarian_iou(y, np.ones((0, 4)))
    with pytest.raises(ValueError, match=r"`annotations` and `samples`.*spatial"):
        F.generalized_energy_distance(y, np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"`annotations` and `samples`.*spatial"):
        F.hungarian_iou(y, np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"argument `samples`.*binary"):
        F.generalized_energy_distance(y, np.full((3, 4), 0.5))
    with pytest.raises(ValueError, match=r"argument `annotations`.*binary"):
        F.qubiq_score(np.ones(4), np.full((2, 4), 2))
    with pytest.raises(ValueError, match=r"argument `prediction`.*shape"):
        F.qubiq_score(np.ones(5), y)
    with pytest.raises(ValueError, match=r"argument `prediction`.*\[0, 1\]"):
        F.consensus_dice(np.full(4, 1.5), y)
    with pytest.raises(ValueError, match=r"argument `thresholds`"):
        F.qubiq_score(np.ones(4), y, thresholds=())
    with pytest.raises(ValueError, match=r"argument `thresholds`"):
        QUBIQ(thresholds=(0.5, 2.0))
    with pytest.raises(ValueError, match=r"argument `threshold`"):
        ConsensusDice(threshold=-0.1)
    with pytest.raises(ValueError, match=r"argument `map_index`"):
        QUBIQ(map_index=-1)


# ------------------------------------------------------------ Keras metrics
def packed_batch(rng, batch=3, shape=(6, 7), k=4, channels=1):
    """Labels (one rater's), a decoy map in slot 0, soft label in slot 1,
    STAPLE posterior in slot 2; plus the annotations and a prediction."""
    ann = rng.random((batch, channels, k) + shape) < 0.4
    ann[:, :, 1:] |= ann[:, :, :1]
    ann[0] = False  # sample 0: all empty
    move = (0, *range(2, 2 + len(shape)), 1)
    soft = np.stack([[soft_label(ann[b, c]) for c in range(channels)] for b in range(batch)])
    post = np.stack([[staple(ann[b, c]).probability for c in range(channels)] for b in range(batch)])
    soft, post = soft.transpose(move), post.transpose(move)
    labels = ann[:, :, 0].transpose(move).astype("float32")
    decoy = rng.random(labels.shape).astype("float32")
    pred = rng.random(labels.shape).astype("float32")
    pred[0] = 0.05
    return ks.pack_targets(labels, decoy, soft, post), pred, ann


def expected(ann, pred, fn):
    batch, channels = ann.shape[:2]
    return np.array([[fn(pred[b, ..., c], ann[b, c]) for c in range(channels)] for b in range(batch)])


@pytest.mark.backends
@pytest.mark.parametrize("channels", [1, 2])
def test_packed_forms_match_numpy_and_compile(rng, jit, channels):
    y, p, ann = packed_batch(rng, channels=channels)
    want_q = expected(ann, p, F.qubiq_score)
    want_c = expected(ann, p, F.consensus_dice)
    got_q = jit(lambda a, b: F.packed_qubiq(a, b, map_index=1))(y, p)
    got_c = jit(lambda a, b: F.packed_consensus_dice(a, b, map_index=2))(y, p)
    np.testing.assert_allclose(np.asarray(got_q), want_q, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got_c), want_c, rtol=1e-6)
    assert want_q[0].tolist() == [1.0] * channels  # both empty
    # the decoy in slot 0 would score differently
    assert not np.allclose(np.asarray(F.packed_qubiq(y, p, map_index=0)), want_q)


@pytest.mark.backends
def test_metrics_mean_over_samples_and_config_round_trip(rng):
    y, p, ann = packed_batch(rng, batch=4)
    for metric, want in [
        (QUBIQ(thresholds=(0.25, 0.5, 0.75), map_index=1, name="q"),
         expected(ann, p, lambda a, b: F.qubiq_score(a, b, thresholds=(0.25, 0.5, 0.75)))),
        (ConsensusDice(threshold=0.4, map_index=2, name="c"),
         expected(ann, p, lambda a, b: F.consensus_dice(a, b, threshold=0.4))),
    ]:
        metric.update_state(y[:2], p[:2])
        metric.update_state(y[2:], p[2:])
        np.testing.assert_allclose(float(metric.result()), want.mean(), rtol=1e-6)
        clone = type(metric).from_config(metric.get_config())
        restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
        assert clone.get_config() == metric.get_config() == restored.get_config()
        for other in (clone, restored):
            other.update_state(y, p)
            assert float(other.result()) == pytest.approx(float(metric.result()), rel=1e-6)
    config = QUBIQ().get_config()
    assert config["thresholds"] == F.QUBIQ_THRESHOLDS and config["map_index"] == 0


def test_map_reads_and_direction():
    assert map_reads(QUBIQ(map_index=2)) == (MapRead("soft", 2, 1),)
    assert map_reads(ConsensusDice()) == (MapRead("consensus", 0, 1),)
    assert QUBIQ()._direction == "up" and ConsensusDice()._direction == "up"


def small_model(shape):
    inputs = keras.Input(shape)
    outputs = keras.layers.Conv2D(shape[-1], 3, padding="same", activation="sigmoid")(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.backends
def test_compiled_evaluate_fit_and_keras_round_trip(rng, tmp_path):
    keras.utils.set_random_seed(0)
    y, _, ann = packed_batch(rng, batch=4, shape=(8, 8))
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    model = small_model((8, 8, 1))
    jit = "auto" if keras.backend.backend() == "torch" else True
    metrics = [QUBIQ(map_index=1), ConsensusDice(map_index=2)]
    model.compile("adam", loss=ks.Dice(), metrics=metrics, jit_compile=jit)
    history = model.fit(x, y, epochs=1, batch_size=2, verbose=0, validation_data=(x, y))
    assert np.isfinite(history.history["val_qubiq"][0])
    results = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    p = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(results["qubiq"], expected(ann, p, F.qubiq_score).mean(), rtol=1e-5)
    np.testing.assert_allclose(
        results["consensus_dice"], expected(ann, p, F.consensus_dice).mean(), rtol=1e-5
    )
    # callbacks find the direction without mode=
    stop = keras.callbacks.EarlyStopping(monitor="val_qubiq", patience=5)
    check = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_consensus_dice", save_best_only=True
    )
    model.fit(x, y, epochs=1, batch_size=2, verbose=0, validation_data=(x, y), callbacks=[stop, check])
    assert stop.monitor_op is keras.ops.greater and check.monitor_op is keras.ops.greater

    results = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)  # after that fit
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    again = loaded.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    for key in ("qubiq", "consensus_dice"):
        assert again[key] == pytest.approx(results[key], rel=1e-6)
    assert [type(m).__name__ for m in loaded.metrics[-1].metrics] == ["QUBIQ", "ConsensusDice"]


# ------------------------------------------------------------ ignore masks
def masked_batch(rng, batch=3, shape=(6, 7), k=3, channels=2):
    """Annotations, a prediction, the packed target (labels, soft label in
    slot 0, majority consensus in slot 1, ignore mask in slot 2) and the
    mask, all computed here with numpy."""
    ann = rng.random((batch, channels, k) + shape) < 0.4
    move = (0, *range(2, 2 + len(shape)), 1)
    soft = ann.mean(axis=2).transpose(move).astype("float32")
    majority = (ann.sum(axis=2) > k / 2).transpose(move).astype("float32")
    pred = rng.random(soft.shape).astype("float32")
    mask = (rng.random(soft.shape) > 0.3).astype("float32")
    mask[:, 2:4] = 0.0
    packed = ks.pack_targets(majority, soft, majority, mask)
    return packed, pred, ann, majority, mask


def masked_expected(ann, pred, majority, mask, thresholds=F.QUBIQ_THRESHOLDS, threshold=0.5):
    """`ref_qubiq` and `ref_dice` on the counted voxels alone."""
    batch, channels = ann.shape[:2]
    q = np.zeros((batch, channels))
    c = np.zeros((batch, channels))
    for b in range(batch):
        for ch in range(channels):
            keep = mask[b, ..., ch] > 0.5
            q[b, ch] = ref_qubiq(pred[b, ..., ch][keep], ann[b, ch][:, keep], thresholds)
            c[b, ch] = ref_dice(pred[b, ..., ch][keep] > threshold, majority[b, ..., ch][keep])
    return q, c


@pytest.mark.backends
def test_masked_packed_forms_match_the_counted_voxels_and_compile(rng, jit):
    y, p, ann, majority, mask = masked_batch(rng)
    want_q, want_c = masked_expected(ann, p, majority, mask)
    got_q = jit(lambda a, b: F.packed_qubiq(a, b, map_index=0, mask_index=2))(y, p)
    got_c = jit(lambda a, b: F.packed_consensus_dice(a, b, map_index=1, mask_index=2))(y, p)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got_q), want_q, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got_c), want_c, rtol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(F.packed_qubiq(y, p)), want_q)
    # ignored voxels' maps and predictions change nothing
    noise = rng.random(y.shape).astype("float32")
    ignored = np.concatenate([mask == 0] * 3 + [np.zeros_like(mask, bool)], axis=-1)
    y2 = np.where(ignored, noise, y)
    p2 = np.where(mask == 0, 1.0 - p, p)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(F.packed_qubiq(y2, p2, mask_index=2)),
                               want_q, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(
        F.packed_consensus_dice(y2, p2, map_index=1, mask_index=2)), want_c, rtol=1e-6)


def test_masked_metrics_mean_the_counted_values_and_round_trip(rng):
    y, p, ann, majority, mask = masked_batch(rng, batch=4)
    want_q, want_c = masked_expected(ann, p, majority, mask, thresholds=(0.25, 0.5), threshold=0.4)
    for metric, want, kind, slot in [
        (QUBIQ(thresholds=(0.25, 0.5), map_index=0, mask_index=2), want_q, "soft", 0),
        (ConsensusDice(threshold=0.4, map_index=1, mask_index=2), want_c, "consensus", 1),
    ]:
        assert map_reads(metric) == (MapRead(kind, slot, 1), MapRead("mask", 2, 1))
        metric.update_state(y[:2], p[:2])
        metric.update_state(y[2:], p[2:])
        np.testing.assert_allclose(float(metric.result()), want.mean(), rtol=1e-6)
        restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
        assert restored.mask_index == 2 and restored.get_config() == metric.get_config()
    for cls in (QUBIQ, ConsensusDice):
        with pytest.raises(ValueError, match="`mask_index`.*`map_index=1`"):
            cls(map_index=1, mask_index=1)
        with pytest.raises(ValueError, match="`mask_index`"):
            cls(mask_index=-2)
    with pytest.raises(ValueError, match="`mask_index`"):
        F.packed_qubiq(y, p, map_index=0, mask_index=0)
    with pytest.raises(ValueError, match="ignore mask.*pack_targets"):
        F.packed_consensus_dice(y, p, map_index=1, mask_index=5)
