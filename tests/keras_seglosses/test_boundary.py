"""Boundary losses [004, Eq. 19-21] against scipy distance maps, analytical
gradients and MONAI's HausdorffDTLoss (and its MaskedLoss for ignore
masks)."""

import keras
import numpy as np
import pytest
from _references import np_signed, perturb_ignored, random_case, random_ignore_mask

import keras_seglosses as ks


# ------------------------------------------------------------ numpy references
def classes(x, bg):
    return x[..., 1:] if (not bg and x.shape[-1] > 1) else x


def np_boundary(y, p, bg=False, spacing=None):
    """Eq. 20 as a voxel mean: mean_i phi_G(i) s_i, mean over classes."""
    v = classes(np_signed(y, spacing) * p, bg)
    return v.mean(axis=tuple(range(1, y.ndim - 1))).mean(-1)


def np_hd_weight(y, p, alpha=2.0):
    return np.abs(np_signed(y)) ** alpha + np.abs(np_signed((p > 0.5).astype(float))) ** alpha


def np_hd(y, p, alpha=2.0, bg=False):
    """Eq. 21 (squared error, MONAI): mean_i (s - g)^2 (d_G^a + d_S^a)."""
    v = classes((p - y) ** 2 * np_hd_weight(y, p, alpha), bg)
    return v.mean(axis=tuple(range(1, y.ndim - 1))).mean(-1)


# --------------------------------------------------------------------- inputs
KINDS = {"sigmoid2d": ((2, 6, 7, 1), False), "softmax3d": ((2, 4, 5, 6, 3), True)}


def make(rng, kind):
    shape, softmax = KINDS[kind]
    y, p, logits = random_case(rng, shape, softmax)
    if not softmax:
        y[1] = 0.0  # an empty mask: phi = d_G = 0
    return y, p, logits


def n_voxels(y):
    return np.prod(y.shape[1:-1])


