"""Leave-one-out splits and their reward-penalty maps."""

import numpy as np
import pytest
from _references import np_rpmap

from cm_dataset import (
    CMData,
    generate,
    get_split,
    leave_one_bone_out,
    leave_one_surgeon_out,
    splits,
)


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


# Folder splits: case names and rater ids as a user's folder has them (a
# case may lack a rater; ids in natural order, "r10" after "r2").
FOLDER = [("c01", ("r1", "r2", "r10")), ("c02", ("r1", "r2")), ("c03", ("r2", "r10")),
          ("c04", ("r1",)), ("c05", ("r1", "r2", "r10"))]


def _all_pairs(subset):
    return {(c, r) for c, raters in subset for r in raters}


@pytest.mark.parametrize("fold", range(1, 6))
def test_leave_one_case_out(fold):
    s = splits.folder_split("case", fold, FOLDER, validation_fraction=0.25)
    held = FOLDER[fold - 1]
    assert (s.experiment, s.fold, s.n_folds, s.held_out) == ("case", fold, 5, (held[0],))
    assert s.test == (held,) and s.baseline == ()
    # 4 training cases, round(0.25 * 4) = 1 validates; nothing lost, nothing shared
    assert len(s.val) == 1 and len(s.train) == 3
    assert set(s.train) | set(s.val) == set(FOLDER) - {held}
    assert not {c for c, _ in s.train} & {c for c, _ in s.val}


def test_case_k_fold_partitions_the_cases():
    folds = [splits.folder_split("case", k, FOLDER, folds=2, validation_fraction=0)
             for k in (1, 2)]
    tests = [{c for c, _ in s.test} for s in folds]
    assert tests[0].isdisjoint(tests[1]) and tests[0] | tests[1] == {c for c, _ in FOLDER}
    assert sorted(len(t) for t in tests) == [2, 3]
    for s, t in zip(folds, tests):
        assert {c for c, _ in s.train} == {c for c, _ in FOLDER} - t
        assert s.val == ()


@pytest.mark.parametrize("fold, held", [(1, "r1"), (2, "r2"), (3, "r10")])
def test_leave_one_rater_out(fold, held):
    s = splits.folder_split("rater", fold, FOLDER, validation_fraction=0)
    assert s.held_out == held and s.n_folds == 3
    seen = _all_pairs(s.train)
    expected = {(c, r) for c, raters in FOLDER for r in raters if r != held}
    assert seen == expected  # every other annotation trains, the held-out rater never
    # tested: the cases the held-out rater annotated that have a training rater
    tested = [c for c, raters in FOLDER if held in raters and len(raters) > 1]
    assert [c for c, _ in s.test] == tested
    assert s.baseline == tuple((c, held) for c in tested)
    assert all(held not in raters for _, raters in s.test)


def test_rater_split_validation_cases_leave_training():
    s = splits.folder_split("rater", 2, FOLDER, validation_fraction=0.5)
    train, val = {c for c, _ in s.train}, {c for c, _ in s.val}
    assert train.isdisjoint(val) and len(val) == 2  # round(0.5 * 5 training cases) -> 2
    assert all("r2" not in raters for _, raters in s.train + s.val)


def test_single_training_case_validates_on_itself():
    s = splits.folder_split("case", 1, FOLDER[:2])
    assert s.train == s.val == (FOLDER[1],)


def test_folder_split_is_fixed():
    a = splits.folder_split("case", 2, FOLDER, folds=2)
    b = splits.folder_split("case", 2, list(FOLDER), folds=2)
    assert a == b


@pytest.mark.parametrize("args, message", [
    (("bone", 1, FOLDER), "experiment"),
    (("case", 6, FOLDER), "fold"),
    (("rater", 0, FOLDER), "fold"),
    (("case", 1, FOLDER[:1]), "at least 2 cases"),
    (("case", 1, []), "at least one case"),
])
def test_folder_split_errors(args, message):
    with pytest.raises(ValueError, match=message):
        splits.folder_split(*args)


def test_folder_split_folds_errors():
    with pytest.raises(ValueError, match="folds"):
        splits.folder_split("case", 1, FOLDER, folds=6)
    with pytest.raises(ValueError, match="folds"):
        splits.folder_split("rater", 1, FOLDER, folds=2)
    with pytest.raises(ValueError, match="no case with a training rater"):
        splits.folder_split("rater", 1, [("a", ("r1",)), ("b", ("r1",))])
