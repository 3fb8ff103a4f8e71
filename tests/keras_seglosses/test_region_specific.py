"""Region-specific Dice and adaptive region-specific Tversky [003, Eq. 4-8]
against a numpy loop over the sub-regions written here."""

import itertools

import keras
import numpy as np
import pytest
from _references import perturb_ignored, random_ignore_mask

import keras_seglosses as ks
from keras_seglosses.losses.region_specific import adaptive_tversky_weights


# ------------------------------------------------------------ numpy reference
def _cells(shape, grid):
    """Slices of every cell of an even grid over `shape` (a Python loop,
    independent of the reshape-based block sums under test)."""
    sizes = [s // g for s, g in zip(shape, grid)]
    for index in itertools.product(*[range(g) for g in grid]):
        yield tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, sizes))


def np_region_specific(y, p, grid, eps, kind, reduction="sum", A=0.3, B=0.4, mask=None):
    """Eq. 4 (`kind="dice"`) or Eq. 6-8 (`kind="tversky"`) per sample; with
    an ignore `mask` every cell sum weighted by it (a class is present in a
    cell by its counted voxels)."""
    spatial = y.shape[1:-1]
    mask = np.ones_like(y) if mask is None else mask
    grid = (grid,) * len(spatial) if np.isscalar(grid) else grid
    out = []
    for b in range(y.shape[0]):
        total, count = 0.0, 0
        per_class = np.zeros(y.shape[-1])
        for c in range(y.shape[-1]):
            for cell in _cells(spatial, grid):
                g = y[(b, *cell, c)].astype("float64")
                q = p[(b, *cell, c)].astype("float64")
                m = mask[(b, *cell, c)].astype("float64")
                if (m * g).sum() == 0:
                    continue  # class absent from this sub-region: dropped
                if kind == "dice":
                    num = 2 * (m * q * g).sum() + eps
                    value = 1 - num / ((m * q**2).sum() + (m * g**2).sum() + eps)
                else:
                    tp = (m * q * g).sum()
                    fp, fn = (m * q * (1 - g)).sum(), (m * (1 - q) * g).sum()
                    alpha = A + B * (fp + eps) / (fp + fn + eps)
                    beta = A + B * (fn + eps) / (fp + fn + eps)
                    value = 1 - (tp + eps) / (tp + alpha * fp + beta * fn + eps)
                per_class[c] += value
                total += value
                count += 1
        out.append(per_class.mean() if reduction == "sum" else total / max(count, 1))
    return np.array(out)


def make(rng, shape, softmax=True):
    """One-hot (or binary) labels with structure, and probabilities."""
    c = shape[-1]
    if c == 1:
        y = (rng.random(shape) > 0.7).astype("float32")
        p = rng.random(shape).astype("float32")
    else:
        y = np.eye(c, dtype="float32")[rng.integers(0, c, shape[:-1])]
        # class c-1 only in the first half of the first axis, so some cells
        # lack it
        half = shape[1] // 2
        y[:, half:, ..., c - 1] = 0
        y[:, half:, ..., 0] = np.maximum(y[:, half:, ..., 0], 1 - y[:, half:, ...].sum(-1))
        logits = rng.normal(size=shape).astype("float32")
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return y, p.astype("float32")


def value(loss, y, p):
    out = loss.call(keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(p))
    return keras.ops.convert_to_numpy(out)


LOSSES = {"dice": ks.RegionSpecificDice, "tversky": ks.AdaptiveRegionSpecificTversky}


# ---------------------------------------------------------------- equations
@pytest.mark.parametrize("kind", ["dice", "tversky"])
@pytest.mark.parametrize(
    "shape, grid, reduction",
    [
        ((2, 8, 6, 3), 2, "sum"),
        ((2, 8, 6, 3), (4, 3), "mean"),
        ((2, 4, 6, 4, 3), (2, 3, 1), "sum"),
        ((2, 4, 4, 4, 1), 2, "mean"),
    ],
)
def test_matches_loop_over_blocks(rng, kind, shape, grid, reduction):
    y, p = make(rng, shape)
    loss = LOSSES[kind](grid=grid, smooth=1e-3, region_reduction=reduction)
    want = np_region_specific(y, p, grid, 1e-3, kind, reduction)
    np.testing.assert_allclose(value(loss, y, p), want, rtol=2e-5)


