"""Reward-penalty maps (RPMap) of the RPDL paper and the original code's
single-target encoding.

The RPMap of one input is built from its K annotations [000, Fig. 2]:

1. count, for every voxel, how many annotations mark it;
2. voxels that no annotation marks get the penalty, "the negative of the
   maximum" count;
3. normalize by the maximum, so rewards lie in (0, 1] and the penalty is
   `penalty` (the paper uses -1 after normalization).

Edge cases, defined here once:

* No annotation marks anything (maximum count 0): the maximum is taken as 1,
  so every voxel gets `penalty` (normalized or not). RPDL then rewards
  nothing and penalizes every predicted voxel.
* K = 1: the map is 1 inside the single annotation and `penalty` (times 1
  without normalization) elsewhere; RPDL with `penalty=-1` then differs from
  the Dice loss only by the penalty on false positives in its numerator.
"""

import numpy as np
from keras import ops

__all__ = [
    "reward_penalty_map",
    "reward_penalty_map_tensor",
    "legacy_reward_penalty_targets",
    "pos_weight_from_labels",
    "ORIGINAL_POS_WEIGHT",
]

#: Positive-class weight of the released WCEL experiments (their data's
#: background to foreground voxel ratio).
ORIGINAL_POS_WEIGHT = 23.485


def _binary_stack(annotations, name="annotations", min_ndim=2):
    a = np.asarray(annotations)
    if a.ndim < min_ndim:
        raise ValueError(
            f"Invalid shape for argument `{name}`. Expected a stack of K binary "
            f"annotations of shape (K, *spatial). Received: shape {a.shape}."
        )
    if a.dtype != bool:
        bad = (a != 0) & (a != 1)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected binary values "
                f"(0 or 1). Received {a[first]!r} at index {first} "
                f"({int(bad.sum())} non-binary voxel(s) in all)."
            )
    return a


def _check_penalty(penalty):
    if not isinstance(penalty, (int, float)) or isinstance(penalty, bool) or penalty > 0:
        raise ValueError(
            "Invalid value for argument `penalty`. Expected a number <= 0 "
            f"(the reward of voxels no annotation marks). Received: penalty={penalty!r}"
        )


def reward_penalty_map(annotations, penalty=-1.0, normalize=True, *, rewards="count"):
    """Reward-penalty map of one input from its K binary annotations.

    `M = count / max(count)` where at least one annotation marks the voxel,
    `M = penalty` elsewhere (`normalize=True`); without normalization
    `M = count` and `penalty * max(count)` [000, Sec. III-B, Fig. 2].
    Counting is one vectorized sum over the annotation axis.

    Edge cases: when no annotation marks anything, `max(count)` is taken as
    1, so every voxel is `penalty` (with or without `normalize`); with K = 1
    the map is 1 inside the annotation and `penalty` outside.

    `rewards="staple"` (our extension of the paper's "learning the RPMap",
    not in the paper) replaces the raw count by `K W`, W the STAPLE
    posterior foreground probability (`keras_seglosses.multirater.staple`
    with its defaults): where the count treats every annotation alike, W
    weighs each by its estimated sensitivity and specificity, so a voxel
    marked only by a reliable rater earns more than one marked only by an
    unreliable one. `K W` is the count a panel of K raters agreeing with
    the consensus would give, so identical annotations give the same map
    as `"count"`. Voxels no annotation marks still get the penalty; a
    marked voxel whose posterior is 0 gets reward 0. Normalization divides
    by `max(K W)` (1 when it is 0), as for counts.

    Args:
        annotations: array of shape `(K, *spatial)` with values 0/1 (or bool):
            the K experts' segmentations of the same input.
        penalty: float <= 0, the value of voxels no annotation marks, after
            normalization. Defaults to `-1.0` (the paper's choice).
        normalize: bool, divide the counts by their maximum. Defaults to
            `True`.
        rewards: `"count"` (the paper: how many annotations mark the voxel)
            or `"staple"` (K times the STAPLE posterior, see above).
            Defaults to `"count"`.

    Returns:
        float32 numpy array of shape `spatial`.

    Example:

    >>> import numpy as np
    >>> a = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    >>> reward_penalty_map(a).tolist()
    [1.0, 0.5, -1.0, -1.0]
    >>> reward_penalty_map(a, normalize=False).tolist()
    [2.0, 1.0, -2.0, -2.0]
    >>> b = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    >>> reward_penalty_map(b, rewards="staple").round(3).tolist()
    [1.0, 1.0, 1.0, 0.0, -1.0, -1.0]

    Reference:
        He et al., IJCNN 2020 [000, Eq. 3 and Fig. 2].
    """
    _check_penalty(penalty)
    if rewards not in ("count", "staple"):
        raise ValueError(
            "Invalid value for argument `rewards`. Expected one of ['count', "
            f"'staple']. Received: rewards={rewards!r}"
        )
    a = _binary_stack(annotations)
    count = a.sum(axis=0, dtype=np.float32)
    if rewards == "staple":
        return _staple_map(a, count, penalty, normalize)
    top = max(float(count.max()), 1.0)
    if normalize:
        rewards, pen = count / top, penalty
    else:
        rewards, pen = count, penalty * top
    return np.where(count > 0, rewards, np.float32(pen)).astype(np.float32)


