"""Soft clDice (Shit et al., CVPR 2021): a scipy transcription of the soft
skeleton and of Eq. 1-3, MONAI's SoftclDiceLoss / SoftDiceclDiceLoss (and
their MaskedLoss for ignore masks), the compiled path, and configs."""

import keras
import numpy as np
import pytest
from _references import perturb_ignored, random_ignore_mask
from scipy import ndimage

import keras_seglosses as ks

MONAI_SINGLE_CHANNEL = "ignore:single channel prediction"


def _filter(x, fn, footprint):
    """`fn` (ndimage's minimum/maximum filter) per sample and channel;
    `nearest` borders equal ignoring outside voxels for 3-wide windows."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[-1]):
            out[b, ..., c] = fn(x[b, ..., c], footprint=footprint, mode="nearest")
    return out


def np_skeleton(x, iterations):
    rank = x.ndim - 2
    cross = ndimage.generate_binary_structure(rank, 1)
    cube = np.ones((3,) * rank, bool)
    erode = lambda v: _filter(v, ndimage.minimum_filter, cross)  # noqa: E731
    opened = lambda v: _filter(erode(v), ndimage.maximum_filter, cube)  # noqa: E731
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    skel = relu(x - opened(x))
    for _ in range(iterations):
        x = erode(x)
        delta = relu(x - opened(x))
        skel = skel + relu(delta - skel * delta)
    return skel


def np_cl_dice(y, p, iterations=3, smooth=1.0, eps=1e-4, bg=True):
    if not bg and y.shape[-1] > 1:
        y, p = y[..., 1:], p[..., 1:]
    sp, sg = np_skeleton(p, iterations), np_skeleton(y, iterations)
    axes = tuple(range(1, y.ndim))
    t_prec = ((sp * y).sum(axes) + smooth) / (sp.sum(axes) + smooth)
    t_sens = ((sg * p).sum(axes) + smooth) / (sg.sum(axes) + smooth)
    return 1 - 2 * t_prec * t_sens / (t_prec + t_sens + eps)


def np_dice(y, p, smooth=1.0, bg=True):
    if not bg and y.shape[-1] > 1:
        y, p = y[..., 1:], p[..., 1:]
    axes = tuple(range(1, y.ndim - 1))
    return (1 - (2 * (y * p).sum(axes) + smooth) / ((y + p).sum(axes) + smooth)).mean(-1)


def _tubes(rng, shape):
    """Thin random tubes (dilated random walks) as labels, a noisy
    prediction of them."""
    y = np.zeros(shape, "float64")
    spatial = shape[1:-1]
    for b in range(shape[0]):
        for c in range(shape[-1]):
            pos = np.array([s // 2 for s in spatial])
            for _ in range(4 * max(spatial)):
                pos = np.clip(pos + rng.integers(-1, 2, len(spatial)), 0, np.array(spatial) - 1)
                y[(b, *pos, c)] = 1.0
            y[b, ..., c] = ndimage.binary_dilation(y[b, ..., c] > 0)
    p = np.clip(0.8 * y + 0.3 * rng.random(shape), 0, 1)
    return y, p


CASES = {"2d": (2, 20, 18, 1), "2d_classes": (2, 16, 17, 3), "3d": (2, 12, 11, 10, 1),
         "3d_classes": (1, 10, 12, 9, 2)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_soft_cl_dice_matches_the_transcription(case, rng):
    y, p = _tubes(rng, CASES[case])
    for iterations, bg in ((3, True), (1, False), (5, True)):
        ours = ks.SoftClDice(iterations=iterations, include_background=bg).call(
            y.astype("f4"), p.astype("f4"))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours),
                                   np_cl_dice(y, p, iterations, bg=bg), rtol=1e-5, atol=1e-6)
        both = ks.DiceClDice(alpha=0.3, iterations=iterations, include_background=bg).call(
            y.astype("f4"), p.astype("f4"))
        expected = 0.7 * np_dice(y, p, bg=bg) + 0.3 * np_cl_dice(y, p, iterations, bg=bg)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(both), expected, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.filterwarnings(MONAI_SINGLE_CHANNEL)
@pytest.mark.parametrize("case", sorted(CASES))
def test_agrees_with_monai(case, rng):
    import torch
    from monai.losses import SoftclDiceLoss, SoftDiceclDiceLoss

    y, p = _tubes(rng, CASES[case])
    t = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).astype("f4").copy())  # noqa: E731
    for bg in (True, False):
        theirs = SoftclDiceLoss(iter_=3, include_background=bg)(t(p), t(y))
        ours = ks.SoftClDice(iterations=3, include_background=bg)(y.astype("f4"), p.astype("f4"))
        np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
        theirs = SoftDiceclDiceLoss(iter_=3, alpha=0.4, include_background=bg)(t(p), t(y))
        ours = ks.DiceClDice(alpha=0.4, include_background=bg)(y.astype("f4"), p.astype("f4"))
        np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def test_a_broken_centreline_costs_more_than_a_thick_one():
    y = np.zeros((1, 15, 15, 1), "f4")
    y[0, 7, 1:14] = 1.0
    broken = y.copy()
    broken[0, 7, 6:9] = 0.0  # a gap in the line
    thick = y.copy()
    thick[0, 6:9, 1:14] = 1.0  # the line, three voxels wide
    loss = ks.SoftClDice()
    assert float(loss(y, y)) < 1e-3
    assert float(loss(y, broken)) > float(loss(y, thick))
    # plain Dice ranks them the other way round
    assert float(ks.Dice(batch=False)(y, broken)) < float(ks.Dice(batch=False)(y, thick))


@pytest.mark.backends
@pytest.mark.parametrize("case", ["2d", "3d_classes"])
def test_compiled_value_and_finite_gradient(case, rng, jit, autodiff):
    y, p = _tubes(rng, CASES[case])
    y32, p32 = y.astype("f4"), p.astype("f4")
    for loss, ref in ((ks.SoftClDice(), np_cl_dice(y, p)),
                      (ks.DiceClDice(), 0.5 * np_dice(y, p) + 0.5 * np_cl_dice(y, p))):
        value = keras.ops.convert_to_numpy(jit(loss.call)(y32, p32))
        np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-6)
        grad = autodiff(lambda x: keras.ops.sum(loss.call(y32, x)))(p32)
        assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_config_round_trip_and_bad_arguments():
    loss = ks.DiceClDice(alpha=0.2, iterations=5, smooth=0.5, include_background=False)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is ks.DiceClDice
    assert (again.alpha, again.iterations, again.smooth, again.include_background) == (
        0.2, 5, 0.5, False)
    for make, match in ((lambda: ks.SoftClDice(iterations=-1), "`iterations`"),
                        (lambda: ks.SoftClDice(iterations=2.5), "`iterations`"),
                        (lambda: ks.DiceClDice(alpha=1.5), "`alpha`"),
                        (lambda: ks.SoftClDice(smooth=-1), "`smooth`")):
        with pytest.raises(ValueError, match=match):
            make()


# ---------------------------------------------------------------- ignore mask
def np_cl_dice_masked(y, p, m, iterations=3, smooth=1.0, eps=1e-4, bg=True):
    """Eq. 1-2 over the counted voxels: the skeletons of the masked volumes,
    every sum weighted by the mask."""
    if not bg and y.shape[-1] > 1:
        y, p, m = y[..., 1:], p[..., 1:], m[..., 1:]
    sp, sg = np_skeleton(p * m, iterations), np_skeleton(y * m, iterations)
    axes = tuple(range(1, y.ndim))
    t_prec = ((m * sp * y).sum(axes) + smooth) / ((m * sp).sum(axes) + smooth)
    t_sens = ((m * sg * p).sum(axes) + smooth) / ((m * sg).sum(axes) + smooth)
    return 1 - 2 * t_prec * t_sens / (t_prec + t_sens + eps)


def np_dice_masked(y, p, m, smooth=1.0, bg=True):
    if not bg and y.shape[-1] > 1:
        y, p, m = y[..., 1:], p[..., 1:], m[..., 1:]
    axes = tuple(range(1, y.ndim - 1))
    num = 2 * (m * y * p).sum(axes) + smooth
    return (1 - num / ((m * (y + p)).sum(axes) + smooth)).mean(-1)


def _masked_tubes(rng, case):
    y, p = _tubes(rng, CASES[case])
    return y, p, random_ignore_mask(rng, y.shape)


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_matches_the_transcription_and_ignores_masked_voxels(case, rng):
    y, p, m = _masked_tubes(rng, case)
    target = ks.pack_targets(y, m).astype("f4")
    y2, p2 = perturb_ignored(rng, m, y, p)
    other = ks.pack_targets(y2, m).astype("f4")
    for iterations, bg in ((3, True), (2, False)):
        cl = np_cl_dice_masked(y, p, m, iterations, bg=bg)
        assert np.abs(cl - np_cl_dice(y, p, iterations, bg=bg)).max() > 1e-3
        both = 0.7 * np_dice_masked(y, p, m, bg=bg) + 0.3 * cl
        for loss, want in (
            (ks.SoftClDice(iterations=iterations, include_background=bg, mask_index=0), cl),
            (ks.DiceClDice(alpha=0.3, iterations=iterations, include_background=bg,
                           mask_index=0), both),
        ):
            got = keras.ops.convert_to_numpy(loss.call(target, p.astype("f4")))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(loss.call(other, p2.astype("f4"))), got,
                rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings(MONAI_SINGLE_CHANNEL)
@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_agrees_with_monai_masked_loss(case, rng):
    """Every term here is a sum, so MONAI's MaskedLoss (input and target
    times the mask) is the same loss."""
    import torch
    from monai.losses import MaskedLoss, SoftclDiceLoss, SoftDiceclDiceLoss

    y, p, m = _masked_tubes(rng, case)
    t = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).astype("f4").copy())  # noqa: E731
    target = ks.pack_targets(y, m).astype("f4")
    for bg in (True, False):
        theirs = MaskedLoss(SoftclDiceLoss, iter_=3, include_background=bg)(
            t(p), t(y), t(m[..., :1]))
        ours = ks.SoftClDice(iterations=3, include_background=bg, mask_index=0)(
            target, p.astype("f4"))
        np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
        theirs = MaskedLoss(SoftDiceclDiceLoss, iter_=3, alpha=0.4, include_background=bg)(
            t(p), t(y), t(m[..., :1]))
        ours = ks.DiceClDice(alpha=0.4, include_background=bg, mask_index=0)(
            target, p.astype("f4"))
        np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


@pytest.mark.backends
@pytest.mark.parametrize("case", ["2d", "3d_classes"])
def test_masked_compiled_value_and_no_gradient_at_ignored_voxels(case, rng, jit, autodiff):
    y, p, m = _masked_tubes(rng, case)
    target = ks.pack_targets(y, np.zeros_like(y), m).astype("f4")  # the mask at slot 1
    p32 = p.astype("f4")
    for loss, ref in ((ks.SoftClDice(mask_index=1), np_cl_dice_masked(y, p, m)),
                      (ks.DiceClDice(mask_index=1),
                       0.5 * np_dice_masked(y, p, m) + 0.5 * np_cl_dice_masked(y, p, m))):
        value = keras.ops.convert_to_numpy(jit(loss.call)(target, p32))
        np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-6)
        grad = autodiff(lambda x: keras.ops.sum(loss.call(target, x)))(p32)
        assert np.all(np.isfinite(grad)) and np.abs(grad[m > 0]).max() > 0
        assert np.all(grad[m == 0] == 0.0)


def test_mask_index_config_and_validation():
    loss = ks.DiceClDice(alpha=0.2, mask_index=3)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert again.mask_index == 3 and again.get_config() == loss.get_config()
    assert [tuple(r) for r in ks.map_reads(again, 2)] == [("mask", 3, 1)]
    for make in (lambda: ks.SoftClDice(mask_index=-2), lambda: ks.DiceClDice(mask_index="0")):
        with pytest.raises(ValueError, match="`mask_index`"):
            make()
