"""Distribution-based losses [004, Eq. 1-6] against numpy transcriptions of
their equations (values and finite-difference gradients), Keras' own cross
entropies, and scipy distance maps."""

import math

import keras
import numpy as np
import pytest
from _references import numeric_gradient, perturb_ignored, random_case, random_ignore_mask
from scipy import ndimage

import keras_seglosses as ks

# ------------------------------------------------------------ numpy references
EPS = 1e-7


def _spatial(x):
    return tuple(range(1, x.ndim - 1))


def np_ce(y, p, sigmoid, w=None):
    """Eq. 1-2. Sigmoid: binary cross entropy averaged over voxels and
    channels, `w = (w_bg, w_fg)`; softmax: summed over classes, averaged over
    voxels, `w` per class."""
    p = np.clip(p, EPS, 1 - EPS)
    if sigmoid:
        w0, w1 = (1.0, 1.0) if w is None else w
        v = -(w1 * y * np.log(p) + w0 * (1 - y) * np.log(1 - p))
        return v.reshape(len(y), -1).mean(1)
    w = np.ones(y.shape[-1]) if w is None else np.asarray(w)
    return -(w * y * np.log(p)).sum(-1).mean(axis=_spatial(y))


def np_voxel_ce(y, p, sigmoid):
    p = np.clip(p, EPS, 1 - EPS)
    if sigmoid:
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(-1)
    return -(y * np.log(p)).sum(-1)


def np_topk(y, p, sigmoid, k=10):
    """Eq. 4: mean CE of the ceil(k%) worst voxels of the batch."""
    v = np.sort(np_voxel_ce(y, p, sigmoid).ravel())[::-1]
    n = max(1, math.ceil(k / 100 * v.size))
    return np.full(len(y), v[:n].mean())


def np_topk_threshold(y, p, sigmoid, t):
    """Eq. 3: -log of true-class probabilities below t, averaged."""
    if sigmoid:
        pt = np.where(y > 0.5, p, 1 - p).ravel()
    else:
        pt = (y * p).sum(-1).ravel()
    hard = pt[pt < t]
    return np.full(len(y), -np.log(np.clip(hard, EPS, 1)).mean() if hard.size else 0.0)


def np_focal(y, p, sigmoid, gamma=2.0, alpha=None):
    """Eq. 5 (alpha: foreground weight of sigmoid channels / per class)."""
    p = np.clip(p, EPS, 1 - EPS)
    if sigmoid:
        a1, a0 = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)
        v = -(a1 * y * (1 - p) ** gamma * np.log(p) + a0 * (1 - y) * p**gamma * np.log(1 - p))
        return v.reshape(len(y), -1).mean(1)
    a = np.ones(y.shape[-1]) if alpha is None else np.asarray(alpha)
    return -(a * y * (1 - p) ** gamma * np.log(p)).sum(-1).mean(axis=_spatial(y))


def np_dpce_map(y):
    """Caliva's inverted, normalized distance map with scipy's EDT."""
    out = np.zeros_like(y)
    for b in range(y.shape[0]):
        for c in range(y.shape[-1]):
            m = y[b, ..., c] > 0.5
            if m.any() and not m.all():
                din, dout = ndimage.distance_transform_edt(m), ndimage.distance_transform_edt(~m)
                out[b, ..., c] = np.where(m, 1 - din / din.max(), 1 - dout / dout.max())
    return out


def np_dpce(y, p, sigmoid):
    """Eq. 6: cross entropy weighted by 1 + D."""
    d = 1.0 + np_dpce_map(y)
    p = np.clip(p, EPS, 1 - EPS)
    if sigmoid:
        v = -d * (y * np.log(p) + (1 - y) * np.log(1 - p))
        return v.reshape(len(y), -1).mean(1)
    return -(d * y * np.log(p)).sum(-1).mean(axis=_spatial(y))


# --------------------------------------------------------------------- inputs
KINDS = {
    # name: (shape, softmax, multi_label)
    "sigmoid2d": ((2, 5, 6, 1), False, False),
    "softmax3d": ((2, 3, 4, 4, 3), True, False),
    "multilabel2d": ((2, 5, 6, 3), False, True),
}


