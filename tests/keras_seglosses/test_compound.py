"""Compound losses [004, Eq. 22-25, Sec. 3.2] against numpy transcriptions,
the general `Compound`, serialization inside a saved model, and one compiled
`fit` step covering every loss of the Loss odyssey."""

import keras
import numpy as np
import pytest
from _references import random_case
from scipy import ndimage

import keras_seglosses as ks

EPS = 1e-7


# ------------------------------------------------------------ numpy references
def sums(x, batch):
    s = x.sum(axis=tuple(range(1, x.ndim - 1)))
    return s.sum(0) if batch else s


def np_dice(y, p, s=1.0, batch=True):
    v = (1 - (2 * sums(y * p, batch) + s) / (sums(y + p, batch) + s)).mean(-1)
    return np.full(len(y), v) if batch else v


def np_ce(y, p):
    p = np.clip(p, EPS, 1 - EPS)
    if y.shape[-1] == 1:
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).reshape(len(y), -1).mean(1)
    return -(y * np.log(p)).sum(-1).reshape(len(y), -1).mean(1)


def np_focal(y, p, gamma=2.0):
    p = np.clip(p, EPS, 1 - EPS)
    if y.shape[-1] == 1:
        v = -(y * (1 - p) ** gamma * np.log(p) + (1 - y) * p**gamma * np.log(1 - p))
    else:
        v = -(y * (1 - p) ** gamma * np.log(p)).sum(-1)
    return v.reshape(len(y), -1).mean(1)


def np_topk(y, p, k=10):
    p = np.clip(p, EPS, 1 - EPS)
    if y.shape[-1] == 1:
        v = -(y * np.log(p) + (1 - y) * np.log(1 - p)).ravel()
    else:
        v = -(y * np.log(p)).sum(-1).ravel()
    n = int(np.ceil(k / 100 * v.size))
    return np.full(len(y), np.sort(v)[::-1][:n].mean())


def np_signed(y):
    out = np.zeros_like(y)
    for b in range(y.shape[0]):
        for c in range(y.shape[-1]):
            m = y[b, ..., c] > 0.5
            if m.any() and not m.all():
                out[b, ..., c] = np.where(
                    m, -ndimage.distance_transform_edt(m), ndimage.distance_transform_edt(~m)
                )
    return out


def fg(x):
    return x[..., 1:] if x.shape[-1] > 1 else x


def np_boundary(y, p):
    return fg(np_signed(y) * p).reshape(len(y), -1, fg(y).shape[-1]).mean(1).mean(-1)


def np_hd(y, p):
    w = np_signed(y) ** 2 + np_signed((p > 0.5).astype(float)) ** 2
    return fg((p - y) ** 2 * w).reshape(len(y), -1, fg(y).shape[-1]).mean(1).mean(-1)


def np_exp_log(y, p, w_dice=0.8, w_ce=0.2, gamma=0.3, s=1.0):
    """Eq. 23 with unit class weights, per-sample Dice."""
    dice_c = (2 * sums(y * p, False) + s) / (sums(y + p, False) + s)
    dice_term = ((-np.log(dice_c)) ** gamma).mean(-1)
    pc = np.clip(p, EPS, 1 - EPS)
    if y.shape[-1] == 1:
        ptrue = np.where(y > 0.5, pc, 1 - pc)
    else:
        ptrue = (y * pc).sum(-1, keepdims=True)
    ce_term = ((-np.log(ptrue)) ** gamma).reshape(len(y), -1).mean(1)
    return w_dice * dice_term + w_ce * ce_term


# --------------------------------------------------------------------- inputs
KINDS = {"sigmoid2d": ((2, 6, 7, 1), False), "softmax3d": ((2, 4, 5, 6, 3), True)}


def make(rng, kind):
    y, p, logits = random_case(rng, *KINDS[kind])
    return y, np.clip(p, 1e-3, 1 - 1e-3), logits


