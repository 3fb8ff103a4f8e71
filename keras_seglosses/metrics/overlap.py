"""Keras metrics of overlap: the RPDL paper's Dice and RPD [000, Eq. 5-6]
and the confusion-matrix rates (sensitivity, specificity, precision)."""

from keras_seglosses._core import check_map_index, check_number, register_metric
from keras_seglosses.metrics import functional
from keras_seglosses.metrics._common import SegMetric, check_empty

__all__ = ["Dice", "RPD", "Sensitivity", "Specificity", "Precision"]


@register_metric
class Dice(SegMetric):
    """Dice coefficient of binarized predictions, mean over samples.

    `Dice = 2 sum y P' / (sum y + sum P')`, `P' = 1[P > threshold]`, averaged
    over channels, then over samples. A sample where both masks are empty
    scores 1. Higher is better: Keras callbacks with `mode="auto"` maximize
    it.

    Args:
        threshold: float in [0, 1]. Defaults to `0.5`.
        empty: `"score"` (both masks empty scores 1) or `"nan"`: a sample
            and channel whose ground truth is empty is left out of the mean
            and counted in the variable `excluded` (MONAI's
            `ignore_empty=True`). Defaults to `"score"`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), or `None`. The sums then run over the counted
            voxels only. Defaults to `None`.
        name: str, the metric's name. Defaults to `"dice"`.
        dtype: the dtype of the result, as `keras.metrics.Metric`.
            Defaults to `None`.

    Example:

    >>> import numpy as np
    >>> m = Dice()
    >>> m.update_state(np.array([[[1.0], [0.0]]]), np.array([[[0.8], [0.3]]]))
    >>> float(m.result())
    1.0

    Reference:
        He et al., IJCNN 2020 [000, Eq. 5].
    """

    _direction = "up"

    def __init__(
        self, threshold=0.5, empty="score", include_background=True, mask_index=None,
        name="dice", dtype=None,
    ):
        super().__init__(
            functional.dice,
            name=name,
            dtype=dtype,
            include_background=include_background,
            empty=check_empty(empty),
            threshold=float(check_number("threshold", threshold, low=0, high=1)),
            mask_index=mask_index,
        )


@register_metric
class RPD(SegMetric):
    """Reward-penalty Dice coefficient, mean over samples.

    `RPD = 2 sum y P' M / (sum y |M| + sum P' |M|)`, `P' = 1[P > threshold]`,
    with the reward-penalty map M packed in `y_true` at slot `map_index`
    (`pack_targets(labels, M)` puts it at slot 0); 1 when both masks are
    empty. Higher is better: Keras callbacks with `mode="auto"` maximize it.

    Args:
        threshold: float in [0, 1]. Defaults to `0.5`.
        map_index: int >= 0, the packed slot of M. Defaults to `0`.
        empty: `"score"` or `"nan"`, as `Dice`. Defaults to `"score"`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), another slot than `map_index`, or `None`. The
            sums then run over the counted voxels only. Defaults to `None`.
        name: str, the metric's name. Defaults to `"rpd"`.
        dtype: the dtype of the result, as `keras.metrics.Metric`.
            Defaults to `None`.

    Shapes: `y_pred` `(batch, *spatial, C)`; `y_true` `(batch, *spatial,
    (2 + map_index) C)` at least (labels, then the maps).

    Example:

    >>> import numpy as np
    >>> from keras_seglosses import pack_targets
    >>> y = np.array([[[1.0], [1.0], [0.0]]]); M = np.array([[[1.0], [0.5], [-1.0]]])
    >>> m = RPD()
    >>> m.update_state(pack_targets(y, M), np.array([[[0.9], [0.2], [0.7]]]))
    >>> round(float(m.result()), 4)   # 2 * 1 / (1.5 + 2)
    0.5714

    Reference:
        He et al., IJCNN 2020 [000, Eq. 6].
    """

    _direction = "up"
    map_kind = "rpmap"

    def __init__(
        self, threshold=0.5, map_index=0, empty="score", include_background=True,
        mask_index=None, name="rpd", dtype=None,
    ):
        super().__init__(
            functional.reward_penalty_dice,
            name=name,
            dtype=dtype,
            include_background=include_background,
            empty=check_empty(empty),
            threshold=float(check_number("threshold", threshold, low=0, high=1)),
            map_index=check_map_index(map_index, allow_none=False),
            mask_index=mask_index,
        )



class _ConfusionRate(SegMetric):
    """A rate of the confusion matrix of binarized predictions, per sample
    and channel, averaged (MONAI's `ConfusionMatrixMetric` with
    `compute_sample=True`).

    Args:
        threshold: float in [0, 1], the binarization threshold. Defaults to
            `0.5`.
        empty: where the rate is undefined (a zero denominator): `"score"`
            counts it as 1, `"nan"` leaves it out of the mean (counted in
            the variable `excluded`), as MONAI's NaN. Defaults to `"score"`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), or `None`. All four confusion counts then run
            over the counted voxels only. Defaults to `None`.
        name, dtype: as `keras.metrics.Metric`.
    """

    _direction = "up"

    def __init__(
        self, threshold=0.5, empty="score", include_background=True, mask_index=None,
        name=None, dtype=None,
    ):
        super().__init__(
            type(self)._function, name=name or type(self)._default_name, dtype=dtype,
            include_background=include_background,
            threshold=float(check_number("threshold", threshold, low=0, high=1)),
            empty=check_empty(empty),
            mask_index=mask_index,
        )


@register_metric
class Sensitivity(_ConfusionRate):
    """Sensitivity `TP / (TP + FN)` of binarized predictions, mean over
    channels and samples; undefined (no ground truth) counts as 1 or, with
    `empty="nan"`, is left out. Arguments as `_ConfusionRate`.

    Example:

    >>> import numpy as np
    >>> m = Sensitivity()
    >>> m.update_state(np.array([[[1.0], [1.0]]]), np.array([[[0.8], [0.3]]]))
    >>> float(m.result())
    0.5
    """

    _function = staticmethod(functional.sensitivity)
    _default_name = "sensitivity"


@register_metric
class Specificity(_ConfusionRate):
    """Specificity `TN / (TN + FP)` of binarized predictions, mean over
    channels and samples; undefined (no background) counts as 1 or, with
    `empty="nan"`, is left out. Arguments as `_ConfusionRate`."""

    _function = staticmethod(functional.specificity)
    _default_name = "specificity"


@register_metric
class Precision(_ConfusionRate):
    """Precision `TP / (TP + FP)` of binarized predictions, mean over
    channels and samples; undefined (empty prediction) counts as 1 or, with
    `empty="nan"`, is left out. Arguments as `_ConfusionRate`."""

    _function = staticmethod(functional.precision)
    _default_name = "precision"
