"""Region-wise loss [002, Eq. 1-4]: values against numpy with scipy maps, the
sign property of RRW gradients [002, Sec. 3.3], packed maps, Keras usage."""

import keras
import numpy as np
import pytest
from _references import np_region_map, perturb_ignored, random_ignore_mask
from scipy import ndimage

import keras_seglosses as ks


scipy_map = np_region_map  # [002, Eq. 3-4] maps with scipy's EDT


def np_region_wise(y, probs, z):
    """Eq. 1 with the (NK)^-1 normalization: one value per sample."""
    return (probs * z).reshape(len(y), -1).mean(-1)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make(rng, shape):
    c = shape[-1]
    noise = ndimage.uniform_filter(rng.random(shape), size=(1,) + (3,) * (len(shape) - 2) + (1,))
    y = np.eye(c, dtype="float32")[np.argmax(noise, -1)]
    logits = (2 * rng.normal(size=shape)).astype("float32")
    return y, logits


def np_(x):
    return keras.ops.convert_to_numpy(x)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("kind", ["rrw", "boundary", "ac"])
@pytest.mark.parametrize(
    "shape, spacing", [((2, 7, 6, 3), None), ((2, 4, 5, 6, 4), [1.0, 2.0, 1.5])]
)
def test_matches_equation_1(rng, kind, shape, spacing):
    y, logits = make(rng, shape)
    loss = ks.RegionWise(map=kind, spacing=spacing, from_logits=True)
    want = np_region_wise(y, softmax(logits), scipy_map(y, kind, spacing))
    np.testing.assert_allclose(np_(loss.call(y, logits)), want, rtol=1e-5, atol=1e-6)
    probs = ks.RegionWise(map=kind, spacing=spacing)
    got = probs.call(y, softmax(logits).astype("float32"))
    np.testing.assert_allclose(np_(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["rrw", "boundary", "ac"])
def test_binary_sigmoid_is_two_classes(rng, kind):
    y = (rng.random((2, 6, 6, 1)) > 0.6).astype("float32")
    y[1] = 0.0  # a sample without foreground
    logits = rng.normal(size=y.shape).astype("float32")
    p = 1 / (1 + np.exp(-logits))
    two_y = np.concatenate([1 - y, y], -1)
    want = np_region_wise(y, np.concatenate([1 - p, p], -1), scipy_map(two_y, kind))
    got = np_(ks.RegionWise(map=kind, from_logits=True).call(y, logits))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(got))


def test_perfect_prediction_bounds():
    """AC: a perfect prediction costs 0. RRW: a perfect prediction costs the
    mean of the normalized inner distances (negative), a fully wrong one 1/K."""
    y = np.zeros((1, 5, 5, 2), "float32")
    y[..., 0] = 1.0
    y[0, 1:4, 1:4] = [0.0, 1.0]
    assert float(ks.RegionWise(map="ac")(y, y)) == 0.0
    z = scipy_map(y, "rrw")
    want = (y * z).mean()
    np.testing.assert_allclose(float(ks.RegionWise()(y, y)), want, rtol=1e-6)
    assert want < 0
    np.testing.assert_allclose(float(ks.RegionWise()(y, 1.0 - y)), 0.5, rtol=1e-6)


# ----------------------------------------------------- RRW gradient property
@pytest.mark.backends
@pytest.mark.parametrize("shape", [(2, 6, 6, 3), (1, 4, 4, 4, 4)])
def test_rrw_gradient_has_one_negative_component_the_true_class(rng, shape, autodiff):
    """[002, Sec. 3.3]: with RRW maps, for every voxel, d L / d phi has
    exactly one negative component, at the true class, on random softmax
    inputs (autodiff, compiled)."""
    y, logits = make(rng, shape)
    loss = ks.RegionWise(map="rrw", from_logits=True)
    grad = autodiff(lambda phi: loss(y, phi))(logits)
    negative = grad < 0
    np.testing.assert_array_equal(negative.sum(-1), 1)
    np.testing.assert_array_equal(negative, y > 0.5)
    # and it is Eq. 2: y_ik sum_{l != k} y_il (z_ik - z_il), over (B N K)
    p = softmax(logits.astype("float64"))
    z = scipy_map(y, "rrw")
    eq2 = p * (z - (p * z).sum(-1, keepdims=True)) / (np.prod(shape[1:]) * shape[0])
    np.testing.assert_allclose(grad, eq2, rtol=1e-3, atol=1e-9)


def test_unrectified_map_breaks_the_property(rng, autodiff):
    """The check above can fail: the boundary-like map z = [12, 4, -3] of
    [002, Fig. 2] (true class 3) gives voxels with two negative components."""
    shape = (1, 8, 8, 3)
    y = np.zeros(shape, "float32")
    y[..., 2] = 1.0
    z = np.broadcast_to(np.array([12.0, 4.0, -3.0], "float32"), shape)
    logits = (2 * rng.normal(size=shape)).astype("float32")
    loss = ks.RegionWise(map_index=0, from_logits=True)
    grad = autodiff(lambda phi: loss(ks.pack_targets(y, z), phi))(logits)
    assert np.any((grad < 0).sum(-1) == 2)