def test_tversky_with_other_A_B(rng):
    y, p = make(rng, (2, 6, 6, 2))
    loss = ks.AdaptiveRegionSpecificTversky(grid=3, A=0.1, B=0.8, smooth=0.0)
    want = np_region_specific(y, p, 3, 0.0, "tversky", A=0.1, B=0.8)
    np.testing.assert_allclose(value(loss, y, p), want, rtol=2e-5)


def np_squared_dice(y, p, eps):
    """[003, Eq. 2] on the whole volume, per sample and class, averaged over
    classes."""
    axes = tuple(range(1, y.ndim - 1))
    y, p = y.astype("float64"), p.astype("float64")
    dice = (2 * (p * y).sum(axes) + eps) / ((p**2).sum(axes) + (y**2).sum(axes) + eps)
    return (1 - dice).mean(-1)


@pytest.mark.parametrize("shape", [(3, 6, 4, 2), (2, 4, 4, 4, 3)])
def test_grid_one_is_squared_dice(rng, shape):
    y, p = make(rng, shape)
    flat = y.reshape(shape[0], -1, shape[-1])
    flat[:, : shape[-1]] = np.eye(shape[-1])  # every class in every sample
    y = flat.reshape(shape)
    want = np_squared_dice(y, p, 1e-5)
    for reduction in ("sum", "mean"):
        got = ks.RegionSpecificDice(grid=1, smooth=1e-5, region_reduction=reduction).call(y, p)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-5)
    # and the package's global loss agrees
    dice = ks.Dice(squared=True, batch=False, smooth=1e-5).call(y, p)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dice), want, rtol=1e-5)


@pytest.mark.parametrize("cls", [ks.RegionSpecificDice, ks.AdaptiveRegionSpecificTversky])
def test_absent_class_cells_get_no_gradient(rng, cls, autodiff):
    """[003, Sec. 5]: a (cell, class) pair without ground truth contributes
    nothing, so the probabilities of that class there get zero gradient,
    while every present pair gets some."""
    y, p = make(rng, (2, 8, 4, 3))  # class 2 absent from the second half
    loss = cls(grid=(4, 2), smooth=1e-3)
    grad = autodiff(lambda q: keras.ops.sum(loss.call(y, q)))(p)
    for b in range(2):
        for cell in _cells((8, 4), (4, 2)):
            for c in range(3):
                g = grad[(b, *cell, c)]
                if y[(b, *cell, c)].sum() == 0:
                    np.testing.assert_array_equal(g, 0.0)
                else:
                    assert np.any(g != 0)


def test_sum_scales_with_cells_mean_does_not(rng):
    y = np.ones((1, 8, 8, 1), "float32")
    p = np.full_like(y, 0.5)
    for grid in (1, 2, 4):
        s = value(ks.RegionSpecificDice(grid=grid, smooth=0.0), y, p)
        m = value(ks.RegionSpecificDice(grid=grid, smooth=0.0, region_reduction="mean"), y, p)
        # per cell 1 - 2*0.5n / (0.25n + n) = 0.2
        np.testing.assert_allclose(s, 0.2 * grid**2, rtol=1e-6)
        np.testing.assert_allclose(m, 0.2, rtol=1e-6)