def make(rng, kind):
    shape, softmax, _ = KINDS[kind]
    y, p, logits = random_case(rng, shape, softmax)
    p = np.clip(p, 0.02, 0.98)  # away from the clipping of the logs
    if softmax:
        p = p / p.sum(-1, keepdims=True)
    return y, p, logits


CASES = {
    "ce": (lambda ml: ks.CrossEntropy(multi_label=ml), np_ce),
    "wce": (
        lambda ml, c=None: ks.WeightedCrossEntropy(c or (0.5, 2.0), multi_label=ml),
        None,
    ),
    "topk": (lambda ml: ks.TopK(k=20, multi_label=ml), lambda y, p, s: np_topk(y, p, s, 20)),
    "topk_thr": (
        lambda ml: ks.TopK(threshold=0.6, multi_label=ml),
        lambda y, p, s: np_topk_threshold(y, p, s, 0.6),
    ),
    "focal": (lambda ml: ks.Focal(gamma=2.0, multi_label=ml), np_focal),
    "dpce": (lambda ml: ks.DistancePenalizedCrossEntropy(multi_label=ml), np_dpce),
}


def build(case, kind):
    _, softmax, ml = KINDS[kind]
    if case == "wce":
        c = KINDS[kind][0][-1]
        weights = [0.5, 1.0, 2.0][:c] if softmax else [0.5, 2.0]
        loss = ks.WeightedCrossEntropy(weights, multi_label=ml)
        return loss, lambda y, p: np_ce(y, p, not softmax, weights)
    factory, ref = CASES[case]
    return factory(ml), lambda y, p: ref(y, p, not softmax)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", list(CASES))
def test_value_matches_equation(case, kind, rng):
    y, p, _ = make(rng, kind)
    loss, ref = build(case, kind)
    value = loss.call(y.astype("float32"), p.astype("float32"))
    value = keras.ops.convert_to_numpy(value)
    np.testing.assert_allclose(value, ref(y, p), rtol=2e-5, atol=1e-6)


# one input kind per loss keeps the compiled (XLA) checks few
GRADIENT_CASES = [(c, list(KINDS)[i % len(KINDS)]) for i, c in enumerate(CASES)]


@pytest.mark.backends
@pytest.mark.parametrize("case, kind", GRADIENT_CASES)
def test_compiled_value_and_gradient_match_equation(case, kind, rng, jit, autodiff):
    y, p, _ = make(rng, kind)
    loss, ref = build(case, kind)
    y32, p32 = y.astype("float32"), p.astype("float32")
    value = keras.ops.convert_to_numpy(jit(loss.call)(y32, p32))
    np.testing.assert_allclose(value, ref(y, p), rtol=2e-5, atol=1e-6)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
    points = rng.choice(p.size, 16, replace=False)
    expected = numeric_gradient(lambda x: ref(y, x), p, points)
    np.testing.assert_allclose(grad.ravel()[points], expected, rtol=2e-3, atol=2e-5)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("kind", list(KINDS))
def test_from_logits_equals_probabilities(kind, rng):
    y, _, logits = make(rng, kind)
    _, softmax, ml = KINDS[kind]
    if softmax:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
    else:
        p = 1 / (1 + np.exp(-logits))
    y, p, logits = (a.astype("float32") for a in (y, p, logits))
    c = y.shape[-1]
    weights = [1.0, 2.0, 3.0] if softmax else [1.0, 2.0]
    for cls, kw in [
        (ks.CrossEntropy, {}), (ks.WeightedCrossEntropy, {"class_weights": weights}),
        (ks.TopK, {}), (ks.Focal, {"gamma": 1.5}), (ks.DistancePenalizedCrossEntropy, {}),
    ]:
        a = cls(from_logits=True, multi_label=ml, **kw)(y, logits)
        b = cls(multi_label=ml, **kw)(y, p)
        np.testing.assert_allclose(float(a), float(b), rtol=1e-4, err_msg=f"{cls.__name__} C={c}")


