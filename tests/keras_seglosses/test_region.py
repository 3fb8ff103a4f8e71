"""Region-based losses [004, Eq. 7-18] against numpy transcriptions of their
equations (values, finite-difference gradients), MONAI and Keras."""

import keras
import numpy as np
import pytest
from _references import class_mean, numeric_gradient, random_case, sums

import keras_seglosses as ks


# ------------------------------------------------------------ numpy references
def np_ss(y, p, w=0.1, s=1.0, batch=False, bg=True):
    """Eq. 7."""
    err = (y - p) ** 2
    v = w * sums(err * y, batch) / (sums(y, batch) + s) + (1 - w) * sums(
        err * (1 - y), batch
    ) / (sums(1 - y, batch) + s)
    return class_mean(v, len(y), batch, bg)


def np_iou(y, p, s=1.0, batch=False, bg=True):
    """Eq. 10."""
    v = 1 - (sums(y * p, batch) + s) / (sums(y + p - y * p, batch) + s)
    return class_mean(v, len(y), batch, bg)


def np_tversky(y, p, a=0.3, b=0.7, s=1.0, batch=False, bg=True, gamma=1.0):
    """Eq. 14 (and Eq. 16 with gamma)."""
    tp = sums(y * p, batch)
    fp = sums((1 - y) * p, batch)
    fn = sums(y * (1 - p), batch)
    v = (1 - (tp + s) / (tp + a * fp + b * fn + s)) ** gamma
    return class_mean(v, len(y), batch, bg)


def np_asym(y, p, beta=1.5, s=1.0, batch=False, bg=True):
    """Eq. 17 written out."""
    b2 = beta**2
    tp = sums(y * p, batch)
    v = 1 - (tp + s) / (
        tp + b2 / (1 + b2) * sums(y * (1 - p), batch) + 1 / (1 + b2) * sums((1 - y) * p, batch) + s
    )
    return class_mean(v, len(y), batch, bg)


def np_gd_weights(y, batch, bg, weighting="square"):
    g = sums(y, batch)
    if not bg and g.shape[-1] > 1:
        g = g[..., 1:]
    if weighting == "uniform":
        return np.ones_like(g)
    with np.errstate(divide="ignore"):
        w = 1.0 / (g**2 if weighting == "square" else g)
    finite = np.where(np.isfinite(w), w, 0)
    return np.where(np.isfinite(w), w, finite.max(-1, keepdims=True))


def np_pgd(y, p, k=0.0, s=1e-5, batch=False, bg=True, weighting="square"):
    """Eq. 18, first line (k = 0: Eq. 15)."""
    w = np_gd_weights(y, batch, bg, weighting)
    cut = (lambda x: x[..., 1:]) if (not bg and y.shape[-1] > 1) else (lambda x: x)
    tp = cut(sums(y * p, batch))
    fp, fn = cut(sums((1 - y) * p, batch)), cut(sums(y * (1 - p), batch))
    total = cut(sums(y + p, batch))
    num = 2 * (w * tp).sum(-1) + s
    den = (w * total).sum(-1) + k * (w * fp).sum(-1) + k * (w * fn).sum(-1) + s
    v = 1 - num / den
    return np.full(len(y), v) if batch else v


def np_lovasz_flat(m, fg):
    """Eq. 12-13 from the set function Delta(A) = |A| / |G u A| directly."""
    order = sorted(range(len(m)), key=lambda i: -m[i])
    g = set(np.flatnonzero(fg > 0.5).tolist())

    def delta(a):
        return len(a) / len(g | a) if a else 0.0

    total, prefix = 0.0, set()
    for i in order:
        before = delta(prefix)
        prefix = prefix | {i}
        total += m[i] * (delta(prefix) - before)
    return total


def np_lovasz(y, p, batch=False, bg=True):
    c = y.shape[-1]
    classes = range(1, c) if (not bg and c > 1) else range(c)
    if batch:
        v = np.mean([np_lovasz_flat(np.abs(y[..., k] - p[..., k]).ravel(), y[..., k].ravel())
                     for k in classes])
        return np.full(len(y), v)
    return np.array([
        np.mean([np_lovasz_flat(np.abs(y[b, ..., k] - p[b, ..., k]).ravel(), y[b, ..., k].ravel())
                 for k in classes])
        for b in range(len(y))
    ])