# -------------------------------------------------------- adaptive weights
def test_adaptive_weights_follow_eq7_eq8_and_bounds(rng):
    fp = rng.exponential(size=1000).astype("float32") * (rng.random(1000) > 0.2)
    fn = rng.exponential(size=1000).astype("float32") * (rng.random(1000) > 0.2)
    for A, B, eps in [(0.3, 0.4, 1e-7), (0.0, 1.0, 1e-3), (0.5, 0.25, 0.0)]:
        weights = adaptive_tversky_weights(fp, fn, A, B, eps)
        alpha, beta = (keras.ops.convert_to_numpy(w) for w in weights)
        total = fp.astype("float64") + fn + eps
        with np.errstate(invalid="ignore", divide="ignore"):
            want_a = np.where(total > 0, A + B * (fp + eps) / total, A + B / 2)
            want_b = np.where(total > 0, A + B * (fn + eps) / total, A + B / 2)
        np.testing.assert_allclose(alpha, want_a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(beta, want_b, rtol=1e-5, atol=1e-7)
        assert np.all(alpha >= A - 1e-6) and np.all(alpha <= A + B + 1e-6)
        assert np.all(beta >= A - 1e-6) and np.all(beta <= A + B + 1e-6)


def test_adaptive_gradient_switch(rng, autodiff):
    """Same value; gradients differ once alpha/beta are detached, and the
    detached gradient is the one of a Tversky loss with fixed weights."""
    y, p = make(rng, (1, 4, 4, 1))
    y[0, :2, :2, 0] = 1.0
    flowing = ks.AdaptiveRegionSpecificTversky(grid=2, smooth=1e-3)
    fixed = ks.AdaptiveRegionSpecificTversky(grid=2, smooth=1e-3, adaptive_gradient=False)
    np.testing.assert_allclose(value(flowing, y, p), value(fixed, y, p), rtol=1e-6)
    g_flow = autodiff(lambda q: keras.ops.sum(flowing.call(y, q)))(p)
    g_fixed = autodiff(lambda q: keras.ops.sum(fixed.call(y, q)))(p)
    assert np.all(np.isfinite(g_flow)) and np.all(np.isfinite(g_fixed))
    assert np.max(np.abs(g_flow - g_fixed)) > 1e-4
    # finite differences of the fixed-weight Tversky loss for one voxel of the
    # foreground cell, with alpha/beta frozen at the current prediction
    i = (0, 1, 1, 0)
    cell = (0, slice(0, 2), slice(0, 2), 0)
    q, g = p[cell], y[cell]
    tp, fp, fn = (q * g).sum(), (q * (1 - g)).sum(), ((1 - q) * g).sum()
    a = 0.3 + 0.4 * (fp + 1e-3) / (fp + fn + 1e-3)
    b = 0.3 + 0.4 * (fn + 1e-3) / (fp + fn + 1e-3)

    def tversky(q):
        q = q.astype("float64")
        t, f_p, f_n = (q * y[cell]).sum(), (q * (1 - y[cell])).sum(), ((1 - q) * y[cell]).sum()
        return 1 - (t + 1e-3) / (t + a * f_p + b * f_n + 1e-3)

    h = 1e-4
    up, down = p[cell].copy(), p[cell].copy()
    up[1, 1] += h
    down[1, 1] -= h
    np.testing.assert_allclose(g_fixed[i], (tversky(up) - tversky(down)) / (2 * h), rtol=1e-2)


# ------------------------------------------------------------- properties
@pytest.mark.parametrize("cls", [ks.RegionSpecificDice, ks.AdaptiveRegionSpecificTversky])
def test_perfect_prediction_and_empty_labels(cls, autodiff):
    y = np.zeros((2, 4, 4, 1), "float32")
    y[0, 1:3, 1:3] = 1.0
    loss = cls(grid=2, smooth=0.0)
    np.testing.assert_allclose(value(loss, y, y), 0.0, atol=1e-7)
    # sample 1 has no foreground: no cell contributes, whatever it predicts
    p = np.full_like(y, 0.7)
    out = value(loss, y, p)
    assert out[1] == 0.0 and out[0] > 0
    grad = autodiff(lambda q: keras.ops.sum(loss.call(y, q)))(y)
    assert np.all(np.isfinite(grad))


@pytest.mark.backends
def test_compiled_matches_reference(rng, jit, autodiff):
    """Both losses in one compiled function, and a compiled gradient."""
    y, p = make(rng, (2, 4, 4, 4, 3))
    logits = np.log(p)
    dice, tversky = (LOSSES[k](grid=2, from_logits=True) for k in ("dice", "tversky"))
    got = jit(lambda a, b: (dice(a, b), tversky(a, b)))(y, logits)
    for kind, out in zip(("dice", "tversky"), got):
        want = np_region_specific(y, p, 2, 1e-7, kind).mean()
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out), want, rtol=1e-4, err_msg=kind)
    grad = autodiff(lambda q: dice(y, q) + tversky(y, q))(logits)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_float16_inputs_and_sample_weight(rng):
    y, p = make(rng, (3, 4, 4, 2))
    for cls in LOSSES.values():
        loss = cls(grid=2)
        out = loss.call(y, p.astype("float16"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        per_sample = value(loss, y, p)
        w = np.array([1.0, 0.0, 2.0], "float32")
        got = float(loss(y, p, sample_weight=w))
        np.testing.assert_allclose(got, np.sum(per_sample * w) / 3, rtol=1e-5)


# ------------------------------------------------------------ validation
@pytest.mark.parametrize("cls", [ks.RegionSpecificDice, ks.AdaptiveRegionSpecificTversky])
def test_indivisible_shape_is_reported(cls):
    with pytest.raises(ValueError, match=r"divisible by `grid`.*\(6, 5\), grid=\(4, 4\)"):
        cls(grid=4)(np.zeros((1, 6, 5, 1)), np.zeros((1, 6, 5, 1)))
    with pytest.raises(ValueError, match="Expected 3 values"):
        cls(grid=(2, 2))(np.zeros((1, 4, 4, 4, 1)), np.zeros((1, 4, 4, 4, 1)))


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"grid": 0}, "grid"),
        ({"grid": (2, 1.5)}, "grid"),
        ({"grid": True}, "grid"),
        ({"smooth": -1}, "smooth"),
        ({"region_reduction": "max"}, "region_reduction"),
        ({"A": -0.1}, "A"),
        ({"B": "x"}, "B"),
    ],
)
def test_bad_hyperparameters(kwargs, arg):
    dice_args = ("grid", "smooth", "region_reduction")
    cls = ks.RegionSpecificDice if arg in dice_args else ks.AdaptiveRegionSpecificTversky
    with pytest.raises(ValueError, match=rf"Invalid value for argument `{arg}`.*Received: {arg}="):
        cls(**kwargs)