def test_agrees_with_keras_crossentropies(rng):
    y, p, _ = make(rng, "multilabel2d")
    np.testing.assert_allclose(
        float(ks.CrossEntropy(multi_label=True)(y, p)),
        float(keras.losses.BinaryCrossentropy()(y, p)), rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(ks.Focal(gamma=2.0, multi_label=True)(y, p)),
        float(keras.losses.BinaryFocalCrossentropy(gamma=2.0)(y, p)), rtol=1e-5,
    )
    y, p, _ = make(rng, "softmax3d")
    np.testing.assert_allclose(
        float(ks.CrossEntropy()(y, p)), float(keras.losses.CategoricalCrossentropy()(y, p)),
        rtol=1e-5,
    )


def test_special_cases_reduce_to_cross_entropy(rng):
    for kind in KINDS:
        y, p, _ = make(rng, kind)
        ml = KINDS[kind][2]
        ce = ks.CrossEntropy(multi_label=ml).call(y, p)
        for other in (ks.Focal(gamma=0.0, multi_label=ml), ks.TopK(k=100, multi_label=ml)):
            np.testing.assert_allclose(
                np.mean(keras.ops.convert_to_numpy(other.call(y, p))),
                np.mean(keras.ops.convert_to_numpy(ce)), rtol=1e-5,
            )


def test_focal_alpha_matches_equation(rng):
    y, p, _ = make(rng, "sigmoid2d")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ks.Focal(alpha=0.25).call(y, p)),
        np_focal(y, p, True, 2.0, 0.25), rtol=1e-5,
    )
    y, p, _ = make(rng, "softmax3d")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ks.Focal(alpha=[0.2, 0.3, 0.5]).call(y, p)),
        np_focal(y, p, False, 2.0, [0.2, 0.3, 0.5]), rtol=1e-5,
    )


def test_perfect_prediction_is_minimal(rng):
    for kind in KINDS:
        y, _, _ = make(rng, kind)
        ml = KINDS[kind][2]
        weights = [1.0, 2.0, 3.0][: y.shape[-1]] if KINDS[kind][1] else [1.0, 2.0]
        for loss in (ks.CrossEntropy(multi_label=ml), ks.Focal(multi_label=ml),
                     ks.TopK(multi_label=ml), ks.TopK(threshold=0.5, multi_label=ml),
                     ks.WeightedCrossEntropy(weights, multi_label=ml),
                     ks.DistancePenalizedCrossEntropy(multi_label=ml)):
            assert float(loss(y, y)) < 1e-5, (kind, loss.name)


# ------------------------------------------------------- TopK's exact selection
def topk_inputs(rng, kind):
    """Sigmoid logits whose per-voxel cross entropies are continuous, tied
    in large groups, exactly zero, or large."""
    shape = (3, 7, 9, 1)
    y = (rng.random(shape) < 0.5).astype("float32")
    sign = 2 * y - 1
    if kind == "continuous":
        logits = rng.normal(size=shape) * 3
    elif kind == "ties":
        logits = rng.choice([-2.0, 0.5, 1.0, 3.0], size=shape)
    elif kind == "zeros":  # log_sigmoid underflows to 0: CE is exactly 0
        logits = np.where(rng.random(shape) < 0.7, 200.0 * sign, rng.normal(size=shape))
    else:  # "large": confident mistakes, CE up to ~80
        logits = -sign * rng.uniform(0, 80, size=shape)
    return y, logits.astype("float32")


def np_topk_logits(y, logits, k):
    ce = np.logaddexp(0, -logits) * y + np.logaddexp(0, logits) * (1 - y)
    v = np.sort(ce.ravel().astype(np.float64))[::-1]
    return v[: max(1, math.ceil(k / 100 * v.size))].mean()


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["continuous", "ties", "zeros", "large"])
def test_topk_selection_matches_sorting(kind, rng, jit):
    y, logits = topk_inputs(rng, kind)
    for k in (0.5, 10.0, 33.3, 100.0):
        loss = ks.TopK(k=k, from_logits=True)
        value = keras.ops.convert_to_numpy(jit(loss.call)(y, logits))
        np.testing.assert_allclose(value, np_topk_logits(y, logits, k), rtol=1e-5, err_msg=f"k={k}")


