"""RPDL paper losses against numpy transcriptions of [000, Eq. 1-4]."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_seglosses as ks

SHAPES = [(3, 6, 7, 1), (2, 5, 4, 6, 1), (2, 6, 5, 3), (2, 4, 5, 3, 3)]


# ------------------------------------------------------------ numpy references
def sums(x, batch):
    axes = tuple(range(0 if batch else 1, x.ndim - 1))
    return x.sum(axis=axes, dtype=np.float64)


def per_sample(per_class, n, batch, include_background=True):
    if not include_background and per_class.shape[-1] > 1:
        per_class = per_class[..., 1:]
    v = per_class.mean(-1)
    return np.full(n, v) if batch else v


def np_wbce(y, p, w, reduce="mean"):
    eps = 1e-7
    p = np.clip(p, eps, 1 - eps)
    ce = -(w * y * np.log(p) + (1 - y) * np.log(1 - p))
    ce = ce.reshape(len(y), -1)
    return ce.mean(1) if reduce == "mean" else ce.sum(1)


def np_dice(y, p, s, squared, batch, include_background=True):
    inter = sums(y * p, batch)
    den = sums(y**2 + p**2, batch) if squared else sums(y, batch) + sums(p, batch)
    return per_sample(1 - (2 * inter + s) / (den + s), len(y), batch, include_background)


def np_rpdl(y, p, m, s, batch):
    num = 2 * sums(y * p * m, batch) + s
    den = sums(y * np.abs(m), batch) + sums(p * np.abs(m), batch) + s
    return per_sample(1 - num / den, len(y), batch)


def eq4_gradient(y, p, m):
    """[000, Eq. 4] with s = 0 and N the voxels of the whole mini-batch."""
    a = np.sum(y * p * m)
    b = np.sum(y * np.abs(m)) + np.sum(p * np.abs(m))
    return 2 * (np.abs(m) * a - y * m * b) / b**2


def make(rng, shape, softmax=False):
    c = shape[-1]
    if softmax and c > 1:
        y = np.eye(c, dtype="float32")[rng.integers(0, c, shape[:-1])]
        logits = rng.normal(size=shape).astype("float32")
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    else:
        y = (rng.random(shape) > 0.6).astype("float32")
        logits = rng.normal(size=shape).astype("float32")
        p = 1 / (1 + np.exp(-logits))
    ann = (rng.random((4,) + shape) > 0.5) | y[None].astype(bool)
    m = np.stack([ks.reward_penalty_map(ann[:, b]) for b in range(shape[0])])
    return y, p.astype("float32"), logits, m.astype("float32")


def call(loss, y, p):
    return ops.convert_to_numpy(loss.call(ops.convert_to_tensor(y), ops.convert_to_tensor(p)))


# ----------------------------------------------------------------- values
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("squared", [True, False])
def test_dice_matches_equation(rng, shape, batch, squared):
    y, p, _, m = make(rng, shape, softmax=True)
    for s in (0.0, 1.0):
        got = call(ks.Dice(smooth=s, squared=squared, batch=batch), ks.pack_targets(y, m), p)
        np.testing.assert_allclose(got, np_dice(y, p, s, squared, batch), rtol=1e-5)


def test_defaults_are_the_original_code(rng):
    # The released dice_coefficient_loss and rp_dice_loss: smooth 1, one sum
    # over the whole mini-batch (every sample carries that value).
    assert {k: ks.Dice().get_config()[k] for k in ("smooth", "squared", "batch", "from_logits", "include_background")} == {
        "smooth": 1.0, "squared": False, "batch": True, "from_logits": False, "include_background": True}
    assert {k: ks.RewardPenaltyDice().get_config()[k] for k in ("smooth", "batch", "from_logits")} == {
        "smooth": 1.0, "batch": True, "from_logits": False}
    y, p, _, m = make(rng, (3, 5, 5, 5, 1))
    want = 1 - (2 * np.sum(y * p) + 1) / (np.sum(y) + np.sum(p) + 1)
    np.testing.assert_allclose(call(ks.Dice(), y, p), np.full(3, want), rtol=1e-5)
    want = 1 - (2 * np.sum(y * p * m) + 1) / (np.sum(y * np.abs(m)) + np.sum(p * np.abs(m)) + 1)
    np.testing.assert_allclose(call(ks.RewardPenaltyDice(), ks.pack_targets(y, m), p), np.full(3, want), rtol=1e-5)


def test_dice_exclude_background(rng):
    y, p, _, _ = make(rng, (2, 5, 5, 3), softmax=True)
    got = call(ks.Dice(batch=False, include_background=False), y, p)
    np.testing.assert_allclose(got, np_dice(y, p, 1.0, False, False, False), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [True, False])
def test_rpdl_matches_equation(rng, shape, batch):
    y, p, _, m = make(rng, shape)
    got = call(ks.RewardPenaltyDice(batch=batch), ks.pack_targets(y, m), p)
    np.testing.assert_allclose(got, np_rpdl(y, p, m, 1.0, batch), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_wbce_matches_equation(rng, shape, reduce):
    # C > 1: one-hot labels and softmax probabilities (from_logits: softmax).
    y, p, logits, m = make(rng, shape, softmax=True)
    loss = ks.WeightedBinaryCrossentropy(pos_weight=23.485, voxel_reduction=reduce)
    want = np_wbce(y, p, 23.485, reduce)
    np.testing.assert_allclose(call(loss, ks.pack_targets(y, m), p), want, rtol=1e-4)
    logit_loss = ks.WeightedBinaryCrossentropy(23.485, reduce, from_logits=True)
    np.testing.assert_allclose(call(logit_loss, y, logits), want, rtol=1e-4)


def test_wbce_original_summed_variant(rng):
    # The released code: clip at 1e-6, w = 23.485, one sum over the whole batch.
    y, p, _, _ = make(rng, (3, 5, 5, 5, 1))
    p[0, 0, 0, 0] = 0.0  # exercises the clipping
    q = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    want = -(23.485 * np.sum(y * np.log(q)) + np.sum((1 - y) * np.log(1 - q)))
    eps = keras.config.epsilon()
    keras.config.set_epsilon(1e-6)
    try:
        loss = ks.WeightedBinaryCrossentropy(ks.ORIGINAL_POS_WEIGHT, "sum", reduction="sum")
        got = float(loss(y, p))
    finally:
        keras.config.set_epsilon(eps)
    assert ks.ORIGINAL_POS_WEIGHT == 23.485
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_wbce_unit_weight_is_keras_binary_crossentropy(rng):
    y, p, _, _ = make(rng, (2, 4, 4, 1))
    want = keras.losses.BinaryCrossentropy()(y, p)
    np.testing.assert_allclose(float(ks.WeightedBinaryCrossentropy()(y, p)), float(want), rtol=1e-5)


def np_legacy(h, p, s, batch):
    num = 2 * sums(h * p, batch) + s
    return per_sample(1 - num / (sums(np.abs(h), batch) + sums(p, batch) + s), len(h), batch)


def test_legacy_loss_on_encoded_target(rng):
    # The released code's loss: one sum over the whole batch.
    ann = (rng.random((7, 2, 6, 6, 6)) > 0.5).astype("float32")
    h = np.stack([ks.legacy_reward_penalty_targets(ann[0, b], ann[:, b]) for b in range(2)])[..., None]
    p = rng.random(h.shape).astype("float32")
    want = 1 - (2 * np.sum(h * p) + 1) / (np.sum(np.abs(h)) + np.sum(p) + 1)
    np.testing.assert_allclose(float(ks.LegacyRewardPenaltyDice()(h, p)), want, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [True, False])
def test_legacy_loss_matches_formula(rng, shape, batch):
    _, p, _, _ = make(rng, shape)
    h = rng.choice([-7 / 6, 0.0, 2 / 6, 1.0], size=shape).astype("float32")
    got = call(ks.LegacyRewardPenaltyDice(smooth=0.5, batch=batch), h, p)
    np.testing.assert_allclose(got, np_legacy(h, p, 0.5, batch), rtol=1e-5)


@pytest.mark.backends
def test_compiled_values_match_equations(rng, jit):
    # C = 3 (per-class columns); the C = 1 graph is compiled in the gradient
    # tests. One compiled function for all losses keeps this quick.
    y, p, _, m = make(rng, (2, 5, 4, 3, 3), softmax=True)
    yt, h = ks.pack_targets(y, m), y * m
    modes = (True, False)
    rpdl = [ks.RewardPenaltyDice(batch=b) for b in modes]
    dice = [ks.Dice(batch=b) for b in modes]
    legacy = [ks.LegacyRewardPenaltyDice(batch=b) for b in modes]
    wbce = ks.WeightedBinaryCrossentropy(2.0)

    def all_losses(yt, h, p):
        out = [loss.call(yt, p) for loss in rpdl + dice]
        return out + [loss.call(h, p) for loss in legacy] + [wbce.call(yt, p)]

    got = [ops.convert_to_numpy(v) for v in jit(all_losses)(yt, h, p)]
    want = [np_rpdl(y, p, m, 1.0, b) for b in modes] + [np_dice(y, p, 1.0, False, b) for b in modes]
    want += [np_legacy(h, p, 1.0, b) for b in modes] + [np_wbce(y, p, 2.0)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5)


@pytest.mark.backends
@pytest.mark.parametrize("batch", [True, False])
def test_from_logits_equals_probabilities(rng, jit, batch):
    for shape, softmax in [((2, 5, 5, 1), False), ((2, 5, 5, 3), True)]:
        y, p, logits, m = make(rng, shape, softmax)
        yt = ks.pack_targets(y, m)
        for cls in (ks.Dice, ks.RewardPenaltyDice):
            a = jit(cls(batch=batch, from_logits=True))(yt, logits)
            b = jit(cls(batch=batch))(yt, p)
            np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


# ------------------------------------------------------------- properties
def test_rpdl_perfect_prediction_of_consensus_is_minimal(rng):
    ann = (rng.random((3, 1, 8, 8, 1)) > 0.5).astype("float32")
    ann[:] = ann[0]  # all experts agree
    m = ks.reward_penalty_map(ann)
    y = ann[0]
    loss = ks.RewardPenaltyDice(smooth=0.0)
    assert float(loss(ks.pack_targets(y, m), y)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(ks.pack_targets(y, m), 1 - y)) == pytest.approx(1.0)


def test_rpdl_penalizes_untouched_voxels_more_than_rare_ones():
    # Two experts; voxel 0 both mark, voxel 1 only the other, voxel 2 none.
    ann = np.array([[1, 0, 0], [1, 1, 0]], "float32")
    m = ks.reward_penalty_map(ann)[None, :, None]
    y = ann[0][None, :, None]
    loss = ks.RewardPenaltyDice(smooth=0.0)
    rare = float(loss(ks.pack_targets(y, m), np.array([[[1.0], [1.0], [0.0]]])))
    untouched = float(loss(ks.pack_targets(y, m), np.array([[[1.0], [0.0], [1.0]]])))
    # 1 - 2/(1 + 1.5) vs 1 - 2/(1 + 2): the penalty weighs |M| = 1 > 0.5.
    assert rare == pytest.approx(0.2) and untouched == pytest.approx(1 / 3)


def test_rpdl_reduces_to_dice_without_penalty_and_unit_map(rng):
    y, p, _, _ = make(rng, (2, 5, 5, 5, 1))
    ones = np.ones_like(y)
    np.testing.assert_allclose(
        float(ks.RewardPenaltyDice()(ks.pack_targets(y, ones), p)), float(ks.Dice()(y, p)), rtol=1e-6
    )


def test_rpdl_bounds(rng):
    for _ in range(5):
        y, p, _, m = make(rng, (2, 4, 4, 4, 1))
        v = float(ks.RewardPenaltyDice(smooth=0.0)(ks.pack_targets(y, m), p))
        # y is one of the annotations, so y*M >= 0 and 2yP|M| <= (y + P)|M|.
        assert 0.0 <= v <= 1.0


# --------------------------------------------------------------- gradient
@pytest.mark.backends
@pytest.mark.parametrize("shape", [(2, 6, 6, 6, 1), (3, 7, 5, 1)])
def test_rpdl_gradient_is_eq4(rng, autodiff, shape):
    y, p, _, m = make(rng, shape)
    yt = ks.pack_targets(y, m)
    loss = ks.RewardPenaltyDice(smooth=0.0)
    grad = autodiff(lambda pred: loss(yt, pred))(p)
    np.testing.assert_allclose(grad, eq4_gradient(y, p, m), rtol=1e-4, atol=1e-8)
    assert np.all(np.isfinite(grad))


@pytest.mark.backends
def test_rpdl_per_sample_gradient_is_eq4_per_sample(rng, autodiff):
    # batch=False: Keras' mean over samples of Eq. 3, so Eq. 4 per sample / B.
    y, p, _, m = make(rng, (3, 5, 4, 6, 1))
    yt = ks.pack_targets(y, m)
    loss = ks.RewardPenaltyDice(smooth=0.0, batch=False)
    grad = autodiff(lambda pred: loss(yt, pred))(p)
    want = np.stack([eq4_gradient(y[b], p[b], m[b]) for b in range(3)]) / 3
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------ Keras usage
def _tiny_model(channels=1, activation="sigmoid"):
    inputs = keras.Input((8, 8, 8, 1))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv3D(channels, 1, activation=activation, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def _data(rng, n=4):
    x = rng.random((n, 8, 8, 8, 1)).astype("float32")
    ann = (rng.random((3, n, 8, 8, 8)) > 0.6).astype("float32")
    m = np.stack([ks.reward_penalty_map(ann[:, b]) for b in range(n)])
    return x, ks.pack_targets(ann[0][..., None], m[..., None])


ALL_LOSSES = [
    ks.RewardPenaltyDice(),
    ks.Dice(batch=False, squared=True),
    ks.WeightedBinaryCrossentropy(pos_weight=3.0),
]


@pytest.mark.backends
def test_fit_with_packed_targets_compiled(rng):
    x, y = _data(rng)
    for loss in ALL_LOSSES:
        model = _tiny_model()
        jit = "auto" if keras.backend.backend() == "torch" else True
        model.compile("adam", loss=loss, metrics=[ks.metrics.Dice(), ks.metrics.RPD()], jit_compile=jit)
        hist = model.fit(x, y, batch_size=2, epochs=2, verbose=0).history
        assert np.all(np.isfinite(hist["loss"])) and "rpd" in hist
        assert hist["loss"][-1] < hist["loss"][0] + 0.05


def test_mixed_float16_gives_finite_float32_losses(rng):
    keras.config.set_dtype_policy("mixed_float16")
    x, y = _data(rng)
    model = _tiny_model()
    model.compile("adam", loss=ks.RewardPenaltyDice(), jit_compile=True)
    hist = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])
    pred = model(x)
    for loss in ALL_LOSSES:
        v = loss(y, ops.cast(pred, "float16"))
        assert keras.backend.standardize_dtype(v.dtype) == "float32" and np.isfinite(float(v))


def test_keras_save_and_load_without_custom_objects(rng, tmp_path):
    x, y = _data(rng)
    model = _tiny_model()
    model.compile(
        "adam",
        loss=ks.RewardPenaltyDice(smooth=0.5, batch=False),
        metrics=[ks.metrics.Dice(threshold=0.4), ks.metrics.RPD()],
    )
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert isinstance(loaded.loss, ks.RewardPenaltyDice)
    assert loaded.loss.smooth == 0.5 and loaded.loss.batch is False
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-5)


@pytest.mark.parametrize(
    "loss",
    [
        ks.WeightedBinaryCrossentropy(pos_weight=2.0, voxel_reduction="sum", from_logits=True),
        ks.Dice(smooth=0.1, squared=True, batch=False, from_logits=True, include_background=False),
        ks.RewardPenaltyDice(smooth=0.0, batch=False, from_logits=True),
        ks.LegacyRewardPenaltyDice(smooth=2.0, batch=False),
    ],
)
def test_config_round_trip_gives_same_outputs(rng, loss):
    y, _, logits, m = make(rng, (2, 4, 4, 4, 1))
    yt = ks.pack_targets(y, m)
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    np.testing.assert_allclose(float(clone(yt, logits)), float(loss(yt, logits)), rtol=1e-7)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    np.testing.assert_allclose(float(restored(yt, logits)), float(loss(yt, logits)), rtol=1e-7)


def test_sample_weight_per_sample(rng):
    y, p, _, m = make(rng, (3, 4, 4, 1))
    yt = ks.pack_targets(y, m)
    w = np.array([1.0, 0.0, 2.0], "float32")
    want = np.sum(np_rpdl(y, p, m, 1.0, False) * w) / 3
    got = ks.RewardPenaltyDice(batch=False)(yt, p, sample_weight=w)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


# -------------------------------------------------------------- bad input
def test_rpdl_without_map_names_pack_targets():
    with pytest.raises(ValueError, match=r"expected at least 2 channels.*pack_targets"):
        ks.RewardPenaltyDice()(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"differ in batch or spatial shape.*\(1, 4, 5, 2\)"):
        ks.RewardPenaltyDice()(np.zeros((1, 4, 5, 2)), np.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="same rank"):
        ks.Dice()(np.zeros((1, 4, 4)), np.zeros((1, 4, 4, 1)))


@pytest.mark.parametrize(
    "make_loss, arg",
    [
        (lambda: ks.Dice(smooth=-1), "smooth"),
        (lambda: ks.RewardPenaltyDice(smooth="a"), "smooth"),
        (lambda: ks.WeightedBinaryCrossentropy(pos_weight=-2), "pos_weight"),
        (lambda: ks.WeightedBinaryCrossentropy(voxel_reduction="max"), "voxel_reduction"),
    ],
)
def test_bad_hyperparameters(make_loss, arg):
    with pytest.raises(ValueError, match=f"Invalid value for argument `{arg}`.*Received: {arg}="):
        make_loss()