@pytest.mark.backends
@pytest.mark.parametrize("kind", list(KINDS))
def test_boundary_value_and_gradient(kind, rng, jit, autodiff):
    y, p, _ = make(rng, kind)
    y32, p32 = y.astype("f4"), p.astype("f4")
    loss = ks.Boundary()
    value = keras.ops.convert_to_numpy(jit(loss.call)(y32, p32))
    np.testing.assert_allclose(value, np_boundary(y, p), rtol=1e-5, atol=1e-6)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
    c_used = max(y.shape[-1] - 1, 1)
    expected = np_signed(y) / (n_voxels(y) * c_used)
    if y.shape[-1] > 1:
        expected[..., 0] = 0.0
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.backends
@pytest.mark.parametrize("kind", list(KINDS))
def test_hausdorff_value_and_gradient(kind, rng, jit, autodiff):
    y, p, _ = make(rng, kind)
    y32, p32 = y.astype("f4"), p.astype("f4")
    loss = ks.HausdorffDT(include_background=True)
    value = keras.ops.convert_to_numpy(jit(loss.call)(y32, p32))
    np.testing.assert_allclose(value, np_hd(y, p, bg=True), rtol=1e-5, atol=1e-6)
    # the distance maps carry no gradient: d/ds = 2 (s - g) (d_G^a + d_S^a) / (N C)
    grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
    expected = 2 * (p - y) * np_hd_weight(y, p) / (n_voxels(y) * y.shape[-1])
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_options_match_equation(kind, rng):
    y, p, logits = make(rng, kind)
    spacing = (2.0, 1.0) if len(y.shape) == 4 else (1.0, 0.5, 2.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            ks.Boundary(include_background=True, spacing=spacing).call(y, p)
        ),
        np_boundary(y, p, True, spacing), rtol=1e-5, atol=1e-6,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ks.HausdorffDT(alpha=1.0).call(y, p)),
        np_hd(y, p, 1.0, False), rtol=1e-5, atol=1e-6,
    )
    for cls in (ks.Boundary, ks.HausdorffDT):
        np.testing.assert_allclose(
            float(cls(from_logits=True)(y, logits)), float(cls()(y, p)), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("kind", list(KINDS))
def test_signed_distance_map_matches_scipy(kind, rng):
    from keras_seglosses.losses.boundary import signed_distance_map

    y, _, _ = make(rng, kind)
    spacing = (2.0, 1.0) if len(y.shape) == 4 else (1.0, 0.5, 2.0)
    got = keras.ops.convert_to_numpy(signed_distance_map(y, spacing))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np_signed(y, spacing), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_precomputed_packed_maps_give_the_same_loss(kind, rng):
    y, p, _ = make(rng, kind)
    phi = np_signed(y)
    np.testing.assert_allclose(
        float(ks.Boundary()(ks.pack_targets(y, phi), p)), float(ks.Boundary()(y, p)),
        rtol=1e-5, atol=1e-7,
    )
    np.testing.assert_allclose(
        float(ks.HausdorffDT()(ks.pack_targets(y, np.abs(phi)), p)),
        float(ks.HausdorffDT()(y, p)), rtol=1e-5,
    )
    packed = ks.pack_targets(y, np.ones_like(y), phi)  # e.g. an RP map first
    np.testing.assert_allclose(
        float(ks.Boundary(map_index=1)(packed, p)), float(ks.Boundary()(y, p)),
        rtol=1e-5, atol=1e-7,
    )


def test_perfect_prediction_is_minimal(rng):
    for kind in KINDS:
        y, p, _ = make(rng, kind)
        assert float(ks.HausdorffDT()(y, y)) == 0.0
        # phi_G s is smallest when s covers exactly the voxels where phi_G < 0
        best = float(ks.Boundary()(y, y))
        for s in (p, np.clip(y + 0.1 * p, 0, 1), 1 - y):
            assert float(ks.Boundary()(y, s)) >= best - 1e-7


@pytest.mark.filterwarnings("ignore:single channel prediction:UserWarning")
@pytest.mark.parametrize("bg", [False, True])
def test_hausdorff_agrees_with_monai(bg, rng):
    import torch
    from monai.losses import HausdorffDTLoss

    for kind in KINDS:
        y, p, _ = make(rng, kind)
        to = lambda a: torch.tensor(np.moveaxis(a, -1, 1), dtype=torch.float32)  # noqa: E731
        for alpha in (2.0, 1.5):
            theirs = HausdorffDTLoss(alpha=alpha, include_background=bg, reduction="none")
            theirs = theirs(to(p), to(y)).numpy()
            theirs = theirs.reshape(theirs.shape[0], theirs.shape[1]).mean(1)
            ours = ks.HausdorffDT(alpha=alpha, include_background=bg).call(y, p)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), theirs, rtol=1e-5)
            # log=True is log(1 + HD) per sample: the log of the mean over classes
            logged = ks.HausdorffDT(alpha=alpha, include_background=bg, log=True).call(y, p)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(logged), np.log1p(theirs),
                                       rtol=1e-5)


@pytest.mark.filterwarnings("ignore:single channel prediction:UserWarning")
def test_log_hausdorff_agrees_with_monai_per_sample(rng):
    import torch
    from monai.losses import LogHausdorffDTLoss

    to = lambda a: torch.tensor(np.moveaxis(a, -1, 1), dtype=torch.float32)  # noqa: E731
    for kind in KINDS:
        y, p, _ = make(rng, kind)
        if y.shape[-1] > 1:
            continue  # MONAI logs each class; ours logs the mean over classes
        theirs = LogHausdorffDTLoss(include_background=True, reduction="none")(to(p), to(y))
        ours = ks.HausdorffDT(include_background=True, log=True).call(y, p)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours),
                                   theirs.numpy().reshape(len(y)), rtol=1e-5)
        one = LogHausdorffDTLoss(include_background=True)(to(p[:1]), to(y[:1]))
        np.testing.assert_allclose(float(ks.HausdorffDT(log=True)(y[:1], p[:1])), float(one),
                                   rtol=1e-5)


