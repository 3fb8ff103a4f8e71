"""Functional metrics: per-sample, per-channel values as tensors.

Every function takes `y_true` (possibly packed, see `pack_targets`) and
`y_pred` of shape `(batch, *spatial, C)`, binarizes the prediction at
`threshold`, and returns a `(batch, C)` tensor. The Keras metric classes in
`keras_seglosses.metrics` average these over channels and samples;
evaluation scripts use them directly.

Every function takes `mask_index`, the packed slot of an ignore mask (1
counts, 0 is ignored, binarized at 0.5; see `_common.counted`), or `None`
(the default, every voxel counts), so that the ignored voxels' labels, maps
and predictions do not reach the value. The overlap metrics sum over the
counted voxels only; the surface metrics restrict both masks to them before
taking surfaces (see `_surface_functional`). The empty-mask rules apply to
the counted voxels (a sample with none counted has two empty masks).
"""

from keras import ops

from keras_seglosses._core import check_map_index, check_mask_slot, region_sum
from keras_seglosses.metrics._common import (
    EMPTY_MODES,
    binarize,
    check_empty,
    masked_binarize,
    ratio_or_one,
    undefined,
)
from keras_seglosses.metrics._surface_functional import asd, hd95, nsd
from keras_seglosses.targets import require_map

__all__ = ["binarize", "dice", "reward_penalty_dice", "hd95", "nsd", "asd", "sensitivity",
           "specificity", "precision", "EMPTY_MODES"]


def dice(y_true, y_pred, threshold=0.5, empty="score", mask_index=None):
    """Dice coefficient per sample and channel [000, Eq. 5].

    `Dice = 2 sum y P' / (sum y + sum P')` with `P' = 1[P > threshold]`, 1
    when both masks are empty; with `empty="nan"`, NaN wherever the ground
    truth is empty (MONAI's `DiceMetric(ignore_empty=True)`). With
    `mask_index`, the sums run over the counted voxels only (MONAI's
    `DiceMetric` of both masks multiplied by the mask).

    Args:
        y_true: labels `(batch, *spatial, C)`, possibly packed with maps.
        y_pred: predictions of the same shape, binarized at `threshold`.
        threshold: float in [0, 1]. Defaults to `0.5`.
        empty: `"score"` or `"nan"`. Defaults to `"score"`.
        mask_index: int >= 0, the packed slot of an ignore mask, or `None`.
            Defaults to `None`.

    Returns:
        float32 tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [1.0], [0.0]]]); p = np.array([[[0.9], [0.2], [0.1]]])
    >>> [round(float(v), 4) for v in np.asarray(dice(y, p))[0]]
    [0.6667]

    Reference:
        He et al., IJCNN 2020 [000, Eq. 5].
    """
    check_empty(empty)
    mask_index = check_mask_slot(mask_index)
    _, y, p = binarize(y_true, y_pred, threshold, "dice", mask_index)
    value = ratio_or_one(2.0 * region_sum(y * p, False), region_sum(y + p, False))
    return undefined(value, region_sum(y, False) <= 0, empty)


def reward_penalty_dice(y_true, y_pred, threshold=0.5, map_index=0, empty="score",
                        mask_index=None):
    """Reward-penalty Dice coefficient (RPD) per sample and channel
    [000, Eq. 6].

    `RPD = 2 sum y P' M / (sum y |M| + sum P' |M|)` with `P' = 1[P >
    threshold]` and M the reward-penalty map packed in `y_true` at slot
    `map_index`; 1 when the denominator is 0 (both masks empty). RPD is
    invariant to scaling M. With `mask_index`, the sums run over the
    counted voxels only.

    Args:
        y_true: packed target `(batch, *spatial, (2 + map_index) C)` at
            least: the labels, then the maps (`pack_targets(labels, M)` puts
            M at slot 0).
        y_pred: predictions `(batch, *spatial, C)`, binarized at `threshold`.
        threshold: float in [0, 1]. Defaults to `0.5`.
        map_index: int >= 0, the packed slot of M. Defaults to `0`.
        empty: `"score"` or `"nan"` (NaN wherever the ground truth is
            empty, as `dice`). Defaults to `"score"`.
        mask_index: int >= 0, the packed slot of an ignore mask (another
            slot than `map_index`), or `None`. Defaults to `None`.

    Returns:
        float32 tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import pack_targets
    >>> y = np.array([[[1.0], [1.0], [0.0]]]); m = np.array([[[1.0], [0.5], [-1.0]]])
    >>> other = np.zeros_like(y)
    >>> p = np.array([[[0.9], [0.2], [0.7]]])
    >>> round(float(reward_penalty_dice(pack_targets(y, other, m), p, map_index=1)[0, 0]), 4)
    0.5714

    Reference:
        He et al., IJCNN 2020 [000, Eq. 6].
    """
    map_index = check_map_index(map_index, allow_none=False)
    mask_index = check_mask_slot(mask_index, map_index)
    check_empty(empty)
    # the masked target: M is 0 at the ignored voxels, out of both sums
    y_true, y, p = binarize(y_true, y_pred, threshold, "rpd", mask_index)
    m = require_map(y_true, p.shape[-1], map_index, "RPD", "reward-penalty map")
    value = ratio_or_one(
        2.0 * region_sum(y * p * m, False), region_sum((y + p) * ops.abs(m), False)
    )
    return undefined(value, region_sum(y, False) <= 0, empty)