# --------------------------------------------------------------------- inputs
KINDS = {"sigmoid2d": ((2, 5, 6, 1), False), "softmax3d": ((2, 3, 4, 4, 3), True)}


def make(rng, kind):
    return random_case(rng, *KINDS[kind])


# name: (loss factory(batch, include_background), reference(y, p, batch, bg))
CASES = {
    "ss": (lambda b, bg: ks.SensitivitySpecificity(w=0.3, batch=b, include_background=bg),
           lambda y, p, b, bg: np_ss(y, p, 0.3, 1.0, b, bg)),
    "iou": (lambda b, bg: ks.IoU(batch=b, include_background=bg),
            lambda y, p, b, bg: np_iou(y, p, 1.0, b, bg)),
    "tversky": (lambda b, bg: ks.Tversky(batch=b, include_background=bg),
                lambda y, p, b, bg: np_tversky(y, p, 0.3, 0.7, 1.0, b, bg)),
    "focal_tversky": (
        lambda b, bg: ks.FocalTversky(gamma=0.75, batch=b, include_background=bg),
        lambda y, p, b, bg: np_tversky(y, p, 0.3, 0.7, 1.0, b, bg, gamma=0.75)),
    "asym": (lambda b, bg: ks.AsymmetricSimilarity(batch=b, include_background=bg),
             lambda y, p, b, bg: np_asym(y, p, 1.5, 1.0, b, bg)),
    "gd": (lambda b, bg: ks.GeneralizedDice(batch=b, include_background=bg),
           lambda y, p, b, bg: np_pgd(y, p, 0.0, 1e-5, b, bg)),
    "pgd": (lambda b, bg: ks.PenaltyGeneralizedDice(batch=b, include_background=bg),
            lambda y, p, b, bg: np_pgd(y, p, 2.5, 1e-5, b, bg)),
    "gd_simple": (lambda b, bg: ks.GeneralizedDice(batch=b, include_background=bg,
                                                   weighting="simple"),
                  lambda y, p, b, bg: np_pgd(y, p, 0.0, 1e-5, b, bg, "simple")),
    "pgd_uniform": (lambda b, bg: ks.PenaltyGeneralizedDice(batch=b, include_background=bg,
                                                            weighting="uniform"),
                    lambda y, p, b, bg: np_pgd(y, p, 2.5, 1e-5, b, bg, "uniform")),
    "lovasz": (lambda b, bg: ks.Lovasz(batch=b, include_background=bg),
               lambda y, p, b, bg: np_lovasz(y, p, b, bg)),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", list(CASES))
def test_value_matches_equation(case, kind, rng):
    y, p, _ = make(rng, kind)
    factory, ref = CASES[case]
    for batch, bg in [(False, True), (True, False)]:
        value = factory(batch, bg).call(y.astype("f4"), p.astype("f4"))
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(value), ref(y, p, batch, bg), rtol=1e-5, atol=1e-6,
            err_msg=f"batch={batch} include_background={bg}",
        )


GRADIENT_CASES = [(c, list(KINDS)[i % len(KINDS)]) for i, c in enumerate(CASES)]


@pytest.mark.backends
@pytest.mark.parametrize("case, kind", GRADIENT_CASES)
def test_compiled_value_and_gradient_match_equation(case, kind, rng, jit, autodiff):
    y, p, _ = make(rng, kind)
    factory, ref = CASES[case]
    loss = factory(False, True)
    y32, p32 = y.astype("f4"), p.astype("f4")
    value = keras.ops.convert_to_numpy(jit(loss.call)(y32, p32))
    np.testing.assert_allclose(value, ref(y, p, False, True), rtol=1e-5, atol=1e-6)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
    points = rng.choice(p.size, 16, replace=False)
    expected = numeric_gradient(lambda x: ref(y, x, False, True), p, points)
    np.testing.assert_allclose(grad.ravel()[points], expected, rtol=2e-3, atol=2e-5)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("kind", list(KINDS))