# ------------------------------------------------------------- packed maps
@pytest.mark.parametrize("kind", ["rrw", "boundary", "ac"])
def test_packed_map_gives_same_result(rng, kind):
    y, logits = make(rng, (2, 6, 5, 3))
    z = np_(getattr(ks, f"{kind}_map")(y))
    loss = ks.RegionWise(map=kind, from_logits=True)
    np.testing.assert_allclose(
        np_(loss.call(ks.pack_targets(y, z), logits)), np_(loss.call(y, logits)), rtol=1e-6
    )
    # binary: the two-channel map takes two packed slots
    yb = y[..., 1:2]
    zb = np_(getattr(ks, f"{kind}_map")(yb))
    packed = ks.pack_targets(yb, zb[..., :1], zb[..., 1:])
    np.testing.assert_allclose(
        np_(loss.call(packed, logits[..., 1:2])), np_(loss.call(yb, logits[..., 1:2])), rtol=1e-6
    )


def test_packed_map_is_read_at_map_index(rng):
    y, logits = make(rng, (2, 6, 5, 3))
    z = rng.normal(size=y.shape).astype("float32")
    other = rng.normal(size=y.shape).astype("float32")
    p = softmax(logits)
    packed = ks.pack_targets(y, other, z)
    got = ks.RegionWise(map_index=1, from_logits=True).call(packed, logits)
    np.testing.assert_allclose(np_(got), np_region_wise(y, p, z), rtol=1e-5)
    # map_index=None: always computed from the labels
    got = ks.RegionWise(map_index=None, from_logits=True).call(packed, logits)
    want = np_region_wise(y, p, scipy_map(y, "rrw"))
    np.testing.assert_allclose(np_(got), want, rtol=1e-5, atol=1e-6)


def test_float16_inputs_give_float32(rng):
    y, logits = make(rng, (2, 4, 4, 3))
    out = ks.RegionWise(from_logits=True).call(y, logits.astype("float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.all(np.isfinite(np_(out)))


# ------------------------------------------------------------ Keras usage
@pytest.mark.backends
def test_compiled_matches_reference(rng, jit):
    """The three maps computed inside one compiled function."""
    y, logits = make(rng, (2, 4, 4, 4, 3))
    spacing = [1.0, 1.0, 2.0]
    kinds = ("rrw", "boundary", "ac")
    losses = [ks.RegionWise(map=k, spacing=spacing, from_logits=True) for k in kinds]
    got = jit(lambda a, b: [loss(a, b) for loss in losses])(y, logits)
    for kind, value in zip(kinds, got):
        want = np_region_wise(y, softmax(logits), scipy_map(y, kind, tuple(spacing))).mean()
        np.testing.assert_allclose(np_(value), want, rtol=1e-5, atol=1e-6, err_msg=kind)


def test_config_round_trip_gives_same_outputs(rng):
    y, logits = make(rng, (2, 5, 4, 3))
    loss = ks.RegionWise(map="boundary", spacing=(2.0, 0.5), map_index=None, from_logits=True)
    config = loss.get_config()
    assert config["spacing"] == [2.0, 0.5]
    clone = ks.RegionWise.from_config(config)
    assert clone.get_config() == config
    np.testing.assert_allclose(float(clone(y, logits)), float(loss(y, logits)), rtol=1e-7)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is ks.RegionWise
    np.testing.assert_allclose(float(restored(y, logits)), float(loss(y, logits)), rtol=1e-7)


@pytest.mark.backends
def test_fit_one_step_compiled_then_save_and_load(rng, tmp_path):
    """One compiled step with each map (a three-headed model compiles once):
    the RRW map computed inside the step, the boundary map packed; then a
    `.keras` round trip without custom_objects."""
    x = rng.random((2, 8, 8, 1)).astype("float32")
    y, _ = make(rng, (2, 8, 8, 3))
    inputs = keras.Input((8, 8, 1))
    heads = [keras.layers.Conv2D(3, 3, padding="same")(inputs) for _ in range(3)]
    model = keras.Model(inputs, heads)
    jit = "auto" if keras.backend.backend() == "torch" else True
    losses = [ks.RegionWise(map=m, from_logits=True) for m in ("rrw", "boundary", "ac")]
    model.compile("adam", loss=losses, jit_compile=jit)
    targets = [y, ks.pack_targets(y, scipy_map(y, "boundary").astype("float32")), y]
    hist = model.fit(x, targets, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for before, after in zip(losses, loaded.loss):
        assert type(after) is ks.RegionWise and after.get_config() == before.get_config()


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"map": "hd"}, "map"),
        ({"spacing": [1.0, -2.0]}, "spacing"),
        ({"spacing": "x"}, "spacing"),
        ({"map_index": -1}, "map_index"),
    ],
)
def test_bad_hyperparameters(kwargs, arg):
    with pytest.raises(ValueError, match=rf"Invalid value for argument `{arg}`.*Received: {arg}="):
        ks.RegionWise(**kwargs)


