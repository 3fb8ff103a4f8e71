"""Synthetic CM generator: determinism, anatomy, surgeries, calibration."""

import numpy as np
import pytest
from _references import np_dice, on_volume
from scipy import ndimage, stats

from cm_dataset import generate
from cm_dataset.synthetic import CALIBRATION_TARGETS, calibration

DRILLABLE = (1, 2, 3)  # bone, air cells, antrum
PROTECTED = (6, 7, 8)  # facial nerve, sigmoid sinus, dura


@pytest.fixture(scope="module")
def full():
    return generate()  # the paper's 9 x 7 at 64^3, about 2-3 s


@pytest.fixture(scope="module")
def figures(full):
    return calibration(full)


# Dice [000, Eq. 5] of two binary volumes.
_dice = on_volume(np_dice)


def test_shapes_and_dtypes(full):
    assert full.x.shape == full.y.shape == (63, 64, 64, 64)
    assert full.x.dtype == full.y.dtype == np.int8
    assert (full.n_bones, full.n_surgeons) == (9, 7)


def test_deterministic_and_seeded():
    a = generate(n_bones=2, n_surgeons=2, size=16, seed=3)
    b = generate(n_bones=2, n_surgeons=2, size=16, seed=3)
    c = generate(n_bones=2, n_surgeons=2, size=16, seed=4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    # Bones draw from their own streams: bone 0 does not depend on n_bones.
    one = generate(n_bones=1, n_surgeons=2, size=16, seed=3)
    np.testing.assert_array_equal(one.x, a.x[:2])
    np.testing.assert_array_equal(one.y, a.y[:2])


def test_every_bone_has_all_labels_and_one_input(full):
    for bone in range(9):
        xb = full.x[bone * 7 : bone * 7 + 7]
        assert set(np.unique(xb[0]).tolist()) == set(range(14)), bone
        assert (xb == xb[0]).all()  # all surgeons operate on the same input


def test_bones_differ(full):
    inputs = full.x[::7]
    for i in range(9):
        for j in range(i + 1, 9):
            assert np.mean(inputs[i] != inputs[j]) > 0.05


def test_surgeries_are_cortical_mastoidectomies(full):
    x, y = full.x, full.y.astype(bool)
    drilled = x[y]
    assert np.isin(drilled, DRILLABLE).all()
    assert not np.isin(drilled, PROTECTED).any()
    for i in range(63):
        yi = y[i]
        # Enters from the lateral surface (low axis-0 index): the drilled
        # region touches the outside air, in the lateral half.
        lateral_of_drilled = np.zeros_like(yi)
        lateral_of_drilled[:-1] = yi[1:]
        assert (lateral_of_drilled & (x[i] == 0))[:32].any(), i
        assert yi[:32].sum() > yi[32:].sum(), i


def test_drilling_stays_clear_of_nerve_sinus_and_dura(full):
    """At least one voxel of bone is left over the facial nerve, the sigmoid
    sinus and the dura: no drilled voxel touches them, even diagonally
    (scipy's 3x3x3 dilation as the independent reference)."""
    cube = np.ones((3, 3, 3), bool)
    for i in range(0, 63, 4):
        for label in PROTECTED:
            near = ndimage.binary_dilation(full.x[i] == label, cube)
            assert not (near & full.y[i].astype(bool)).any(), (i, label)


def test_shared_core_and_consistent_personal_style(full):
    y = full.y.reshape(9, 7, -1).astype(bool)
    volume = y.sum(axis=2)
    # A core that every surgeon drills on every bone: a third of a surgery.
    core = y.all(axis=1).sum(axis=1)
    assert (core > 0.25 * volume.mean(axis=1)).all(), core / volume.mean(axis=1)
    # Personal style kept across bones: surgeons rank alike by how much they
    # remove on every pair of bones (Spearman), and differ from each other
    # far more than one surgeon varies between bones.
    rho = [stats.spearmanr(volume[i], volume[j])[0] for i in range(9) for j in range(i + 1, 9)]
    assert np.mean(rho) > 0.6, rho
    relative = volume / volume.mean(axis=1, keepdims=True)
    assert relative.mean(axis=0).std() > 2 * relative.std(axis=0).mean()


def test_foreground_fraction(full):
    per = full.y.reshape(63, -1).mean(axis=1)
    assert 0.01 < per.min() and per.max() < 0.12
    assert abs(per.mean() - CALIBRATION_TARGETS["foreground_fraction"]) < 0.005


def test_calibration_matches_reference_and_targets(full, figures):
    c = figures
    # Independent transcription of the Exp. 2 surgeon baseline (SPEC.md
    # Sec. 8): the held-out surgeon against each of the other 6 per bone.
    ref = [
        _dice(full.y[b * 7 + s], full.y[b * 7 + t])
        for s in range(7)
        for b in range(9)
        for t in range(7)
        if t != s
    ]
    assert len(ref) == 7 * 9 * 6
    np.testing.assert_allclose(c["surgeon_dice_mean"], np.mean(ref), rtol=1e-5)
    np.testing.assert_allclose(c["surgeon_dice_std"], np.std(ref), rtol=1e-4)
    np.testing.assert_allclose(c["foreground_fraction"], full.y.mean(), rtol=1e-6)
    assert abs(c["surgeon_dice_mean"] - CALIBRATION_TARGETS["surgeon_dice_mean"]) < 0.015
    assert abs(c["surgeon_dice_std"] - CALIBRATION_TARGETS["surgeon_dice_std"]) < 0.01
    # Leave-one-bone-out clearly harder than leave-one-surgeon-out.
    assert c["within_bone_consensus_dice"] > c["surgeon_dice_mean"]
    assert c["cross_bone_consensus_dice"] < c["within_bone_consensus_dice"] - 0.15


def test_cross_bone_reference(full, figures):
    c = figures
    y = full.y.reshape(9, 7, -1).astype(np.int32)
    scores = []
    for bone in range(9):
        others = np.delete(y, bone, axis=0).reshape(-1, y.shape[-1])
        vote = others.sum(axis=0) > others.shape[0] / 2
        scores += [_dice(vote, y[bone, s]) for s in range(7)]
    np.testing.assert_allclose(c["cross_bone_consensus_dice"], np.mean(scores), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_bones": 0}, "n_bones"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"n_surgeons": 1.5}, "n_surgeons"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        generate(**kwargs)