def _staple_map(a, count, penalty, normalize):
    # imported here: multirater imports this module's input checks
    from keras_seglosses.multirater import staple

    rewards = a.shape[0] * staple(a).probability
    top = max(float(rewards[count > 0].max(initial=0.0)), 0.0)
    top = top if top > 0 else 1.0
    if normalize:
        rewards, pen = rewards / top, penalty
    else:
        pen = penalty * top
    return np.where(count > 0, rewards, pen).astype(np.float32)


def reward_penalty_map_tensor(annotations, penalty=-1.0, normalize=True, axis=0):
    """`keras.ops` twin of `reward_penalty_map`, for use inside models.

    Works on any backend and under jit, with the same rules and edge cases.
    A numpy input is checked to be binary; a tensor is not (that would need a
    Python branch on tensor values): pass 0/1 annotations.

    Args:
        annotations: tensor whose axis `axis` enumerates the K annotations.
            Axes before `axis` are batch axes: the maximum count is taken
            separately for each of their entries.
        penalty: float <= 0. Defaults to `-1.0`.
        normalize: bool. Defaults to `True`.
        axis: int, the annotation axis. Defaults to `0`.

    Returns:
        float32 tensor, the input shape without `axis`.

    Example:

    >>> import numpy as np
    >>> a = np.array([[[1, 1, 0, 0], [1, 0, 0, 0]]])   # (batch=1, K=2, 4)
    >>> np.asarray(reward_penalty_map_tensor(a, axis=1)).tolist()
    [[1.0, 0.5, -1.0, -1.0]]
    """
    _check_penalty(penalty)
    if isinstance(annotations, (np.ndarray, list, tuple)):
        annotations = _binary_stack(annotations, min_ndim=1)
    a = ops.cast(ops.convert_to_tensor(annotations), "float32")
    ndim = len(a.shape)
    axis = axis % ndim
    count = ops.sum(a, axis=axis)
    per_item = tuple(range(axis, ndim - 1))
    top = ops.maximum(ops.max(count, axis=per_item, keepdims=True), 1.0)
    if normalize:
        rewards, pen = count / top, penalty
    else:
        rewards, pen = count, penalty * top
    return ops.where(count > 0, rewards, pen)


def legacy_reward_penalty_targets(y, annotations, penalty=-7.0, scale=6.0):
    """The released RPDL code's single encoded target `h` for one annotation.

    The original training code did not feed the map separately. For an
    annotation `y` of an input with annotations `A` (K of them, `y` among
    them) it built, in this order,

        h = y * count(A)          (the count includes y itself)
        h = penalty  where count(A) == 0 (no annotation marks the voxel)
        h = 0        where h == 1, i.e. y marks the voxel and count(A) == 1:
                     the voxels only this annotation marks
        h = h / scale

    so `h` is `count / scale` on the voxels y shares with at least one other
    annotation, `penalty / scale` on the voxels nobody marks, and 0 elsewhere
    (the voxels only y marks lose their reward; voxels others mark but y does
    not are 0 too). The rules are applied literally, so a `y` that is not in
    `A` gets what the original code would give it. The released bone
    experiment used 7 annotations, `penalty=-7` and `scale=6` (its surgeon
    experiment: 6 annotations, `penalty=-6`, `scale=6`).
    `LegacyRewardPenaltyDice` trains on `h`.

    Args:
        y: binary array `(*spatial)` or `(*spatial, 1)`.
        annotations: binary array `(K, *spatial)` (same trailing shape as `y`).
        penalty: float <= 0, before division by `scale`. Defaults to `-7.0`.
        scale: float > 0. Defaults to `6.0`.

    Returns:
        float32 array with the shape of `y`.

    Example:

    >>> import numpy as np
    >>> a = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    >>> legacy_reward_penalty_targets(a[0], a, penalty=-3, scale=2).tolist()
    [1.5, 1.0, 0.0, -1.5]
    """
    _check_penalty(penalty)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
        raise ValueError(
            f"Invalid value for argument `scale`. Expected a number > 0. Received: scale={scale!r}"
        )
    y = _binary_stack(y, name="y", min_ndim=1)
    a = _binary_stack(annotations)
    squeeze = y.shape == a.shape[1:] + (1,)
    if squeeze:
        y = y[..., 0]
    if y.shape != a.shape[1:]:
        raise ValueError(
            "Invalid shapes: `y` must have the spatial shape of the annotation "
            f"stack. Received: y.shape={y.shape}, annotations.shape={a.shape}."
        )
    count = a.sum(axis=0, dtype=np.float32)
    h = y.astype(np.float32) * count
    h = np.where(count == 0, np.float32(penalty), h)
    h = np.where((count == 1) & (y == 1), np.float32(0.0), h)
    h = (h / np.float32(scale)).astype(np.float32)
    return h[..., None] if squeeze else h


def pos_weight_from_labels(y):
    """Background to foreground voxel ratio, the WCEL weight the paper
    recommends ("if the ratio ... is 49 : 1 ... w = 49") [000, Eq. 1].

    Args:
        y: binary array of any shape (all training labels).

    Returns:
        float.

    Example:

    >>> import numpy as np
    >>> pos_weight_from_labels(np.array([1, 0, 0, 0]))
    3.0
    """
    y = _binary_stack(y, name="y", min_ndim=1)
    fg = float(np.count_nonzero(y))
    if fg == 0:
        raise ValueError(
            "Invalid value for argument `y`: it has no foreground voxel, so the "
            "background to foreground ratio is undefined."
        )
    return (y.size - fg) / fg