@pytest.mark.parametrize(
    "loss",
    [ks.Boundary(include_background=True, map_index=1, spacing=[1.0, 2.0]),
     ks.HausdorffDT(alpha=1.5, from_logits=True, spacing=0.5, log=True)],
    ids=lambda l: l.name,
)
def test_config_round_trip(loss, rng):
    y, p, _ = make(rng, "sigmoid2d")
    if loss.map_index is not None:  # an explicit slot must hold the map
        y = ks.pack_targets(y, np.zeros_like(y), np.asarray(ks.signed_distance_map(y)))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    np.testing.assert_allclose(float(clone(y, p)), float(loss(y, p)), rtol=1e-6)


@pytest.mark.parametrize(
    "make_loss, match",
    [
        (lambda: ks.HausdorffDT(alpha=0), "`alpha`"),
        (lambda: ks.Boundary(map_index=1.5), "`map_index`"),
        (lambda: ks.Boundary(spacing=(1.0, -1.0)), "`spacing`"),
    ],
)
def test_bad_hyperparameters_raise(make_loss, match):
    with pytest.raises(ValueError, match=match):
        make_loss()


# ---------------------------------------------------------------- ignore mask
def np_boundary_masked(y, p, m, bg=False, spacing=None):
    """Eq. 20 over the counted voxels: phi of the masked labels,
    sum_i m_i phi(i) p_i / sum_i m_i per class, 0 for a class without any."""
    axes = tuple(range(1, y.ndim - 1))
    num = (m * np_signed(y * m, spacing) * p).sum(axes)
    den = m.sum(axes)
    return classes(np.where(den > 0, num / np.where(den > 0, den, 1), 0.0), bg).mean(-1)


def np_hd_weight_masked(y, p, m, alpha=2.0):
    d_g = np.abs(np_signed(y * m))
    d_s = np.abs(np_signed((p * m > 0.5).astype(float)))
    return d_g**alpha + d_s**alpha


def np_hd_masked(y, p, m, alpha=2.0, bg=False):
    """Eq. 21 over the counted voxels, both maps of the masked volumes."""
    axes = tuple(range(1, y.ndim - 1))
    num = (m * (p - y) ** 2 * np_hd_weight_masked(y, p, m, alpha)).sum(axes)
    return classes(num / m.sum(axes), bg).mean(-1)


def masked_case(rng, kind):
    y, p, logits = make(rng, kind)
    m = random_ignore_mask(rng, y.shape)
    return y, p, logits, m


