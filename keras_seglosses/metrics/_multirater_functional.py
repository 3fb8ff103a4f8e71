"""Metrics of multi-annotator segmentation, one input at a time (numpy),
and the packed-target forms the Keras metrics `QUBIQ` and `ConsensusDice`
compute (tensors, batched).

The numpy functions take the K annotations of one input, `(K, *spatial)`,
binary, and a prediction of the same spatial shape: a soft map in [0, 1], or
a set of M binary samples `(M, *spatial)` for the generative-model metrics
(GED, Hungarian-matched IoU).
"""

import math
import numbers

import numpy as np
from keras import ops

from keras_seglosses._core import check_map_index, check_mask_slot, check_number, region_sum
from keras_seglosses.metrics._common import binarize, masked_binarize, ratio_or_one
from keras_seglosses.multirater import annotation_stack, majority_vote, soft_label, staple
from keras_seglosses.targets import require_map

__all__ = [
    "pairwise_iou",
    "generalized_energy_distance",
    "hungarian_iou",
    "qubiq_score",
    "consensus_dice",
    "packed_qubiq",
    "packed_consensus_dice",
    "QUBIQ_THRESHOLDS",
    "GED_EMPTY",
    "CONSENSUS",
]

#: QUBIQ's thresholds, written out so that `j / 10` compares exactly.
QUBIQ_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GED_EMPTY = ("one", "nan")
CONSENSUS = ("staple", "majority")


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of "
            f"{list(choices)}. Received: {name}={value!r}"
        )
    return value


def _same_spatial(a, b, name_a, name_b):
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"Invalid shapes: `{name_a}` and `{name_b}` must share the spatial "
            f"shape, (K, *spatial) and (M, *spatial). Received: "
            f"{name_a}.shape={a.shape}, {name_b}.shape={b.shape}."
        )


def _soft_prediction(prediction, spatial):
    p = np.asarray(prediction, dtype=np.float64)
    if p.shape != spatial:
        raise ValueError(
            "Invalid shape for argument `prediction`. Expected the spatial shape "
            f"of the annotations, {spatial}. Received: prediction.shape={p.shape}."
        )
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(
            "Invalid value for argument `prediction`. Expected probabilities in "
            f"[0, 1]. Received values in [{np.nanmin(p)}, {np.nanmax(p)}]"
            f"{' and NaN' if np.isnan(p).any() else ''}."
        )
    return p


def _check_thresholds(thresholds):
    try:
        t = tuple(float(x) for x in thresholds)
    except (TypeError, ValueError):
        t = None
    if not t or not all(0.0 <= x <= 1.0 for x in t):
        raise ValueError(
            "Invalid value for argument `thresholds`. Expected a non-empty sequence "
            f"of numbers in [0, 1]. Received: thresholds={thresholds!r}"
        )
    return t