def test_from_logits_equals_probabilities(kind, rng):
    y, p, logits = (a.astype("f4") for a in make(rng, kind))
    for case, (factory, _) in CASES.items():
        a = factory(False, True)
        b = type(a).from_config({**a.get_config(), "from_logits": True})
        np.testing.assert_allclose(float(b(y, logits)), float(a(y, p)), rtol=1e-5, err_msg=case)


def test_perfect_prediction_is_minimal(rng):
    for kind in KINDS:
        y, _, _ = make(rng, kind)
        for case, (factory, _) in CASES.items():
            assert abs(float(factory(False, True)(y, y))) < 1e-6, (case, kind)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF unknown batch")
def test_unknown_batch_size(rng):
    import tensorflow as tf

    y, p, _ = make(rng, "softmax3d")
    spec = tf.TensorSpec((None,) + y.shape[1:], tf.float32)
    for case, (factory, ref) in CASES.items():
        for batch in (False, True):
            fn = tf.function(factory(batch, True).call, input_signature=[spec, spec])
            np.testing.assert_allclose(
                fn(y.astype("f4"), p.astype("f4")).numpy(), ref(y, p, batch, True),
                rtol=1e-5, atol=1e-6, err_msg=f"{case} batch={batch}",
            )


def test_lovasz_on_binary_predictions_is_one_minus_iou(rng):
    y, p, _ = make(rng, "softmax3d")
    hard = np.eye(3)[p.argmax(-1)]
    for batch in (False, True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ks.Lovasz(batch=batch).call(y, hard)),
            np_iou(y, hard, 0.0, batch), rtol=1e-5,
        )


def test_pgd_is_gd_over_one_plus_k_times_complement(rng):
    y, p, _ = make(rng, "softmax3d")
    gd = 1 - keras.ops.convert_to_numpy(ks.GeneralizedDice(smooth=0.0).call(y, p))
    pgd = 1 - keras.ops.convert_to_numpy(ks.PenaltyGeneralizedDice(k=2.5, smooth=0.0).call(y, p))
    np.testing.assert_allclose(pgd, gd / (1 + 2.5 * (1 - gd)), rtol=1e-5)


def test_asymmetric_similarity_is_a_tversky_loss(rng):
    y, p, _ = make(rng, "sigmoid2d")
    b2 = 1.5**2
    np.testing.assert_allclose(
        float(ks.AsymmetricSimilarity(beta=1.5)(y, p)),
        float(ks.Tversky(alpha=1 / (1 + b2), beta=b2 / (1 + b2))(y, p)), rtol=1e-6,
    )


def test_bounds_and_empty_ground_truth(rng):
    y, p, _ = make(rng, "softmax3d")
    y[0, ..., 1] = 0.0  # class 1 absent from sample 0, still one-hot
    y[0, ..., 0] = 1.0 - y[0, ..., 2]
    for case, (factory, _) in CASES.items():
        v = keras.ops.convert_to_numpy(factory(False, True).call(y, p))
        assert np.all(np.isfinite(v)) and np.all(v >= -1e-6) and np.all(v <= 1 + 1e-6), case


# ------------------------------------------------------------ other libraries
def _monai_inputs(y, p):
    import torch

    to = lambda a: torch.tensor(np.moveaxis(a, -1, 1), dtype=torch.float64)  # noqa: E731
    return to(p), to(y)


MONAI_SINGLE_CHANNEL = "ignore:single channel prediction:UserWarning"


@pytest.mark.filterwarnings(MONAI_SINGLE_CHANNEL)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_four_dice_variants_agree_with_monai(squared, batch, rng):
    from monai.losses import DiceLoss

    for kind in KINDS:
        y, p, _ = make(rng, kind)
        for bg in (True, False):
            ours = ks.Dice(smooth=1e-3, squared=squared, batch=batch, include_background=bg)
            theirs = DiceLoss(include_background=bg, squared_pred=squared, batch=batch,
                              smooth_nr=1e-3, smooth_dr=1e-3)
            np.testing.assert_allclose(
                float(ours(y, p)), float(theirs(*_monai_inputs(y, p))), rtol=1e-5
            )


