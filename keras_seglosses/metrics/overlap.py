"""Keras metrics of the RPDL paper: Dice and RPD [000, Eq. 5-6]."""

import keras
from keras import ops

from keras_seglosses._core import check_number, register_metric
from keras_seglosses.metrics import functional

__all__ = ["Dice", "RPD"]


def _channel_mean(fn):
    def per_sample(y_true, y_pred, **kwargs):
        return ops.mean(fn(y_true, y_pred, **kwargs), axis=-1)

    per_sample.__name__ = fn.__name__
    return per_sample


_dice = _channel_mean(functional.dice)
_rpd = _channel_mean(functional.reward_penalty_dice)


class _ThresholdMetric(keras.metrics.MeanMetricWrapper):
    """Mean over samples of a per-sample value computed on `y_pred > threshold`."""

    _fn = None

    def __init__(self, threshold=0.5, name=None, dtype=None):
        check_number("threshold", threshold, low=0, high=1)
        super().__init__(fn=type(self)._fn, name=name, dtype=dtype, threshold=threshold)
        self.threshold = float(threshold)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "threshold": self.threshold}


@register_metric
class Dice(_ThresholdMetric):
    """Dice coefficient of binarized predictions, mean over samples.

    `Dice = 2 sum y P' / (sum y + sum P')`, `P' = 1[P > threshold]`, averaged
    over channels, then over samples. A sample where both masks are empty
    scores 1.

    Args:
        threshold: float in [0, 1]. Defaults to `0.5`.
        name, dtype: as `keras.metrics.Metric`.

    Example:

    >>> import numpy as np
    >>> m = Dice()
    >>> m.update_state(np.array([[[1.0], [0.0]]]), np.array([[[0.8], [0.3]]]))
    >>> float(m.result())
    1.0

    Reference:
        He et al., IJCNN 2020 [000, Eq. 5].
    """

    _fn = staticmethod(_dice)

    def __init__(self, threshold=0.5, name="dice", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)


@register_metric
class RPD(_ThresholdMetric):
    """Reward-penalty Dice coefficient, mean over samples.

    `RPD = 2 sum y P' M / (sum y |M| + sum P' |M|)` with the reward-penalty
    map M packed in `y_true` (`pack_targets(labels, M)`); 1 when both masks
    are empty.

    Args:
        threshold: float in [0, 1]. Defaults to `0.5`.
        name, dtype: as `keras.metrics.Metric`.

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

    _fn = staticmethod(_rpd)

    def __init__(self, threshold=0.5, name="rpd", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)