def _dice_or_one(a, b):
    """Dice of two bool arrays, 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def pairwise_iou(first, second, *, empty="one"):
    """IoU of every mask of one set with every mask of another.

    `IoU(A, B) = |A n B| / |A u B|`; two empty masks have IoU 1
    (`empty="one"`) or NaN (`empty="nan"`).

    Args:
        first: binary array `(K, *spatial)`.
        second: binary array `(M, *spatial)`, the same spatial shape.
        empty: `"one"` or `"nan"`, the IoU of two empty masks. Defaults to
            `"one"`.

    Returns:
        float64 array `(K, M)`.

    Example:

    >>> import numpy as np
    >>> pairwise_iou(np.array([[1, 1, 0], [0, 0, 0]]), np.array([[1, 0, 0], [0, 0, 0]])).tolist()
    [[0.5, 0.0], [0.0, 1.0]]
    """
    _choice("empty", empty, GED_EMPTY)
    a = annotation_stack(first, "first")
    b = annotation_stack(second, "second")
    _same_spatial(a, b, "first", "second")
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    # counts are integers well below 2^53, so the products are exact
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    both_empty = 1.0 if empty == "one" else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), both_empty)


def _mean_distance(iou):
    d = 1.0 - iou
    if np.all(np.isnan(d)):
        return np.nan
    return float(np.nanmean(d))


def generalized_energy_distance(annotations, samples, *, empty="one"):
    """Squared generalized energy distance D^2_GED between a set of
    annotations and a set of model samples.

    `D^2_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`, `d = 1 - IoU`,
    with Y, Y' drawn from the K annotations and S, S' from the M samples
    [Kohl et al. 2018, Eq. 4]. Each expectation is the mean over all
    ordered pairs, a member paired with itself included (d = 0 there), so
    identical sets give 0. Lower is better.

    Two empty masks have no IoU; the two published codes differ:

    * `empty="one"` (PHiSeg's code): IoU 1, d 0.
    * `empty="nan"` (the probabilistic U-Net code): the pair is dropped and
      each expectation is the mean over the remaining pairs; a term with no
      pair left is NaN, and so is D^2_GED.

    For example Y = {A, empty}, S = {A, A} with A non-empty: `"one"` gives
    `2 (1/2) - 0 - 1/2 = 0.5`, `"nan"` gives `2 (1/2) - 0 - 2/3 = 1/3`
    (the pair (empty, empty) of E[d(Y, Y')] is dropped).

    Args:
        annotations: binary array `(K, *spatial)`, K >= 1.
        samples: binary array `(M, *spatial)`, M >= 1, the same spatial
            shape.
        empty: `"one"` or `"nan"`. Defaults to `"one"`.

    Returns:
        float (NaN only with `empty="nan"`, as above).

    Example:

    >>> import numpy as np
    >>> y = np.array([[1, 1, 0, 0], [0, 0, 0, 0]]); s = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    >>> generalized_energy_distance(y, y)
    0.0
    >>> generalized_energy_distance(y, s)
    0.5
    >>> round(generalized_energy_distance(y, s, empty="nan"), 4)
    0.3333

    Reference:
        Kohl et al., "A probabilistic U-Net for segmentation of ambiguous
        images", NeurIPS 2018, Eq. 4.
    """
    _choice("empty", empty, GED_EMPTY)
    y = annotation_stack(annotations)
    s = annotation_stack(samples, "samples")
    _same_spatial(y, s, "annotations", "samples")
    cross = _mean_distance(pairwise_iou(s, y, empty=empty))
    within_s = _mean_distance(pairwise_iou(s, s, empty=empty))
    within_y = _mean_distance(pairwise_iou(y, y, empty=empty))
    return 2.0 * cross - within_s - within_y


def hungarian_iou(annotations, samples):
    """Mean IoU of the best one-to-one matching between annotations and
    samples.

    Both sets are repeated to L = lcm(K, M) members, the annotations tiled
    `L / K` times and the samples `L / M` times (each set whole, in order),
    so that every member of either set takes part equally often; the
    matching maximizes the summed IoU (`scipy.optimize.linear_sum_assignment`
    on the cost 1 - IoU) and the result is its mean over the L pairs. When
    one size divides the other, L is the larger size and only the smaller
    set is repeated, as Kohl et al. 2019 do (4 annotations against 16
    samples: the annotations 4 times). Two empty masks have IoU 1. Higher is
    better.

    Args:
        annotations: binary array `(K, *spatial)`, K >= 1.
        samples: binary array `(M, *spatial)`, M >= 1, the same spatial
            shape.

    Returns:
        float in [0, 1].

    Example:

    >>> import numpy as np
    >>> y = np.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    >>> hungarian_iou(y, y[::-1])
    1.0
    >>> hungarian_iou(y, np.array([[1, 1, 1, 1]]))   # both matched to it
    0.5

    Reference:
        Kohl et al., "A hierarchical probabilistic U-Net for modeling
        multi-scale ambiguities", arXiv:1905.13077, 2019, Sec. 4.
    """
    from scipy.optimize import linear_sum_assignment

    y = annotation_stack(annotations)
    s = annotation_stack(samples, "samples")
    _same_spatial(y, s, "annotations", "samples")
    iou = pairwise_iou(y, s)
    k, m = iou.shape
    size = math.lcm(k, m)
    # tiling the (K, M) matrix is the IoU matrix of the two tiled sets
    tiled = np.tile(iou, (size // k, size // m))
    rows, cols = linear_sum_assignment(1.0 - tiled)
    return float(tiled[rows, cols].mean())


def qubiq_score(prediction, annotations, *, thresholds=QUBIQ_THRESHOLDS):
    """QUBIQ challenge score: Dice of a soft prediction and the soft label,
    both binarized at each threshold, averaged over the thresholds.

    `score = (1 / T) sum_t Dice(1[P > t], 1[S > t])`, S the mean of the K
    annotations (`soft_label`). The comparison is strict: a value equal to
    the threshold does not count (with 2 annotations, a voxel one of them
    marks has S = 0.5 and is background at t = 0.5). Dice of two empty masks
    is 1. Higher is better.

    Args:
        prediction: array of probabilities in [0, 1], shape `spatial`.
        annotations: binary array `(K, *spatial)`, K >= 1.
        thresholds: non-empty sequence of numbers in [0, 1]. Defaults to
            `(0.1, 0.2, ..., 0.9)` (QUBIQ's).

    Returns:
        float in [0, 1].

    Example:

    >>> import numpy as np
    >>> a = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])     # soft label 1, .5, 0, 0
    >>> qubiq_score(np.array([1.0, 0.5, 0.0, 0.0]), a)
    1.0
    >>> round(qubiq_score(np.array([1.0, 0.6, 0.0, 0.0]), a), 4)  # t = .5: 2/3
    0.963

    Reference:
        QUBIQ, "Quantification of Uncertainties in Biomedical Image
        Quantification" challenge (MICCAI 2020, 2021).
    """
    thresholds = _check_thresholds(thresholds)
    a = annotation_stack(annotations)
    p = _soft_prediction(prediction, a.shape[1:])
    soft = soft_label(a)
    return float(np.mean([_dice_or_one(p > t, soft > t) for t in thresholds]))


def consensus_dice(prediction, annotations, *, consensus="staple", threshold=0.5):
    """Dice of a binarized prediction against a consensus of the
    annotations.

    `Dice(1[P > threshold], C)`, C the STAPLE consensus `W > 0.5`
    (`consensus="staple"`, `staple` with its defaults, W its posterior) or
    the strict majority vote (`consensus="majority"`, `majority_vote`); 1
    when both are empty. Higher is better.

    Args:
        prediction: array of probabilities in [0, 1], shape `spatial`.
        annotations: binary array `(K, *spatial)`, K >= 1.
        consensus: `"staple"` or `"majority"`. Defaults to `"staple"`.
        threshold: number in [0, 1], the prediction's binarization
            threshold. Defaults to `0.5`.

    Returns:
        float in [0, 1].

    Example:

    >>> import numpy as np
    >>> a = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    >>> p = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0])
    >>> consensus_dice(p, a), consensus_dice(p, a, consensus="majority")
    (1.0, 1.0)
    >>> round(consensus_dice(np.array([0.9, 0.8, 0.1, 0.1, 0.1, 0.1]), a), 4)
    0.8
    """
    _choice("consensus", consensus, CONSENSUS)
    ok = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not ok or not 0.0 <= threshold <= 1.0:
        raise ValueError(
            "Invalid value for argument `threshold`. Expected a number in [0, 1]. "
            f"Received: threshold={threshold!r}"
        )
    a = annotation_stack(annotations)
    p = _soft_prediction(prediction, a.shape[1:])
    if consensus == "staple":
        c = staple(a).probability > 0.5
    else:
        c = majority_vote(a)
    return _dice_or_one(p > threshold, c)


# ------------------------------------------------------------------ tensors
def packed_qubiq(y_true, y_pred, thresholds=QUBIQ_THRESHOLDS, map_index=0, mask_index=None):
    """QUBIQ score per sample and channel, the soft label packed in
    `y_true`.

    `score = (1 / T) sum_t Dice(1[P > t], 1[S > t])` as `qubiq_score`
    (strict comparisons, two empty masks score 1), S the soft label packed
    at slot `map_index` (`pack_targets(labels, soft)`). With `mask_index`,
    every Dice runs over the counted voxels only (an ignored voxel is
    background in both binarizations). Written with `keras.ops` only, for
    every backend and under jit.

    Args:
        y_true: packed target `(batch, *spatial, (2 + map_index) C)` at
            least: the labels, then the maps.
        y_pred: soft predictions `(batch, *spatial, C)`.
        thresholds: non-empty sequence of numbers in [0, 1]. Defaults to
            `(0.1, 0.2, ..., 0.9)`.
        map_index: int >= 0, the packed slot of the soft label. Defaults to
            `0`.
        mask_index: int >= 0, the packed slot of an ignore mask (another
            slot than `map_index`), or `None`. Defaults to `None`.

    Returns:
        float32 tensor `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import pack_targets
    >>> soft = np.array([[[1.0], [0.5], [0.0], [0.0]]])
    >>> p = np.array([[[1.0], [0.6], [0.0], [0.0]]])
    >>> round(float(packed_qubiq(pack_targets(soft > 0, soft), p)[0, 0]), 4)
    0.963
    """
    thresholds = _check_thresholds(thresholds)
    map_index = check_map_index(map_index, allow_none=False)
    mask_index = check_mask_slot(mask_index, map_index)
    y_true, _, _, mask = masked_binarize(y_true, y_pred, 0.5, "qubiq", mask_index)
    pred = ops.cast(y_pred, "float32")
    soft = require_map(y_true, pred.shape[-1], map_index, "QUBIQ", "soft label")
    t = ops.convert_to_tensor(np.asarray(thresholds, np.float32))
    p_t = ops.cast(ops.expand_dims(pred, -1) > t, "float32")
    s_t = ops.cast(ops.expand_dims(soft, -1) > t, "float32")
    if mask is not None:
        # on the binarized masks: an ignored voxel is then background at
        # every threshold, t = 0 included, whatever values it holds
        mask = ops.expand_dims(mask, -1)
        p_t, s_t = p_t * mask, s_t * mask
    # (batch, *spatial, C, T): reduce the spatial axes
    inter = ops.sum(p_t * s_t, axis=tuple(range(1, len(p_t.shape) - 2)))
    total = ops.sum(p_t + s_t, axis=tuple(range(1, len(p_t.shape) - 2)))
    return ops.mean(ratio_or_one(2.0 * inter, total), axis=-1)


def packed_consensus_dice(y_true, y_pred, threshold=0.5, map_index=0, mask_index=None):
    """Dice per sample and channel against a consensus packed in `y_true`.

    `Dice(1[P > threshold], 1[C > 0.5])`, C packed at slot `map_index`: a
    binary consensus (majority vote) or the STAPLE posterior W itself, both
    binarized at 0.5 as `consensus_dice` does; 1 when both are empty. With
    `mask_index`, the sums run over the counted voxels only.

    Args:
        y_true: packed target `(batch, *spatial, (2 + map_index) C)` at
            least: the labels, then the maps.
        y_pred: predictions `(batch, *spatial, C)`.
        threshold: number in [0, 1]. Defaults to `0.5`.
        map_index: int >= 0, the packed slot of the consensus. Defaults to
            `0`.
        mask_index: int >= 0, the packed slot of an ignore mask (another
            slot than `map_index`), or `None`. Defaults to `None`.

    Returns:
        float32 tensor `(batch, C)`.

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import pack_targets
    >>> w = np.array([[[0.9], [0.7], [0.2], [0.0]]])
    >>> p = np.array([[[0.8], [0.3], [0.1], [0.0]]])
    >>> round(float(packed_consensus_dice(pack_targets(w > 0.5, w), p)[0, 0]), 4)
    0.6667
    """
    check_number("threshold", threshold, low=0, high=1)
    map_index = check_map_index(map_index, allow_none=False)
    mask_index = check_mask_slot(mask_index, map_index)
    # the masked target: the consensus is 0 (background) at ignored voxels
    y_true, _, p = binarize(y_true, y_pred, threshold, "consensus_dice", mask_index)
    c = require_map(y_true, p.shape[-1], map_index, "ConsensusDice", "consensus")
    c = ops.cast(c > 0.5, "float32")
    return ratio_or_one(2.0 * region_sum(p * c, False), region_sum(p + c, False))