CASES = {
    "dice_ce": (lambda: ks.DiceCE(w_dice=0.7, w_ce=1.3),
                lambda y, p: 0.7 * np_dice(y, p) + 1.3 * np_ce(y, p)),
    "dice_focal": (lambda: ks.DiceFocal(), lambda y, p: np_dice(y, p) + np_focal(y, p)),
    "dice_topk": (lambda: ks.DiceTopK(k=10), lambda y, p: np_dice(y, p) + np_topk(y, p, 10)),
    "dice_boundary": (lambda: ks.DiceBoundary(alpha=0.3),
                      lambda y, p: 0.3 * np_dice(y, p) + 0.7 * np_boundary(y, p)),
    "dice_hd": (lambda: ks.DiceHD(w_hd=0.5), lambda y, p: np_dice(y, p) + 0.5 * np_hd(y, p)),
    "exp_log": (lambda: ks.ExpLog(), np_exp_log),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", list(CASES))
def test_value_matches_equation(case, kind, rng):
    y, p, logits = make(rng, kind)
    factory, ref = CASES[case]
    loss = factory()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss.call(y, p)), ref(y, p), rtol=1e-5, atol=1e-6
    )
    if case not in ("dice_hd",):  # d_S thresholds p vs. softmax(logits): same
        logit_loss = type(loss).from_config({**loss.get_config(), "from_logits": True})
        q = keras.ops.convert_to_numpy(
            keras.ops.sigmoid(logits) if y.shape[-1] == 1 else keras.ops.softmax(logits)
        )
        np.testing.assert_allclose(
            float(logit_loss(y, logits)), float(loss(y, q)), rtol=1e-4, atol=1e-6
        )


@pytest.mark.backends
@pytest.mark.parametrize("case", ["exp_log", "dice_boundary"])
def test_compiled_gradient_is_finite_and_matches_reference(case, rng, jit, autodiff):
    y, p, _ = make(rng, "sigmoid2d")
    factory, ref = CASES[case]
    loss = factory()
    y32, p32 = y.astype("f4"), p.astype("f4")
    value = keras.ops.convert_to_numpy(jit(loss.call)(y32, p32))
    np.testing.assert_allclose(value, ref(y, p), rtol=1e-5, atol=1e-6)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
    points = rng.choice(p.size, 8, replace=False)
    for n, i in enumerate(zip(*np.unravel_index(points, p.shape))):
        hi, lo = p.copy(), p.copy()
        hi[i] += 1e-6
        lo[i] -= 1e-6
        expected = (ref(y, hi).sum() - ref(y, lo).sum()) / 2e-6
        np.testing.assert_allclose(grad[i], expected, rtol=2e-3, atol=2e-5)
    # at a perfect prediction the fractional powers of ExpLog stay finite
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(y32)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("case", ["dice_ce", "dice_focal", "dice_topk", "dice_hd"])
def test_gradient_matches_reference(case, rng, autodiff):
    y, p, _ = make(rng, "softmax3d")
    factory, ref = CASES[case]
    loss = factory()
    y32, p32 = y.astype("f4"), p.astype("f4")
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
    # away from 0.5, so that d_S (no gradient) does not change under the step
    points = [i for i in rng.permutation(p.size) if abs(p.flat[i] - 0.5) > 1e-3][:8]
    for i in zip(*np.unravel_index(points, p.shape)):
        hi, lo = p.copy(), p.copy()
        hi[i] += 1e-6
        lo[i] -= 1e-6
        expected = (ref(y, hi).sum() - ref(y, lo).sum()) / 2e-6
        np.testing.assert_allclose(grad[i], expected, rtol=2e-3, atol=2e-5)


def test_perfect_prediction_is_minimal(rng):
    for kind in KINDS:
        y, p, _ = make(rng, kind)
        for case, (factory, _) in CASES.items():
            loss = factory()
            best = float(loss(y, y))
            # ExpLog's CE term is (-log s)^0.3 at s = 1 - eps (Keras' clipping)
            floor = 0.2 * (-np.log(np.float32(1 - EPS))) ** 0.3 if case == "exp_log" else 0.0
            if case != "dice_boundary":  # its minimum is the boundary term's
                assert abs(best - floor) < 1e-5, (case, kind, best)
            for other in (p, np.clip(y + 0.2 * p, 0, 1), 1 - y):
                assert float(loss(y, other)) >= best - 1e-6, (case, kind)


def test_general_compound_is_the_weighted_sum(rng):
    y, p, _ = make(rng, "sigmoid2d")
    members = [
        (ks.Dice(), 0.5), (ks.CrossEntropy(), 2.0), (keras.losses.BinaryCrossentropy(), 1.0)
    ]
    loss = ks.Compound(members)
    expected = 0.5 * np_dice(y, p) + 2.0 * np_ce(y, p) + np_ce(y, p)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.call(y, p)), expected, rtol=1e-5)
    # sample weights act per sample
    sw = np.array([1.0, 0.0])
    np.testing.assert_allclose(
        float(loss(y, p, sample_weight=sw)), expected[0] / 2, rtol=1e-5
    )