def np_masked_dpce(y, p, mask, sigmoid):
    """Eq. 6 over the counted voxels (`mask`, the same in every channel):
    D of the masked labels (ignored voxels are background), the mean of the
    per-voxel cross entropy over the counted voxels."""
    keep = mask[..., 0] > 0.5
    d = 1.0 + np_dpce_map(y * mask)
    p = np.clip(p, EPS, 1 - EPS)
    if sigmoid:
        v = (-d * (y * np.log(p) + (1 - y) * np.log(1 - p))).mean(-1)
    else:
        v = -(d * y * np.log(p)).sum(-1)
    return np.array([v[b][keep[b]].mean() for b in range(len(y))])


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["sigmoid2d", "softmax3d", "multilabel2d"])
def test_masked_dpce_matches_equation_over_the_counted_voxels(kind, rng, jit, autodiff):
    """The computed penalty map of the masked labels, and a mean over the
    counted voxels, not over all of them."""
    y, p, logits = make(rng, kind)
    _, softmax, ml = KINDS[kind]
    mask = random_ignore_mask(rng, y.shape)
    target = ks.pack_targets(y, mask)
    loss = ks.DistancePenalizedCrossEntropy(multi_label=ml, mask_index=0)
    want = np_masked_dpce(y, p, mask, not softmax)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(jit(loss.call)(target, p)), want,
                               rtol=1e-5, atol=1e-6)
    y2, p2 = perturb_ignored(rng, mask, y, p)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.call(ks.pack_targets(y2, mask),
                                                                     p2)),
                               want, rtol=1e-5, atol=1e-6)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(target, x)))(p)
    assert np.all(grad[mask == 0] == 0.0)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0.0)


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_masked_topk_selects_among_the_counted_voxels(kind, rng, jit, autodiff):
    y, logits = topk_inputs(rng, kind)
    mask = (rng.uniform(size=y.shape) < 0.6).astype("float32")
    target = ks.pack_targets(y, mask)
    for k in (0.5, 10.0, 100.0):
        loss = ks.TopK(k=k, from_logits=True, mask_index=0)
        value = keras.ops.convert_to_numpy(jit(loss.call)(target, logits))
        keep = mask > 0
        np.testing.assert_allclose(value, np_topk_logits(y[keep], logits[keep], k), rtol=1e-5,
                                   err_msg=f"k={k}")
    grad = autodiff(lambda x: keras.ops.sum(loss.call(target, x)))(logits)
    assert np.all(grad[mask == 0] == 0.0)


@pytest.mark.backends
def test_topk_voxels_tied_at_the_cut_share_its_weight(autodiff):
    # cross entropies 3, 2, 2, 2, 1 (y = 1, p = exp(-ce)); k = 40 %: 2 voxels
    ce = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    p = np.exp(-ce).astype("float32").reshape(1, 5, 1, 1)
    y = np.ones_like(p)
    loss = ks.TopK(k=40)
    np.testing.assert_allclose(float(loss(y, p)), (3.0 + 2.0) / 2, rtol=1e-5)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y, x)))(p).ravel()
    # d(-log p)/dp = -1/p; weights 1, 1/3, 1/3, 1/3, 0 over count = 2
    expected = -np.array([1.0, 1 / 3, 1 / 3, 1 / 3, 0.0]) / p.ravel() / 2
    np.testing.assert_allclose(grad, expected, rtol=1e-4)


def test_topk_threshold_is_strict():
    # true-class probabilities 0.5 (kept out: not below t), 0.3, and 0.5
    y = np.array([[[1.0], [1.0], [0.0]]])
    p = np.array([[[0.5], [0.3], [0.5]]])
    np.testing.assert_allclose(float(ks.TopK(threshold=0.5)(y, p)), -np.log(0.3), rtol=1e-6)
    assert float(ks.TopK(threshold=0.2)(y, p)) == 0.0  # no voxel below t