def test_zero_weight_range_is_refused():
    with pytest.raises(ValueError, match=r"`A` and `B`.*A \+ B > 0.*Received: A=0, B=0"):
        ks.AdaptiveRegionSpecificTversky(A=0, B=0)
    ks.AdaptiveRegionSpecificTversky(A=0, B=0.5)  # a range [0, 0.5] is fine


# ------------------------------------------------------------ Keras usage
@pytest.mark.parametrize(
    "loss",
    [
        ks.RegionSpecificDice(grid=(2, 1), smooth=0.5, region_reduction="mean", from_logits=True),
        ks.AdaptiveRegionSpecificTversky(
            grid=2,
            A=0.2,
            B=0.6,
            smooth=1e-3,
            region_reduction="mean",
            adaptive_gradient=False,
            from_logits=True,
        ),
    ],
)
def test_config_round_trip_gives_same_outputs(rng, loss):
    y, p = make(rng, (2, 4, 4, 3))
    logits = np.log(p)
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    np.testing.assert_allclose(float(clone(y, logits)), float(loss(y, logits)), rtol=1e-7)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    np.testing.assert_allclose(float(restored(y, logits)), float(loss(y, logits)), rtol=1e-7)


@pytest.mark.backends
def test_fit_one_step_compiled_then_save_and_load(rng, tmp_path):
    """One compiled training step (a two-headed model trains both losses in
    one compilation), then a `.keras` round trip without custom_objects."""
    x = rng.random((2, 8, 8, 1)).astype("float32")
    y, _ = make(rng, (2, 8, 8, 3))
    inputs = keras.Input((8, 8, 1))
    heads = [
        keras.layers.Conv2D(3, 3, padding="same", activation="softmax")(inputs) for _ in range(2)
    ]
    model = keras.Model(inputs, heads)
    jit = "auto" if keras.backend.backend() == "torch" else True
    losses = [ks.RegionSpecificDice(grid=4), ks.AdaptiveRegionSpecificTversky(grid=(2, 4))]
    model.compile("adam", loss=losses, jit_compile=jit)
    hist = model.fit(x, [y, y], batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0]) and hist["loss"][0] > 0
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for before, after in zip(losses, loaded.loss):
        assert type(after) is type(before) and after.get_config() == before.get_config()