def test_compound_serializes_its_members(rng):
    y, p, _ = make(rng, "softmax3d")
    loss = ks.Compound([(ks.Tversky(alpha=0.2, beta=0.8), 0.4), (ks.TopK(k=5), 1.5),
                        (ks.Compound([(ks.IoU(), 1.0)]), 2.0)])
    config = keras.saving.serialize_keras_object(loss)
    clone = keras.saving.deserialize_keras_object(config)
    assert [type(m) for m, _ in clone.members] == [ks.Tversky, ks.TopK, ks.Compound]
    assert clone.members[0][0].alpha == 0.2 and clone.members[1][1] == 1.5
    np.testing.assert_allclose(float(clone(y, p)), float(loss(y, p)), rtol=1e-6)


@pytest.mark.parametrize(
    "loss",
    [ks.DiceCE(w_ce=0.5, batch=False, squared=True), ks.DiceFocal(gamma=1.0, alpha=0.3),
     ks.DiceTopK(k=20, smooth=0.5), ks.DiceBoundary(alpha=0.4, spacing=[1.0, 2.0]),
     ks.DiceHD(hd_alpha=1.0, w_dice=2.0), ks.ExpLog(gamma=0.5, class_weights=[1.0, 3.0])],
    ids=lambda l: l.name,
)
def test_config_round_trip(loss, rng):
    y, p, _ = make(rng, "sigmoid2d")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    np.testing.assert_allclose(float(clone(y, p)), float(loss(y, p)), rtol=1e-6)


@pytest.mark.parametrize(
    "make_loss, match",
    [
        (lambda: ks.Compound([]), "`losses`"),
        (lambda: ks.Compound([ks.Dice()]), "`losses`"),
        (lambda: ks.Compound([("dice", 1.0)]), "`losses`"),
        (lambda: ks.Compound([(ks.Dice(), -1.0)]), "`weight`"),
        (lambda: ks.DiceCE(w_ce=-1), "`w_ce`"),
        (lambda: ks.DiceBoundary(alpha=1.5), "`alpha`"),
        (lambda: ks.ExpLog(gamma=0), "`gamma`"),
        (lambda: ks.DiceTopK(k=0), "`k`"),
    ],
)
def test_bad_hyperparameters_raise(make_loss, match):
    with pytest.raises(ValueError, match=match):
        make_loss()


# ---------------------------------------------------------- training, saving
def every_loss():
    """One compound holding every base loss of the Loss odyssey, so a single
    compiled step exercises them all (DiceCE, DiceFocal, DiceTopK and DiceHD
    only add up members already here)."""
    return ks.Compound([
        (ks.CrossEntropy(), 1.0), (ks.WeightedCrossEntropy([1.0, 2.0]), 1.0),
        (ks.TopK(), 1.0), (ks.TopK(threshold=0.7), 1.0), (ks.Focal(alpha=0.25), 1.0),
        (ks.DistancePenalizedCrossEntropy(), 1.0), (ks.SensitivitySpecificity(), 1.0),
        (ks.Dice(squared=True), 1.0), (ks.IoU(), 1.0), (ks.Lovasz(batch=True), 1.0),
        (ks.Tversky(), 1.0), (ks.FocalTversky(), 1.0), (ks.AsymmetricSimilarity(), 1.0),
        (ks.GeneralizedDice(), 1.0), (ks.PenaltyGeneralizedDice(), 1.0),
        (ks.Boundary(), 0.1), (ks.HausdorffDT(), 0.01), (ks.DiceBoundary(alpha=0.5), 1.0),
        (ks.ExpLog(), 1.0),
    ])


def tiny_model():
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.backends
def test_one_compiled_fit_step_with_every_loss(rng, tmp_path):
    x = rng.normal(size=(4, 8, 8, 1)).astype("f4")
    y = (x > 0.3).astype("f4")
    model = tiny_model()
    jit = "auto" if keras.backend.backend() == "torch" else True
    model.compile("adam", loss=every_loss(), jit_compile=jit)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: all registered
    np.testing.assert_allclose(
        float(loaded.loss(y, loaded.predict(x, verbose=0))),
        float(model.loss(y, model.predict(x, verbose=0))), rtol=1e-5,
    )


# --------------------------------------------------- one target, many readers
def _rp_target(rng, shape=(2, 10, 12, 8, 1)):
    y = np.zeros(shape, "float32")
    y[0, 2:7, 3:9, 2:6] = 1.0
    y[1, 4:9, 1:6, 3:8] = 1.0
    m = np.where(y > 0, rng.choice([1.0, 0.5], shape), -1.0).astype("float32")
    return y, m, rng.uniform(0.05, 0.95, shape).astype("float32")


