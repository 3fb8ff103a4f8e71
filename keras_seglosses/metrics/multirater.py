"""Keras metrics of multi-annotator segmentation: QUBIQ and ConsensusDice,
mean over samples (and channels) of the packed-target forms in
`keras_seglosses.metrics._multirater_functional`.

Both read a map packed in `y_true` after the labels (`pack_targets(labels,
map)`), built once per input on the CPU side with
`keras_seglosses.multirater`: the soft label for `QUBIQ`, a consensus mask or
the STAPLE posterior for `ConsensusDice`.
"""

from keras_seglosses._core import check_map_index, check_number, register_metric
from keras_seglosses.metrics import _multirater_functional as mf
from keras_seglosses.metrics._common import SegMetric

__all__ = ["QUBIQ", "ConsensusDice"]


@register_metric
class QUBIQ(SegMetric):
    """QUBIQ challenge score against the soft label, mean over samples.

    `score = (1 / T) sum_t Dice(1[P > t], 1[S > t])` over the thresholds t,
    S the soft label (mean of the K annotations, `multirater.soft_label`)
    packed in `y_true` at slot `map_index`; comparisons are strict (a value
    equal to t does not count) and two empty masks score 1. Averaged over
    channels, then samples. Higher is better: Keras callbacks with
    `mode="auto"` maximize it.

    Args:
        thresholds: non-empty sequence of numbers in [0, 1]. Defaults to
            `(0.1, 0.2, ..., 0.9)` (QUBIQ's).
        map_index: int >= 0, the packed slot of the soft label. Defaults to
            `0`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), another slot than `map_index`, or `None`. Each
            Dice then runs over the counted voxels only. Defaults to
            `None`.
        name: str, the metric's name. Defaults to `"qubiq"`.
        dtype: the dtype of the result, as `keras.metrics.Metric`.
            Defaults to `None`.

    Shapes: `y_pred` `(batch, *spatial, C)` probabilities; `y_true`
    `(batch, *spatial, (2 + map_index) C)` at least.

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import pack_targets
    >>> soft = np.array([[[1.0], [0.5], [0.0], [0.0]]])
    >>> m = QUBIQ()
    >>> m.update_state(pack_targets(soft > 0, soft), np.array([[[1.0], [0.6], [0.0], [0.0]]]))
    >>> round(float(m.result()), 4)
    0.963

    Reference:
        QUBIQ challenge (MICCAI 2020, 2021); see
        `keras_seglosses.metrics.functional.qubiq_score`.
    """

    _direction = "up"
    map_kind = "soft"

    def __init__(
        self, thresholds=mf.QUBIQ_THRESHOLDS, map_index=0, include_background=True,
        mask_index=None, name="qubiq", dtype=None
    ):
        super().__init__(
            mf.packed_qubiq,
            name=name,
            dtype=dtype,
            include_background=include_background,
            thresholds=mf._check_thresholds(thresholds),
            map_index=check_map_index(map_index, allow_none=False),
            mask_index=mask_index,
        )



@register_metric
class ConsensusDice(SegMetric):
    """Dice against a consensus of the annotations, mean over samples.

    `Dice(1[P > threshold], 1[C > 0.5])`, C packed in `y_true` at slot
    `map_index`: a binary consensus (`multirater.majority_vote`) or the
    STAPLE posterior (`multirater.staple(a).probability`), both binarized
    at 0.5 as `functional.consensus_dice` does; 1 when both are empty.
    Averaged over channels, then samples. Higher is better: Keras callbacks
    with `mode="auto"` maximize it.

    Args:
        threshold: number in [0, 1], the prediction's binarization
            threshold. Defaults to `0.5`.
        map_index: int >= 0, the packed slot of the consensus. Defaults to
            `0`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), another slot than `map_index`, or `None`. The
            sums then run over the counted voxels only. Defaults to `None`.
        name: str, the metric's name. Defaults to `"consensus_dice"`.
        dtype: the dtype of the result, as `keras.metrics.Metric`.
            Defaults to `None`.

    Shapes: `y_pred` `(batch, *spatial, C)`; `y_true`
    `(batch, *spatial, (2 + map_index) C)` at least.

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import pack_targets
    >>> w = np.array([[[0.9], [0.7], [0.2], [0.0]]])   # a STAPLE posterior
    >>> m = ConsensusDice()
    >>> m.update_state(pack_targets(w > 0.5, w), np.array([[[0.8], [0.3], [0.1], [0.0]]]))
    >>> round(float(m.result()), 4)
    0.6667
    """

    _direction = "up"
    map_kind = "consensus"

    def __init__(
        self, threshold=0.5, map_index=0, include_background=True, mask_index=None,
        name="consensus_dice", dtype=None
    ):
        super().__init__(
            mf.packed_consensus_dice,
            name=name,
            dtype=dtype,
            include_background=include_background,
            threshold=float(check_number("threshold", threshold, low=0, high=1)),
            map_index=check_map_index(map_index, allow_none=False),
            mask_index=mask_index,
        )