# ---------------------------------------------------------------- ignore mask
def _masked(rng, shape):
    y, p = make(rng, shape)
    m = random_ignore_mask(rng, shape, fraction=0.3)
    m[0, : shape[1] // 2, : shape[2] // 2] = 0.0  # a whole cell of grid 2 ignored
    return y, p, m.astype("float32")


@pytest.mark.parametrize("kind", ["dice", "tversky"])
@pytest.mark.parametrize(
    "shape, grid, reduction",
    [((2, 8, 6, 3), 2, "sum"), ((2, 8, 6, 3), (4, 3), "mean"), ((2, 4, 6, 4, 1), (2, 3, 1), "sum")],
)
def test_masked_matches_loop_over_blocks(rng, kind, shape, grid, reduction):
    y, p, m = _masked(rng, shape)
    loss = LOSSES[kind](grid=grid, smooth=1e-3, region_reduction=reduction, mask_index=0)
    got = value(loss, ks.pack_targets(y, m), p)
    want = np_region_specific(y, p, grid, 1e-3, kind, reduction, mask=m)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert np.abs(want - np_region_specific(y, p, grid, 1e-3, kind, reduction)).max() > 1e-3
    y2, p2 = perturb_ignored(rng, m, y, p)
    again = value(loss, ks.pack_targets(y2.astype("f4"), m), p2.astype("f4"))
    np.testing.assert_allclose(again, got, rtol=1e-5, atol=1e-6)


@pytest.mark.backends
def test_masked_compiled_matches_reference_without_gradient_at_ignored_voxels(
        rng, jit, autodiff):
    y, p, m = _masked(rng, (2, 8, 8, 2))
    target = ks.pack_targets(y, np.zeros_like(y), m)
    for kind, cls in LOSSES.items():
        loss = cls(grid=2, smooth=1e-3, mask_index=1)
        got = keras.ops.convert_to_numpy(jit(loss.call)(target, p))
        np.testing.assert_allclose(got, np_region_specific(y, p, 2, 1e-3, kind, mask=m),
                                   rtol=2e-5)
        grad = autodiff(lambda q: keras.ops.sum(loss.call(target, q)))(p)
        assert np.all(np.isfinite(grad)) and np.abs(grad[m > 0]).max() > 0
        assert np.all(grad[m == 0] == 0.0)
        # the cell ignored whole contributes nothing
        np.testing.assert_array_equal(grad[0, :4, :4], 0.0)


def test_masked_config_round_trip_and_validation():
    loss = ks.AdaptiveRegionSpecificTversky(grid=(2, 4), mask_index=2)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert again.get_config() == loss.get_config() and again.mask_index == 2
    assert [tuple(r) for r in ks.map_reads(again, 1)] == [("mask", 2, 1)]
    with pytest.raises(ValueError, match="`mask_index`"):
        ks.RegionSpecificDice(mask_index=-1)
