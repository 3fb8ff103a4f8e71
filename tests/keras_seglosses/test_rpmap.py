import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from keras_seglosses import (
    legacy_reward_penalty_targets,
    pos_weight_from_labels,
    reward_penalty_map,
    reward_penalty_map_tensor,
)


def loop_map(annotations, penalty, normalize):
    """The original's counting, voxel by voxel (independent reference)."""
    k = annotations.shape[0]
    flat = annotations.reshape(k, -1)
    count = np.zeros(flat.shape[1])
    for i in range(flat.shape[1]):
        for j in range(k):
            count[i] += flat[j, i]
    top = max(count.max(), 1)
    out = np.empty_like(count)
    for i in range(count.size):
        if count[i] == 0:
            out[i] = penalty if normalize else penalty * top
        else:
            out[i] = count[i] / top if normalize else count[i]
    return out.reshape(annotations.shape[1:])


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.int8, st.tuples(st.integers(1, 7), st.integers(1, 5), st.integers(1, 5)),
           elements=st.integers(0, 1)),
    st.sampled_from([-1.0, -0.5, 0.0, -3.0]),
    st.booleans(),
)
def test_map_matches_voxel_loop(annotations, penalty, normalize):
    got = reward_penalty_map(annotations, penalty=penalty, normalize=normalize)
    np.testing.assert_allclose(got, loop_map(annotations, penalty, normalize), rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == annotations.shape[1:]


def test_normalized_rewards_in_unit_interval_and_penalty(rng):
    a = rng.random((7, 6, 6, 6)) > 0.6
    m = reward_penalty_map(a)
    marked = a.any(0)
    assert np.all(m[marked] > 0) and np.all(m[marked] <= 1) and m[marked].max() == 1
    assert np.all(m[~marked] == -1)


def test_paper_unnormalized_penalty_is_negative_max():
    a = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(reward_penalty_map(a, normalize=False), [3, 1, -3])


def test_edge_cases_documented():
    empty = np.zeros((4, 3, 3))
    np.testing.assert_array_equal(reward_penalty_map(empty), -1)
    np.testing.assert_array_equal(reward_penalty_map(empty, normalize=False), -1)
    single = np.array([[1, 0, 1]])
    np.testing.assert_array_equal(reward_penalty_map(single), [1, -1, 1])


def test_bad_annotations_raise():
    with pytest.raises(ValueError, match=r"binary values.*index \(1, 0\)"):
        reward_penalty_map(np.array([[0, 1], [2, 0]]))
    with pytest.raises(ValueError, match=r"\(K, \*spatial\)"):
        reward_penalty_map(np.array([0, 1]))
    with pytest.raises(ValueError, match="penalty"):
        reward_penalty_map(np.zeros((2, 2)), penalty=1.0)


@pytest.mark.backends
@pytest.mark.parametrize("normalize", [True, False])
def test_tensor_twin_matches_numpy_per_batch_item(rng, jit, normalize):
    a = (rng.random((3, 5, 4, 4, 4)) > 0.7).astype("float32")  # (batch, K, ...)
    a[1] = 0  # an input no annotation marks
    fn = jit(lambda t: reward_penalty_map_tensor(t, penalty=-0.5, normalize=normalize, axis=1))
    got = np.asarray(fn(a))
    want = np.stack([loop_map(a[b], -0.5, normalize) for b in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.backends
def test_tensor_twin_edge_cases_and_validation(jit):
    single = np.array([[[1, 0, 1, 0]]], "float32")  # (batch=1, K=1, 4)
    got = np.asarray(jit(lambda t: reward_penalty_map_tensor(t, axis=1))(single))
    np.testing.assert_array_equal(got, [[1, -1, 1, -1]])
    got = np.asarray(reward_penalty_map_tensor(np.zeros((3, 2, 2)), penalty=-2.0, normalize=False))
    np.testing.assert_array_equal(got, -2.0)
    with pytest.raises(ValueError, match="binary values"):
        reward_penalty_map_tensor(np.array([[0.0, 0.5]]))


def original_encoding(y, annotations, penalty, scale):
    """The released training code's steps as SPEC section 4 lists them, with
    its int8 arrays and in-place masked assignments."""
    count = annotations.astype(np.int8).sum(axis=0, dtype=np.int8)
    count[count == 0] = penalty  # the per-input map, penalty where nobody drilled
    h = y.astype(np.int8) * count
    h[count == penalty] = penalty
    h[h == 1] = 0  # only this surgeon drilled the voxel
    return np.array(h / scale, "float32")


@pytest.mark.parametrize("k, penalty, scale", [(7, -7, 6), (6, -6, 6), (3, -2, 2)])
def test_legacy_targets_reproduce_the_original_encoding(rng, k, penalty, scale):
    a = (rng.random((k, 6, 7, 5)) > rng.random((k, 1, 1, 1))).astype(np.int8)
    a[:, 0, 0, :] = 0  # voxels nobody marks
    for i in range(k):
        got = legacy_reward_penalty_targets(a[i], a, penalty=penalty, scale=scale)
        want = original_encoding(a[i], a, penalty, scale)
        np.testing.assert_array_equal(got, want)  # bit-exact
        only_i = (a[i] == 1) & (a.sum(0) == 1)
        assert np.all(got[only_i] == 0) and np.all(got[a.sum(0) == 0] == np.float32(penalty / scale))


def test_legacy_targets_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"`annotations`.*binary"):
        legacy_reward_penalty_targets(np.zeros(3), np.array([[0, 2, 0]]))
    with pytest.raises(ValueError, match=r"`y`.*binary"):
        legacy_reward_penalty_targets(np.array([0, 0.5, 0]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="spatial shape"):
        legacy_reward_penalty_targets(np.zeros(4), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="scale"):
        legacy_reward_penalty_targets(np.zeros(3), np.zeros((2, 3)), scale=0)


def test_legacy_target_rules():
    # 4 annotations of 6 voxels; y is annotation 0.
    a = np.array(
        [[1, 1, 1, 0, 0, 1],
         [1, 1, 0, 0, 1, 0],
         [1, 0, 0, 0, 1, 0],
         [1, 0, 0, 0, 0, 0]]
    )
    h = legacy_reward_penalty_targets(a[0], a, penalty=-4, scale=3)
    # count = [4, 2, 1, 0, 2, 1]; h = y*count, -4 where count 0, 0 where only y marks it.
    np.testing.assert_allclose(h, np.array([4, 2, 0, -4, 0, 0]) / 3, rtol=1e-6)
    h5 = legacy_reward_penalty_targets(a[0][:, None], a)
    assert h5.shape == (6, 1)


def test_pos_weight_from_labels():
    y = np.zeros((10, 10)); y[:2, :5] = 1
    assert pos_weight_from_labels(y) == 90 / 10
    with pytest.raises(ValueError, match="no foreground"):
        pos_weight_from_labels(np.zeros(3))


# ------------------------------------------------- rewards from STAPLE (ours)
def test_staple_rewards_weigh_reliable_raters_more(rng):
    from scipy import ndimage

    from keras_seglosses.multirater import staple

    truth = ndimage.gaussian_filter(rng.standard_normal((30, 30)), 2) > 0.0
    good = truth ^ (rng.random(truth.shape) < 0.01)
    bad = [truth ^ (rng.random(truth.shape) < 0.25) for _ in range(3)]
    a = np.stack([good, *bad]).astype(np.int8)
    count = a.sum(0)
    m = reward_penalty_map(a, rewards="staple")
    raw = reward_penalty_map(a, rewards="staple", normalize=False, penalty=-0.5)
    w = staple(a).probability
    top = (4 * w)[count > 0].max()
    np.testing.assert_allclose(raw[count > 0], (4 * w)[count > 0], rtol=1e-6)
    np.testing.assert_allclose(raw[count == 0], -0.5 * top, rtol=1e-6)
    np.testing.assert_allclose(m[count > 0], (4 * w / top)[count > 0], rtol=1e-6)
    assert np.all(m[count == 0] == -1.0) and m.max() == pytest.approx(1.0)
    # a voxel only the reliable rater marks earns more than one only a
    # single unreliable rater marks, though both have count 1
    only_good = (count == 1) & (a[0] == 1)
    only_bad = (count == 1) & (a[0] == 0)
    assert only_good.any() and only_bad.any()
    assert m[only_good].min() > m[only_bad].max()
    assert m.dtype == np.float32


def test_staple_rewards_reduce_to_counts_for_identical_raters(rng):
    base = (rng.random((3, 6, 7)) > 0.5).astype(np.int8)
    for a in (np.stack([base] * 4), base[:1], np.zeros((3, 4, 4), np.int8)):
        for normalize in (True, False):
            np.testing.assert_array_equal(
                reward_penalty_map(a, normalize=normalize, rewards="staple"),
                reward_penalty_map(a, normalize=normalize),
            )


def test_count_rewards_stay_bit_identical(rng):
    a = (rng.random((5, 7, 8)) > 0.6).astype(np.int8)
    count = a.sum(axis=0, dtype=np.float32)
    top = np.float32(count.max())
    # the formula of the release before `rewards=` existed
    before = np.where(count > 0, count / top, np.float32(-1.0)).astype(np.float32)
    got = reward_penalty_map(a, rewards="count")
    assert got.dtype == np.float32 and got.tobytes() == before.tobytes()
    assert reward_penalty_map(a).tobytes() == before.tobytes()


def test_unknown_rewards_raise():
    with pytest.raises(ValueError, match=r"argument `rewards`.*Received: rewards='mean'"):
        reward_penalty_map(np.ones((2, 3)), rewards="mean")
