"""Functional metrics: per-sample, per-channel values as tensors.

Every function takes `y_true` (possibly packed, see `pack_targets`) and
`y_pred` of shape `(batch, *spatial, C)`, binarizes the prediction at
`threshold`, and returns a `(batch, C)` tensor. The Keras metric classes in
`keras_seglosses.metrics` average these over channels and samples;
evaluation scripts use them directly.
"""

from keras import ops

from keras_seglosses._core import region_sum, split_targets
from keras_seglosses.targets import require_map

__all__ = ["binarize", "dice", "reward_penalty_dice"]


def binarize(y_true, y_pred, threshold=0.5, name="metric"):
    """Validate shapes; return `(y_true, labels, P')` in float32 with
    `P' = 1[y_pred > threshold]` (the paper's binarization at 0.5)."""
    y_true, labels, y_pred = split_targets(y_true, y_pred, name)
    pred = ops.cast(ops.cast(y_pred, "float32") > threshold, "float32")
    return y_true, labels, pred


def _ratio_or_one(numerator, denominator):
    """`numerator / denominator`, and 1 where the denominator is 0 (both
    masks empty: a perfect score)."""
    safe = ops.where(denominator > 0, denominator, 1.0)
    return ops.where(denominator > 0, numerator / safe, 1.0)


def dice(y_true, y_pred, threshold=0.5):
    """Dice coefficient per sample and channel [000, Eq. 5].

    `Dice = 2 sum y P' / (sum y + sum P')`, 1 when both are empty.

    Returns:
        Tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [1.0], [0.0]]]); p = np.array([[[0.9], [0.2], [0.1]]])
    >>> [round(float(v), 4) for v in np.asarray(dice(y, p))[0]]
    [0.6667]
    """
    _, y, p = binarize(y_true, y_pred, threshold, "dice")
    return _ratio_or_one(2.0 * region_sum(y * p, False), region_sum(y + p, False))


def reward_penalty_dice(y_true, y_pred, threshold=0.5):
    """Reward-penalty Dice coefficient (RPD) per sample and channel
    [000, Eq. 6].

    `RPD = 2 sum y P' M / (sum y |M| + sum P' |M|)`, 1 when the denominator
    is 0 (both masks empty). M is packed in `y_true` after the labels. RPD is
    invariant to scaling M.

    Returns:
        Tensor of shape `(batch, C)`.
    """
    y_true, y, p = binarize(y_true, y_pred, threshold, "rpd")
    m = require_map(y_true, p.shape[-1], 0, "RPD", "reward-penalty map")
    return _ratio_or_one(
        2.0 * region_sum(y * p * m, False), region_sum((y + p) * ops.abs(m), False)
    )


# Surface metrics (HD95, NSD, ASD) live in their own module; imported last
# because that module uses `binarize` from this one.
from keras_seglosses.metrics._surface_functional import asd, hd95, nsd  # noqa: E402

__all__ += ["hd95", "nsd", "asd"]