@pytest.mark.filterwarnings(MONAI_SINGLE_CHANNEL)
@pytest.mark.parametrize("batch", [False, True])
def test_ignore_mask_agrees_with_monai_masked_losses(batch, rng):
    """MONAI's `MaskedLoss` multiplies input and target by the mask, which
    for these losses (no `1 - g` term, no background side) is our mask."""
    import torch
    from monai.losses import GeneralizedDiceLoss, MaskedDiceLoss, MaskedLoss, TverskyLoss

    for kind in KINDS:
        y, p, _ = make(rng, kind)
        mask = (rng.uniform(size=y.shape[:-1] + (1,)) < 0.7).astype(y.dtype)
        target = ks.pack_targets(y, np.broadcast_to(mask, y.shape))
        m = torch.tensor(np.moveaxis(mask, -1, 1), dtype=torch.float64)
        pairs = [
            (ks.Dice(smooth=1e-3, batch=batch, mask_index=0),
             MaskedDiceLoss(batch=batch, smooth_nr=1e-3, smooth_dr=1e-3)),
            (ks.Tversky(alpha=0.3, beta=0.7, smooth=1e-3, batch=batch, mask_index=0),
             MaskedLoss(TverskyLoss, alpha=0.3, beta=0.7, batch=batch, smooth_nr=1e-3,
                        smooth_dr=1e-3)),
            (ks.GeneralizedDice(smooth=1e-5, batch=batch, mask_index=0),
             MaskedLoss(GeneralizedDiceLoss, batch=batch, smooth_nr=1e-5, smooth_dr=1e-5)),
        ]
        for ours, theirs in pairs:
            np.testing.assert_allclose(
                float(ours(target, p)), float(theirs(*_monai_inputs(y, p), mask=m)),
                rtol=1e-5, err_msg=f"{type(ours).__name__} {kind}")


@pytest.mark.filterwarnings(MONAI_SINGLE_CHANNEL)
@pytest.mark.parametrize("batch", [False, True])
def test_generalized_dice_and_tversky_agree_with_monai(batch, rng):
    from monai.losses import GeneralizedDiceLoss, TverskyLoss

    for kind in KINDS:
        y, p, _ = make(rng, kind)
        if kind == "softmax3d":  # an absent class exercises the weight rule
            y[..., 0] += y[..., 1]
            y[..., 1] = 0.0
        for bg in (True, False):
            for weighting in ("square", "simple", "uniform"):
                ours = ks.GeneralizedDice(smooth=1e-5, batch=batch, include_background=bg,
                                          weighting=weighting)
                theirs = GeneralizedDiceLoss(include_background=bg, batch=batch,
                                             w_type=weighting)
                np.testing.assert_allclose(
                    float(ours(y, p)), float(theirs(*_monai_inputs(y, p))), rtol=1e-4,
                    err_msg=f"{kind} include_background={bg} weighting={weighting}",
                )
            ours = ks.Tversky(alpha=0.3, beta=0.7, smooth=1e-3, batch=batch, include_background=bg)
            theirs = TverskyLoss(include_background=bg, alpha=0.3, beta=0.7, batch=batch,
                                 smooth_nr=1e-3, smooth_dr=1e-3)
            np.testing.assert_allclose(
                float(ours(y, p)), float(theirs(*_monai_inputs(y, p))), rtol=1e-5
            )


def test_agrees_with_keras_dice(rng):
    y, p, _ = make(rng, "sigmoid2d")
    axis = (1, 2, 3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ks.Dice(smooth=0.0, batch=False).call(y, p)),
        keras.ops.convert_to_numpy(keras.losses.dice(y, p, axis=axis)), rtol=1e-5,
    )