@pytest.mark.backends
def test_rpdl_boundary_region_wise_on_one_packed_target(rng, jit):
    """The compound of the issue: on `pack_targets(labels, M)` its value is
    the sum of its members called alone (Boundary and RegionWise compute
    their maps), compiled too; pointed at packed maps through a layout, the
    same value."""
    y, m, p = _rp_target(rng)
    members = [ks.RewardPenaltyDice(), ks.Boundary(), ks.RegionWise()]
    loss = ks.Compound([(members[0], 1.0), (members[1], 0.5), (members[2], 2.0)])
    packed = ks.pack_targets(y, m)
    alone = [float(keras.ops.convert_to_numpy(f(t, p)))
             for f, t in zip(members, (packed, y, y))]
    want = alone[0] + 0.5 * alone[1] + 2.0 * alone[2]
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loss(packed, p))), want,
                               rtol=1e-5)
    compiled = jit(lambda t, q: loss.call(t, q))(packed, p)
    np.testing.assert_allclose(float(np.mean(keras.ops.convert_to_numpy(compiled))), want,
                               rtol=1e-5)
    layout = ks.TargetLayout(("rpmap", "phi", "rrw"), slots={"rrw": 2})
    pointed = ks.Compound([
        (ks.RewardPenaltyDice(map_index=layout.index("rpmap")), 1.0),
        (ks.Boundary(map_index=layout.index("phi")), 0.5),
        (ks.RegionWise(map_index=layout.index("rrw")), 2.0),
    ])
    layout.check(pointed, 1)
    full = layout.pack(y, rpmap=m, phi=np.asarray(ks.signed_distance_map(y)),
                       rrw=np.asarray(ks.rrw_map(y)))
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(pointed(full, p))), want,
                               rtol=1e-5)


def test_members_reading_one_slot_as_different_maps_are_refused():
    with pytest.raises(ValueError, match=r"RewardPenaltyDice\(name='reward_penalty_dice'\) "
                                         r"and Boundary\(name='boundary'\) both read packed "
                                         r"map slot 0, as 'rpmap' and 'phi'"):
        ks.Compound([(ks.RewardPenaltyDice(), 1.0), (ks.Boundary(map_index=0), 1.0)])
    # a sigmoid channel's region-wise map takes two slots: the clash appears
    # once the channel count is known, at the first call
    loss = ks.Compound([(ks.RegionWise(map_index=0), 1.0), (ks.Boundary(map_index=1), 1.0)])
    y = np.zeros((1, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match="both read packed map slot 1, as 'rrw' and 'phi'"):
        loss(ks.pack_targets(y, y, y), y)
    # the same kind at the same slot is one map, read twice
    ks.Compound([(ks.RewardPenaltyDice(), 1.0), (ks.RewardPenaltyDice(smooth=0.0), 1.0)])
    with pytest.raises(ValueError, match="first channels of `y_true` as 'legacy'"):
        ks.Compound([(ks.LegacyRewardPenaltyDice(), 1.0), (ks.Dice(), 1.0)])


def test_fixed_compounds_are_compounds_with_one_from_logits(rng):
    """DiceCE & co. are `Compound`s of fixed members; `from_logits` reaches
    every member; their configs are the flat arguments (as saved by 0.1.0)."""
    loss = ks.DiceHD(w_hd=0.5, smooth=0.0, hd_alpha=1.0, from_logits=True)
    assert isinstance(loss, ks.Compound)
    (dice, _), (hd, w) = loss.members
    assert dice.from_logits and hd.from_logits and hd.alpha == 1.0 and w == 0.5
    saved_by_0_1_0 = {  # a DiceHD config as the previous release wrote it
        "name": "dice_hd", "reduction": "sum_over_batch_size", "w_dice": 1.0, "w_hd": 0.5,
        "hd_alpha": 1.0, "smooth": 0.0, "squared": False, "batch": True,
        "from_logits": True, "include_background": True, "map_index": 0, "spacing": None,
    }
    clone = ks.DiceHD.from_config(saved_by_0_1_0)
    assert clone.members[1][0].map_index == 0
    new_in_0_2_0 = {"soft_label", "mask_index"}
    assert set(clone.get_config()) == set(saved_by_0_1_0) | new_in_0_2_0
    with pytest.raises(TypeError, match="unexpected keyword argument 'w_ce'"):
        ks.DiceHD(w_ce=1.0)