def test_dpce_map_packed_or_computed_agree(rng):
    y, p, _ = make(rng, "softmax3d")
    y[0, ..., 1] = 0.0  # an absent class: D = 0
    y[0, ..., 0] = 1.0 - y[0, ..., 2]
    d = keras.ops.convert_to_numpy(ks.dpce_penalty_map(y))
    np.testing.assert_allclose(d, np_dpce_map(y), atol=1e-6)
    assert d.min() >= 0 and d.max() <= 1
    loss = ks.DistancePenalizedCrossEntropy()
    np.testing.assert_allclose(
        float(loss(ks.pack_targets(y, d), p)), float(loss(y, p)), rtol=1e-6
    )
    # a packed RP map before it: map_index selects the DPCE map
    packed = ks.pack_targets(y, np.ones_like(y), d)
    np.testing.assert_allclose(
        float(ks.DistancePenalizedCrossEntropy(map_index=1)(packed, p)), float(loss(y, p)),
        rtol=1e-6,
    )


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF unknown batch")
def test_topk_with_unknown_batch_size(rng):
    import tensorflow as tf

    y, p, _ = make(rng, "sigmoid2d")
    loss = ks.TopK(k=20)
    spec = tf.TensorSpec((None,) + y.shape[1:], tf.float32)
    fn = tf.function(loss.call, input_signature=[spec, spec])
    np.testing.assert_allclose(
        fn(y.astype("f4"), p.astype("f4")).numpy(), np_topk(y, p, True, 20), rtol=1e-5
    )


def test_packed_targets_are_ignored_by_plain_losses(rng):
    y, p, _ = make(rng, "sigmoid2d")
    packed = ks.pack_targets(y, rng.random(y.shape))
    for loss in (ks.CrossEntropy(), ks.TopK(), ks.Focal(), ks.WeightedCrossEntropy([1, 2])):
        np.testing.assert_allclose(float(loss(packed, p)), float(loss(y, p)), rtol=1e-6)


@pytest.mark.parametrize(
    "loss",
    [
        ks.CrossEntropy(from_logits=True, multi_label=True),
        ks.WeightedCrossEntropy([0.2, 0.8]),
        ks.TopK(k=5.0),
        ks.TopK(threshold=0.3),
        ks.Focal(gamma=1.0, alpha=0.3),
        ks.Focal(alpha=[0.1, 0.9]),
        ks.DistancePenalizedCrossEntropy(map_index=1, spacing=[1.0, 2.0]),
    ],
    ids=lambda l: l.name,
)
def test_config_round_trip(loss, rng):
    y, p, _ = make(rng, "sigmoid2d")
    if loss.name == "distance_penalized_cross_entropy":
        y = ks.pack_targets(y, np.zeros_like(y), np.ones_like(y))
    config = keras.saving.serialize_keras_object(loss)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    np.testing.assert_allclose(float(clone(y, p)), float(loss(y, p)), rtol=1e-6)


@pytest.mark.parametrize(
    "make_loss, match",
    [
        (lambda: ks.TopK(k=0), "`k`"),
        (lambda: ks.TopK(k=150), "`k`"),
        (lambda: ks.TopK(threshold=1.5), "`threshold`"),
        (lambda: ks.Focal(gamma=-1), "`gamma`"),
        (lambda: ks.Focal(alpha=2.0), "`alpha`"),
        (lambda: ks.WeightedCrossEntropy([]), "`class_weights`"),
        (lambda: ks.WeightedCrossEntropy([1.0, -1.0]), "`class_weights`"),
        (lambda: ks.DistancePenalizedCrossEntropy(map_index=-1), "`map_index`"),
        (lambda: ks.DistancePenalizedCrossEntropy(spacing=0), "`spacing`"),
    ],
)
def test_bad_hyperparameters_raise(make_loss, match):
    with pytest.raises(ValueError, match=match):
        make_loss()


def test_weights_not_matching_the_classes_raise(rng):
    y, p, _ = make(rng, "softmax3d")
    with pytest.raises(ValueError, match="`class_weights`"):
        ks.WeightedCrossEntropy([1.0, 2.0])(y, p)
    with pytest.raises(ValueError, match="`alpha`"):
        ks.Focal(alpha=0.25)(y, p)