@pytest.mark.backends
@pytest.mark.parametrize("kind", list(KINDS))
def test_masked_value_and_gradient(kind, rng, jit, autodiff):
    y, p, _, m = masked_case(rng, kind)
    m[1] = 0.0  # a sample without counted voxels: 0, no gradient
    target = ks.pack_targets(y, m).astype("f4")
    p32 = p.astype("f4")
    c_used = max(y.shape[-1] - 1, 1)
    counted = m.sum(axis=tuple(range(1, y.ndim - 1)), keepdims=True)
    loss = ks.Boundary(mask_index=0)
    value = keras.ops.convert_to_numpy(jit(loss.call)(target, p32))
    np.testing.assert_allclose(value, np_boundary_masked(y, p, m), rtol=1e-5, atol=1e-6)
    assert value[1] == 0.0
    grad = autodiff(lambda x: keras.ops.sum(loss.call(target, x)))(p32)
    expected = m * np_signed(y * m) / (np.maximum(counted, 1) * c_used)
    if y.shape[-1] > 1:
        expected[..., 0] = 0.0
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)

    hd = ks.HausdorffDT(include_background=True, mask_index=0)
    value = keras.ops.convert_to_numpy(jit(hd.call)(target, p32))
    want = np_hd_masked(y[:1], p[:1], m[:1], bg=True)
    np.testing.assert_allclose(value, [want[0], 0.0], rtol=1e-5, atol=1e-6)
    grad = autodiff(lambda x: keras.ops.sum(hd.call(target, x)))(p32)
    expected = (2 * m * (p - y) * np_hd_weight_masked(y, p, m)
                / (np.maximum(counted, 1) * y.shape[-1]))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    assert np.all(grad[m == 0] == 0.0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_masked_options_and_ignored_voxels(kind, rng):
    y, p, logits, m = masked_case(rng, kind)
    spacing = (2.0, 1.0) if len(y.shape) == 4 else (1.0, 0.5, 2.0)
    target = ks.pack_targets(y, np.ones_like(y), m)  # the mask after another map
    cases = [
        (ks.Boundary(include_background=True, spacing=spacing, mask_index=1),
         np_boundary_masked(y, p, m, True, spacing)),
        (ks.HausdorffDT(alpha=1.5, mask_index=1), np_hd_masked(y, p, m, 1.5)),
        (ks.HausdorffDT(alpha=1.5, log=True, mask_index=1), np.log1p(np_hd_masked(y, p, m, 1.5))),
    ]
    y2, p2, logits2 = perturb_ignored(rng, m, y, p, logits)
    other = ks.pack_targets(y2, np.ones_like(y), m)
    for loss, want in cases:
        got = keras.ops.convert_to_numpy(loss.call(target, p))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # labels and predictions at ignored voxels change nothing
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.call(other, p2)), got,
                                   rtol=1e-5, atol=1e-6)
        logit_loss = type(loss).from_config({**loss.get_config(), "from_logits": True})
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logit_loss.call(other, logits2)),
                                   got, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_masked_packed_maps_are_masked_too(kind, rng):
    """A packed map is read masked: packing the map of the unmasked labels
    and changing it at ignored voxels gives the loss of the computed map
    wherever the map agrees there, that is, for the masked labels' map."""
    y, p, _, m = masked_case(rng, kind)
    phi = np_signed(y * m)
    (noise,) = perturb_ignored(rng, m, phi)
    for cls, packed in ((ks.Boundary, noise), (ks.HausdorffDT, np.abs(noise))):
        got = float(cls(map_index=0, mask_index=1)(ks.pack_targets(y, packed, m), p))
        want = float(cls(mask_index=0)(ks.pack_targets(y, m), p))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:single channel prediction:UserWarning")
@pytest.mark.parametrize("bg", [False, True])
def test_masked_hausdorff_is_monai_masked_loss_over_the_counted_voxels(bg, rng):
    """MONAI's MaskedLoss multiplies input and target by the mask, as here,
    so both compute the same maps; its mean divides by every voxel, this
    one by the counted ones."""
    import torch
    from monai.losses import HausdorffDTLoss, MaskedLoss

    to = lambda a: torch.tensor(np.moveaxis(a, -1, 1), dtype=torch.float32)  # noqa: E731
    for kind in KINDS:
        y, p, _, m = masked_case(rng, kind)
        theirs = MaskedLoss(HausdorffDTLoss, include_background=bg, reduction="none")
        theirs = theirs(to(p), to(y), to(m[..., :1])).numpy()
        theirs = theirs.reshape(theirs.shape[0], theirs.shape[1]).mean(1)
        fraction = m[..., 0].reshape(len(m), -1).mean(1)
        ours = ks.HausdorffDT(include_background=bg, mask_index=0).call(ks.pack_targets(y, m), p)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours) * fraction, theirs,
                                   rtol=1e-5)


def test_mask_index_arguments():
    loss = ks.HausdorffDT(map_index=0, mask_index=1, log=True)
    assert [tuple(r) for r in ks.map_reads(loss, 1)] == [("distance", 0, 1), ("mask", 1, 1)]
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert clone.get_config() == loss.get_config() and clone.mask_index == 1
    for make_loss in (lambda: ks.Boundary(map_index=2, mask_index=2),
                      lambda: ks.HausdorffDT(mask_index=-1),
                      lambda: ks.Boundary(mask_index=0.5)):
        with pytest.raises(ValueError, match="`mask_index`"):
            make_loss()
    with pytest.raises(ValueError, match="ignore mask.*pack_targets"):
        ks.Boundary(mask_index=0)(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))