def test_tversky_alpha_weighs_false_positives():
    """Our convention on its own terms (Keras swapped its alpha and beta up
    to 3.15.1 and fixed it later, so no comparison with it is stable): a
    prediction with only false positives is penalized by alpha alone."""
    y = np.array([[[1.0], [0.0]]], "float32")
    p = np.array([[[1.0], [1.0]]], "float32")  # TP 1, FP 1, FN 0
    for alpha, beta in ((0.3, 0.7), (0.9, 0.1)):
        got = float(ks.Tversky(alpha=alpha, beta=beta, smooth=0.0)(y, p))
        np.testing.assert_allclose(got, 1.0 - 1.0 / (1.0 + alpha), rtol=1e-6)


# ----------------------------------------------------------- serialization
ALL = [factory(True, False) for factory, _ in CASES.values()] + [
    ks.Tversky(alpha=0.1, beta=0.9, smooth=0.5, from_logits=True),
    ks.FocalTversky(gamma=1.5),
    ks.PenaltyGeneralizedDice(k=1.0),
]


@pytest.mark.parametrize("loss", ALL, ids=lambda l: l.name)
def test_config_round_trip(loss, rng):
    y, p, _ = make(rng, "softmax3d")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    packed = ks.pack_targets(y, np.ones_like(y))  # maps after the labels are ignored
    np.testing.assert_allclose(float(clone(packed, p)), float(loss(y, p)), rtol=1e-6)


@pytest.mark.parametrize(
    "make_loss, match",
    [
        (lambda: ks.SensitivitySpecificity(w=1.5), "`w`"),
        (lambda: ks.IoU(smooth=-1), "`smooth`"),
        (lambda: ks.Tversky(alpha=-0.1), "`alpha`"),
        (lambda: ks.FocalTversky(gamma=0), "`gamma`"),
        (lambda: ks.AsymmetricSimilarity(beta=0), "`beta`"),
        (lambda: ks.PenaltyGeneralizedDice(k=-1), "`k`"),
        (lambda: ks.GeneralizedDice(smooth="a"), "`smooth`"),
        (lambda: ks.GeneralizedDice(weighting="log"), "`weighting`"),
    ],
)
def test_bad_hyperparameters_raise(make_loss, match):
    with pytest.raises(ValueError, match=match):
        make_loss()


# ------------------------------------------------------------- soft labels
def _soft_case(rng, shape=(2, 9, 10, 1)):
    """A soft target (the mean of 4 random annotations) and a prediction."""
    annotations = rng.random((4,) + shape) > rng.uniform(0.3, 0.7, (4, 1, 1, 1, 1))
    return annotations.mean(0).astype("float32"), rng.uniform(0.02, 0.98, shape).astype("float32")


SOFT_LOSSES = {
    "dice": lambda **kw: ks.Dice(smooth=1e-3, **kw),
    "iou": lambda **kw: ks.IoU(smooth=1e-3, **kw),
    "tversky": lambda **kw: ks.Tversky(alpha=0.4, beta=0.6, smooth=1e-3, **kw),
    "focal_tversky": lambda **kw: ks.FocalTversky(smooth=1e-3, **kw),
    "asymmetric_similarity": lambda **kw: ks.AsymmetricSimilarity(smooth=1e-3, **kw),
    "generalized_dice": lambda **kw: ks.GeneralizedDice(**kw),
    "penalty_generalized_dice": lambda **kw: ks.PenaltyGeneralizedDice(**kw),
    "dice_ce": lambda **kw: ks.DiceCE(smooth=1e-3, **kw),
}