# ------------------------------------------------------------- ignore mask
def np_region_wise_masked(y, probs, m, kind, spacing=None):
    """Eq. 1 over the counted voxels: the map of the masked labels (one
    sigmoid channel as the two classes `[1 - y m, y m]`), the mean over the
    counted voxels and the K classes."""
    if y.shape[-1] == 1:
        y = np.concatenate([1 - y * m, y * m], -1)
        probs = np.concatenate([1 - probs, probs], -1)
        m = np.concatenate([m, m], -1)
    else:
        y = y * m
    z = scipy_map(y, kind, spacing)
    axes = tuple(range(1, y.ndim))
    return (m * probs * z).sum(axes) / m.sum(axes)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _masked(rng, shape):
    y, logits = make(rng, shape)
    if shape[-1] == 2:  # one sigmoid channel, the foreground
        y, logits = y[..., 1:], logits[..., 1:]
    return y, logits, random_ignore_mask(rng, y.shape).astype("float32")


@pytest.mark.parametrize("kind", ["rrw", "boundary", "ac"])
@pytest.mark.parametrize(
    "shape, spacing",
    [((2, 7, 6, 3), None), ((2, 4, 5, 6, 4), [1.0, 2.0, 1.5]), ((2, 8, 7, 2), None)],
)
def test_masked_matches_equation_1(rng, kind, shape, spacing):
    y, logits, m = _masked(rng, shape)
    probs = sigmoid(logits) if y.shape[-1] == 1 else softmax(logits)
    want = np_region_wise_masked(y, probs, m, kind, spacing)
    loss = ks.RegionWise(map=kind, spacing=spacing, from_logits=True, mask_index=0)
    got = np_(loss.call(ks.pack_targets(y, m), logits))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    counting_all = np_(loss.call(ks.pack_targets(y, np.ones_like(m)), logits))
    assert np.abs(got - counting_all).max() > 1e-4
    y2, logits2 = perturb_ignored(rng, m, y, logits)
    again = np_(loss.call(ks.pack_targets(y2.astype("f4"), m), logits2.astype("f4")))
    np.testing.assert_allclose(again, got, rtol=1e-5, atol=1e-6)
    with_probs = ks.RegionWise(map=kind, spacing=spacing, mask_index=0)
    np.testing.assert_allclose(
        np_(with_probs.call(ks.pack_targets(y, m), probs.astype("f4"))), want, rtol=1e-5,
        atol=1e-6)


@pytest.mark.parametrize("c", [1, 3])
def test_masked_packed_map_of_the_masked_labels_gives_same_result(rng, c):
    y, logits, m = _masked(rng, (2, 6, 5, 3 if c == 3 else 2))
    z = np_(ks.rrw_map(y * m))
    (z_noisy,) = perturb_ignored(rng, m[..., :1].repeat(z.shape[-1], -1), z)  # masked anyway
    maps = [z_noisy] if c == 3 else [z_noisy[..., :1], z_noisy[..., 1:]]
    packed = ks.pack_targets(y, *maps, m)
    mask_slot = len(maps)
    got = ks.RegionWise(map_index=0, mask_index=mask_slot, from_logits=True).call(packed, logits)
    want = ks.RegionWise(mask_index=0, from_logits=True).call(ks.pack_targets(y, m), logits)
    np.testing.assert_allclose(np_(got), np_(want), rtol=1e-5, atol=1e-7)


def test_mask_slot_inside_a_two_slot_map_is_refused(rng):
    y, logits, m = _masked(rng, (1, 4, 4, 2))
    packed = ks.pack_targets(y, m, m, m)
    with pytest.raises(ValueError, match=r"`mask_index`.*slots \[0, 1\].*mask_index=1"):
        ks.RegionWise(map_index=0, mask_index=1).call(packed, logits)
    with pytest.raises(ValueError, match="`mask_index`"):
        ks.RegionWise(map_index=1, mask_index=1)
    loss = ks.RegionWise(map="ac", map_index=0, mask_index=2)
    assert [tuple(r) for r in ks.map_reads(loss, 1)] == [("rw_ac", 0, 2), ("mask", 2, 1)]
    assert ks.RegionWise.from_config(loss.get_config()).get_config() == loss.get_config()


@pytest.mark.backends
@pytest.mark.parametrize("shape", [(2, 6, 6, 3), (2, 4, 4, 4, 2)])
def test_masked_compiled_value_and_no_gradient_at_ignored_voxels(rng, shape, jit, autodiff):
    y, logits, m = _masked(rng, shape)
    probs = sigmoid(logits) if y.shape[-1] == 1 else softmax(logits)
    target = ks.pack_targets(y, m)
    loss = ks.RegionWise(from_logits=True, mask_index=0)
    got = np_(jit(loss.call)(target, logits))
    np.testing.assert_allclose(got, np_region_wise_masked(y, probs, m, "rrw"), rtol=1e-5,
                               atol=1e-6)
    grad = autodiff(lambda phi: keras.ops.sum(loss.call(target, phi)))(logits)
    assert np.all(np.isfinite(grad)) and np.abs(grad[m > 0]).max() > 0
    assert np.all(grad[m == 0] == 0.0)
