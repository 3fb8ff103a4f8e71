"""Leave-one-out splits and their reward-penalty maps."""

import numpy as np
import pytest
from _references import np_rpmap

from cm_dataset import CMData, generate, get_split, leave_one_bone_out, leave_one_surgeon_out


@pytest.fixture(scope="module")
def data():
    return generate(n_bones=9, n_surgeons=7, size=16, seed=1)


@pytest.mark.parametrize("fold", range(1, 10))
def test_leave_one_bone_out(fold):
    s = leave_one_bone_out(fold)
    bone = fold - 1
    assert (s.experiment, s.fold, s.held_out) == (1, fold, bone)
    assert len(s.train) == 56 and len(s.test) == 7
    assert set(s.test) == {(bone, k) for k in range(7)}
    assert all(b != bone for b, _ in s.train)
    assert set(s.train) | set(s.test) == {(b, k) for b in range(9) for k in range(7)}
    assert s.test_bones == (bone,)
    assert s.reference_surgeons[bone] == tuple(range(7))
    assert s.map_surgeons[bone] == ()
    np.testing.assert_array_equal(s.test_indices, [bone * 7 + k for k in range(7)])


@pytest.mark.parametrize("fold", range(1, 8))
def test_leave_one_surgeon_out(fold):
    s = leave_one_surgeon_out(fold)
    held = fold - 1
    assert len(s.train) == 54 and len(s.test) == 9
    assert set(s.test) == {(b, held) for b in range(9)}
    assert all(k != held for _, k in s.train)
    for b in range(9):
        assert sorted(k for bb, k in s.train if bb == b) == [k for k in range(7) if k != held]
        assert held not in s.map_surgeons[b] and held not in s.reference_surgeons[b]
        assert len(s.map_surgeons[b]) == 6
    assert s.test_bones == tuple(range(9))


@pytest.mark.parametrize(
    "make, fold",
    [(leave_one_bone_out, 0), (leave_one_bone_out, 10), (leave_one_surgeon_out, 8),
     (leave_one_surgeon_out, 2.0), (leave_one_bone_out, True), (leave_one_surgeon_out, "1")],
)
def test_invalid_folds(make, fold):
    with pytest.raises(ValueError, match="argument `fold`"):
        make(fold)


def test_get_split():
    assert get_split(1, 4) == leave_one_bone_out(4)
    assert get_split(2, 3, n_bones=4, n_surgeons=3) == leave_one_surgeon_out(3, 4, 3)
    with pytest.raises(ValueError, match="argument `experiment`"):
        get_split(3, 1)


@pytest.mark.parametrize("experiment, fold, n_val", [(1, 5, 6), (2, 2, 5)])
def test_train_val(experiment, fold, n_val):
    s = get_split(experiment, fold)
    train, val = s.train_val()
    assert len(val) == n_val and len(train) + n_val == len(s.train)
    assert not set(train) & set(val) and set(train) | set(val) == set(s.train)
    assert s.train_val() == (train, val)  # fixed per fold
    assert s.train_val(0.0) == (s.train, ())
    with pytest.raises(ValueError, match="`validation_fraction`"):
        s.train_val(1.0)


def test_training_maps_exp1(data):
    s = leave_one_bone_out(4)
    maps = s.train_maps(data)
    assert sorted(maps) == [b for b in range(9) if b != 3]
    for b, m in maps.items():
        np.testing.assert_allclose(m, np_rpmap(data.y[b * 7 : b * 7 + 7]), rtol=1e-6)
    test = s.test_maps(data)
    assert list(test) == [3]
    np.testing.assert_allclose(test[3], np_rpmap(data.y[21:28]), rtol=1e-6)


def test_exp2_maps_never_see_the_held_out_surgeon(data):
    s = leave_one_surgeon_out(5)
    train_maps, test_maps = s.train_maps(data), s.test_maps(data)
    for b in range(9):
        ref = np_rpmap(np.delete(data.y[b * 7 : b * 7 + 7], 4, axis=0))
        np.testing.assert_allclose(train_maps[b], ref, rtol=1e-6)
        np.testing.assert_allclose(test_maps[b], ref, rtol=1e-6)
    # Altering the held-out surgeon's surgeries changes no map ...
    y = data.y.copy()
    y[4::7] = 1 - y[4::7]
    altered = CMData(data.x, y, 9, 7)
    for b in range(9):
        np.testing.assert_array_equal(s.train_maps(altered)[b], train_maps[b])
        np.testing.assert_array_equal(s.test_maps(altered)[b], test_maps[b])
    # ... while altering a training surgeon's does (the check can fail).
    y = data.y.copy()
    y[0::7] = 1 - y[0::7]
    assert not np.array_equal(s.train_maps(CMData(data.x, y, 9, 7))[0], train_maps[0])


def test_maps_check_data_size(data):
    with pytest.raises(ValueError, match="argument `data`"):
        leave_one_bone_out(1, n_bones=3).train_maps(data)


def test_evaluation_pairs_follow_spec_section_8():
    for fold in (1, 9):
        s = leave_one_bone_out(fold)
        assert s.evaluation_pairs == tuple((fold - 1, k) for k in range(7)) == s.test
    for fold in (1, 7):
        s = leave_one_surgeon_out(fold)
        want = tuple((b, k) for b in range(9) for k in range(7) if k != fold - 1)
        assert s.evaluation_pairs == want and len(want) == 54


@pytest.mark.parametrize(
    "make, kwargs, name",
    [
        (leave_one_bone_out, {"n_bones": 1}, "n_bones"),
        (leave_one_surgeon_out, {"n_surgeons": 1}, "n_surgeons"),
        (leave_one_bone_out, {"n_surgeons": 0}, "n_surgeons"),
        (leave_one_surgeon_out, {"n_bones": 2.0}, "n_bones"),
    ],
)
def test_invalid_sizes(make, kwargs, name):
    with pytest.raises(ValueError, match=f"argument `{name}`"):
        make(1, **kwargs)
    # One surgeon (Exp. 1) or one bone (Exp. 2) is a valid, if small, data set.
    assert len(leave_one_bone_out(1, n_bones=2, n_surgeons=1).test) == 1
    assert len(leave_one_surgeon_out(1, n_bones=1, n_surgeons=2).test) == 1