@pytest.mark.parametrize("name", sorted(SOFT_LOSSES))
def test_soft_label_makes_the_soft_target_the_minimum(name, rng):
    """With `soft_label=True` a prediction equal to the soft target scores
    lower than any perturbation of it; the default overlap `sum g s`
    prefers a sharper prediction. Binary targets: both forms agree."""
    y, p = _soft_case(rng)
    loss = SOFT_LOSSES[name](soft_label=True)
    at_target = float(loss(y, y))
    for step in (0.05, -0.05):
        moved = np.clip(y + step * np.sign(y - 0.5 + 1e-3), 0.0, 1.0)
        assert float(loss(y, moved)) > at_target
    assert float(loss(y, rng.uniform(0, 1, y.shape).astype("float32"))) > at_target
    if name in ("dice", "iou"):  # the default form is not minimized at y
        sharp = (y > 0.5).astype("float32")
        plain = SOFT_LOSSES[name]()
        assert float(plain(y, sharp)) < float(plain(y, y))
    binary = (y > 0.5).astype("float32")
    np.testing.assert_allclose(float(loss(binary, p)), float(SOFT_LOSSES[name]()(binary, p)),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings(MONAI_SINGLE_CHANNEL)
@pytest.mark.parametrize("batch", [False, True])
def test_soft_label_agrees_with_monai(batch, rng):
    from monai.losses import DiceLoss, GeneralizedDiceLoss, TverskyLoss

    y, p = _soft_case(rng)
    pairs = [
        (ks.Dice(smooth=1e-3, batch=batch, soft_label=True),
         DiceLoss(batch=batch, smooth_nr=1e-3, smooth_dr=1e-3, soft_label=True)),
        (ks.IoU(smooth=1e-3, batch=batch, soft_label=True),
         DiceLoss(batch=batch, jaccard=True, smooth_nr=1e-3, smooth_dr=1e-3, soft_label=True)),
        (ks.Tversky(alpha=0.3, beta=0.7, smooth=1e-3, batch=batch, soft_label=True),
         TverskyLoss(alpha=0.3, beta=0.7, batch=batch, smooth_nr=1e-3, smooth_dr=1e-3,
                     soft_label=True)),
        (ks.GeneralizedDice(smooth=1e-5, batch=batch, soft_label=True),
         GeneralizedDiceLoss(batch=batch, w_type="square", soft_label=True)),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(float(ours(y, p)), float(theirs(*_monai_inputs(y, p))),
                                   rtol=1e-5, err_msg=type(ours).__name__)


# ------------------------------------------- generalized Wasserstein Dice
GWD_MATRIX = np.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.6, 0.3], [1.0, 0.6, 0.0, 0.5],
                       [1.0, 0.3, 0.5, 0.0]])


def np_gwd(y, p, m, weighting="default", smooth=1e-5):
    """Fidon et al. Eq. 6 and 9, voxel by voxel, from one-hot labels."""
    out = []
    for g, q in zip(y.reshape(len(y), -1, y.shape[-1]), p.reshape(len(p), -1, p.shape[-1])):
        labels = g.argmax(-1)
        w = np.array([sum(m[k, l] * q[i, l] for l in range(m.shape[0]))
                      for i, k in enumerate(labels)])
        if weighting == "gdl":
            alpha = 1.0 / (np.bincount(labels, minlength=m.shape[0]) + 1.0)
        else:
            alpha = np.r_[0.0, np.ones(m.shape[0] - 1)]
        a = alpha[labels]
        tp = (a * (1 - w)).sum()
        den = (a * (2 - w)).sum() if weighting == "gdl" else 2 * tp + w.sum()
        out.append(1 - (2 * tp + smooth) / (den + smooth))
    return np.array(out)


def _gwd_case(rng, shape=(2, 5, 6, 4)):
    labels = rng.integers(0, shape[-1], shape[:-1])
    y = np.eye(shape[-1])[labels]
    logits = rng.normal(size=shape)
    return y, logits