# Multi-annotator metrics (numpy in, numpy out; one input at a time).
from keras_seglosses.metrics._multirater_functional import (  # noqa: E402
    consensus_dice,
    generalized_energy_distance,
    hungarian_iou,
    qubiq_score,
)

__all__ += ["generalized_energy_distance", "hungarian_iou", "qubiq_score", "consensus_dice"]


def _confusion_ratio(y_true, y_pred, threshold, empty, name, numerator, denominator,
                     mask_index):
    check_empty(empty)
    mask_index = check_mask_slot(mask_index)
    _, y, p, mask = masked_binarize(y_true, y_pred, threshold, name, mask_index)
    counts = {"tp": y * p, "fp": (1.0 - y) * p, "fn": y * (1.0 - p), "tn": (1.0 - y) * (1.0 - p)}
    if mask is not None:
        # each count, not y and p: an ignored voxel zeroed in both would
        # still be a true negative
        counts = {k: v * mask for k, v in counts.items()}
    num = region_sum(counts[numerator], False)
    den = num + region_sum(counts[denominator], False)
    return undefined(ratio_or_one(num, den), den <= 0, empty)


def sensitivity(y_true, y_pred, threshold=0.5, empty="score", mask_index=None):
    """Sensitivity (recall, true positive rate) per sample and channel.

    `TP / (TP + FN)` of `P' = 1[P > threshold]`; where the ground truth is
    empty, 1 (`empty="score"`) or NaN (`"nan"`, MONAI's
    `ConfusionMatrixMetric("sensitivity")`). With `mask_index`, the
    confusion counts (all four) run over the counted voxels only.

    Args:
        y_true: labels `(batch, *spatial, C)`, possibly packed with maps.
        y_pred: predictions of the same shape, binarized at `threshold`.
        threshold: float in [0, 1]. Defaults to `0.5`.
        empty: `"score"` or `"nan"`. Defaults to `"score"`.
        mask_index: int >= 0, the packed slot of an ignore mask, or `None`.
            Defaults to `None`.

    Returns:
        float32 tensor of shape `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [1.0], [0.0]]]); p = np.array([[[0.9], [0.2], [0.7]]])
    >>> float(np.asarray(sensitivity(y, p))[0, 0])
    0.5
    """
    return _confusion_ratio(y_true, y_pred, threshold, empty, "sensitivity", "tp", "fn",
                            mask_index)


def specificity(y_true, y_pred, threshold=0.5, empty="score", mask_index=None):
    """Specificity (true negative rate) per sample and channel.

    `TN / (TN + FP)` of `P' = 1[P > threshold]`; where the ground truth is
    everywhere foreground, 1 (`empty="score"`) or NaN (`"nan"`, MONAI's
    `ConfusionMatrixMetric("specificity")`). Arguments and result as
    `sensitivity`.
    """
    return _confusion_ratio(y_true, y_pred, threshold, empty, "specificity", "tn", "fp",
                            mask_index)


def precision(y_true, y_pred, threshold=0.5, empty="score", mask_index=None):
    """Precision (positive predictive value) per sample and channel.

    `TP / (TP + FP)` of `P' = 1[P > threshold]`; where the binarized
    prediction is empty, 1 (`empty="score"`) or NaN (`"nan"`, MONAI's
    `ConfusionMatrixMetric("precision")`). Arguments and result as
    `sensitivity`.
    """
    return _confusion_ratio(y_true, y_pred, threshold, empty, "precision", "tp", "fp",
                            mask_index)