@pytest.mark.parametrize("weighting", ["default", "gdl"])
def test_generalized_wasserstein_dice_matches_equation_and_monai(weighting, rng):
    import torch
    from monai.losses import GeneralizedWassersteinDiceLoss

    y, logits = _gwd_case(rng)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    loss = ks.GeneralizedWassersteinDice(GWD_MATRIX, weighting=weighting, from_logits=True)
    ours = keras.ops.convert_to_numpy(loss.call(y.astype("f4"), logits.astype("f4")))
    np.testing.assert_allclose(ours, np_gwd(y, p, GWD_MATRIX, weighting), rtol=1e-5)
    theirs = GeneralizedWassersteinDiceLoss(GWD_MATRIX, weighting_mode=weighting.upper()
                                            if weighting == "gdl" else weighting,
                                            reduction="none")
    t_logits = torch.from_numpy(np.moveaxis(logits, -1, 1).astype("f4").copy())
    t_labels = torch.from_numpy(y.argmax(-1)[:, None])
    np.testing.assert_allclose(ours, theirs(t_logits, t_labels).numpy(), rtol=1e-5)
    # a matrix whose largest distance is not 1 is rescaled to it, as MONAI does
    scaled = ks.GeneralizedWassersteinDice(3 * GWD_MATRIX, weighting=weighting, from_logits=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(scaled.call(y.astype("f4"), logits.astype("f4"))), ours,
        rtol=1e-6)
    theirs = GeneralizedWassersteinDiceLoss(3 * GWD_MATRIX, weighting_mode=weighting.upper()
                                            if weighting == "gdl" else weighting,
                                            reduction="none")
    np.testing.assert_allclose(ours, theirs(t_logits, t_labels).numpy(), rtol=1e-5)


def test_generalized_wasserstein_dice_one_sigmoid_channel_is_two_classes(rng):
    import torch
    from monai.losses import GeneralizedWassersteinDiceLoss

    z = rng.normal(size=(3, 7, 6, 1)).astype("f4")
    y = (rng.random((3, 7, 6, 1)) > 0.7).astype("f4")
    m = [[0.0, 1.0], [1.0, 0.0]]
    ours = ks.GeneralizedWassersteinDice(m, from_logits=True).call(y, z)
    # softmax of (0, z) is (1 - sigmoid z, sigmoid z)
    t_logits = torch.from_numpy(np.concatenate([np.zeros_like(z), z], -1).transpose(0, 3, 1, 2))
    theirs = GeneralizedWassersteinDiceLoss(np.array(m), reduction="none")(
        t_logits, torch.from_numpy(y.astype("int64").transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), theirs.numpy(), rtol=1e-5)
    # with M = 1 - I the loss is the soft Dice loss of the foreground
    s = 1 / (1 + np.exp(-z.astype("f8")))
    axes = (1, 2, 3)
    dice = 1 - (2 * (y * s).sum(axes) + 1e-5) / ((y + s).sum(axes) + 1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), dice, rtol=1e-5)


@pytest.mark.backends
def test_generalized_wasserstein_dice_compiled_value_and_gradient(rng, jit, autodiff):
    y, logits = _gwd_case(rng, (2, 4, 3, 3, 4))
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    loss = ks.GeneralizedWassersteinDice(GWD_MATRIX, weighting="gdl")
    y32, p32 = y.astype("f4"), p.astype("f4")
    value = keras.ops.convert_to_numpy(jit(loss.call)(y32, p32))
    np.testing.assert_allclose(value, np_gwd(y, p, GWD_MATRIX, "gdl"), rtol=1e-5)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
    points = rng.choice(p.size, 12, replace=False)
    expected = numeric_gradient(lambda x: np_gwd(y, x, GWD_MATRIX, "gdl"), p, points)
    np.testing.assert_allclose(grad.ravel()[points], expected, rtol=2e-3, atol=2e-5)


def test_generalized_wasserstein_dice_config_and_bad_matrices():
    loss = ks.GeneralizedWassersteinDice(GWD_MATRIX, weighting="gdl", smooth=1e-3)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is ks.GeneralizedWassersteinDice
    assert again.distance_matrix == GWD_MATRIX.tolist() and again.weighting == "gdl"
    for bad in ([[0, 1]], [[1, 1], [1, 0]], [[0, -1], [1, 0]], "matrix", [[0.0]],
                [[0, 0], [0, 0]]):
        with pytest.raises(ValueError, match="`distance_matrix`"):
            ks.GeneralizedWassersteinDice(bad)
    with pytest.raises(ValueError, match="`weighting`"):
        ks.GeneralizedWassersteinDice(GWD_MATRIX, weighting="GDL")
    with pytest.raises(ValueError, match=r"is \(4, 4\), the prediction has 3 classes"):
        ks.GeneralizedWassersteinDice(GWD_MATRIX)(np.eye(3)[None, None], np.eye(3)[None, None])
