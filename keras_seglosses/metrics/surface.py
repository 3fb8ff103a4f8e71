"""Keras metrics HD95, NSD and ASD: mean over samples (and channels) of the
functional forms in `keras_seglosses.metrics.functional`."""

from keras_seglosses._core import check_choice, check_number, register_metric
from keras_seglosses.metrics import _surface_functional as sf
from keras_seglosses.metrics._common import SegMetric, check_empty
from keras_seglosses.ops.distance import spacing_argument

__all__ = ["HD95", "NSD", "ASD"]


@register_metric
class HD95(SegMetric):
    """Robust (95th percentile) Hausdorff distance, mean over samples.

    Conventions (see `keras_seglosses.metrics.functional.hd95`): `"max"`
    (MONAI), `"pooled"` (medpy), `"mean"` [003, Eq. 13], `"surfel"`
    (DeepMind's surface-distance). A sample where both masks are empty
    scores 0; where exactly one is empty, `empty_value`, by default the
    physical diagonal of the volume (never NaN or inf). Lower is better:
    Keras callbacks with `mode="auto"` minimize it.

    Args:
        spacing: physical voxel size, a number or one per spatial axis.
            Defaults to `None` (1 along every axis).
        percentile: number in [0, 100]. Defaults to `95`.
        convention: `"max"`, `"pooled"`, `"mean"` or `"surfel"`. Defaults to
            `"max"`.
        threshold: binarization threshold of `y_pred`. Defaults to `0.5`.
        empty_value: finite number >= 0, or `None` for the volume diagonal.
            Defaults to `None`.
        directed: bool, only the distances from the predicted surface to
            the ground truth (MONAI's `directed=True`). Defaults to `False`.
        empty: `"score"` (the rules above) or `"nan"`: a sample and channel
            with an empty mask is left out of the mean and counted in the
            variable `excluded` (MONAI's NaN). Defaults to `"score"`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), or `None`. The prediction and the ground truth
            are both restricted to the counted voxels (the ignored ones
            become background) before surfaces and distances are taken,
            and the empty-mask rules apply to the restricted masks; MONAI
            has no mask for this metric. Defaults to `None`.
        name: str, the metric's name. Defaults to `"hd95"`.
        dtype: the dtype of the result, as `keras.metrics.Metric`.
            Defaults to `None`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 8, 8, 1)); y[0, 2:6, 2:6] = 1
    >>> p = np.zeros((1, 8, 8, 1)); p[0, 2:6, 3:7] = 1  # one column over
    >>> m = HD95(spacing=(1.0, 2.0))
    >>> m.update_state(y, p)
    >>> float(m.result())
    2.0

    Reference:
        Chen et al., TPAMI 2023 [003, Eq. 13].
    """

    _direction = "down"

    def __init__(
        self,
        spacing=None,
        percentile=95,
        convention="max",
        threshold=0.5,
        empty_value=None,
        directed=False,
        empty="score",
        include_background=True,
        mask_index=None,
        name="hd95",
        dtype=None,
    ):
        check_choice("convention", convention, sf.HD95_CONVENTIONS)
        check_number("percentile", percentile, low=0, high=100)
        check_number("threshold", threshold, low=0, high=1)
        super().__init__(
            sf.hd95,
            name=name,
            dtype=dtype,
            include_background=include_background,
            spacing=spacing_argument(spacing),
            percentile=float(percentile),
            convention=convention,
            threshold=float(threshold),
            empty_value=sf.check_empty_value(empty_value, finite=True),
            directed=bool(directed),
            empty=check_empty(empty),
            mask_index=mask_index,
        )


@register_metric
class NSD(SegMetric):
    """Normalized surface Dice at `tolerance`, mean over samples.

    Conventions (see `keras_seglosses.metrics.functional.nsd`): `"voxel"`
    counts boundary voxels (MONAI), `"surfel"` weights surface elements by
    area (DeepMind). Both masks empty: 1; exactly one empty: 0. Higher is
    better: Keras callbacks with `mode="auto"` maximize it.

    Args:
        tolerance: number >= 0 in the units of `spacing`. Defaults to `1.0`.
        spacing: a number or one per spatial axis. Defaults to `None`.
        convention: `"voxel"` or `"surfel"`. Defaults to `"voxel"`.
        threshold: binarization threshold of `y_pred`. Defaults to `0.5`.
        empty: `"score"` (both empty 1, one empty 0) or `"nan"`: a sample
            and channel with an empty mask is left out of the mean and
            counted in `excluded`. Defaults to `"score"`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), or `None`. The prediction and the ground truth
            are both restricted to the counted voxels (the ignored ones
            become background) before surfaces and distances are taken,
            and the empty-mask rules apply to the restricted masks; MONAI
            has no mask for this metric. Defaults to `None`.
        name: str, the metric's name. Defaults to `"nsd"`.
        dtype: the dtype of the result, as `keras.metrics.Metric`.
            Defaults to `None`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 8, 8, 1)); y[0, 2:6, 2:6] = 1
    >>> p = np.zeros((1, 8, 8, 1)); p[0, 2:6, 3:7] = 1
    >>> m = NSD(tolerance=0.5)  # half of each boundary lies on the other
    >>> m.update_state(y, p)
    >>> float(m.result())
    0.5

    Reference:
        Ma et al., "Loss odyssey" [004, 3.3.2].
    """

    _direction = "up"

    def __init__(
        self, tolerance=1.0, spacing=None, convention="voxel", threshold=0.5, empty="score",
        include_background=True, mask_index=None, name="nsd", dtype=None
    ):
        check_choice("convention", convention, sf.NSD_CONVENTIONS)
        check_number("tolerance", tolerance, low=0)
        check_number("threshold", threshold, low=0, high=1)
        super().__init__(
            sf.nsd,
            name=name,
            dtype=dtype,
            include_background=include_background,
            tolerance=float(tolerance),
            spacing=spacing_argument(spacing),
            convention=convention,
            threshold=float(threshold),
            empty=check_empty(empty),
            mask_index=mask_index,
        )


@register_metric
class ASD(SegMetric):
    """Average symmetric surface distance, mean over samples.

    Conventions (see `keras_seglosses.metrics.functional.asd`): `"mean"`
    [003, Eq. 12] and `"pooled"` (medpy 0.5 `assd`, MONAI symmetric). Both
    masks empty: 0; exactly one empty: `empty_value` (default: the volume
    diagonal). Lower is better: Keras callbacks with `mode="auto"` minimize
    it.

    Args:
        spacing: a number or one per spatial axis. Defaults to `None`.
        convention: `"mean"` or `"pooled"`. Defaults to `"mean"`.
        threshold: binarization threshold of `y_pred`. Defaults to `0.5`.
        empty_value: finite number >= 0, or `None` for the volume diagonal.
            Defaults to `None`.
        directed: bool, only the distances from the predicted surface to
            the ground truth (MONAI's `SurfaceDistanceMetric` default).
            Defaults to `False`.
        empty: `"score"` (the rules above) or `"nan"`: a sample and channel
            with an empty mask is left out of the mean and counted in the
            variable `excluded` (MONAI's NaN). Defaults to `"score"`.
        include_background: bool; with several channels, False leaves
            channel 0 out of the mean. Defaults to `True`.
        mask_index: int >= 0, the packed slot of an ignore mask (1 counts,
            0 is ignored), or `None`. The prediction and the ground truth
            are both restricted to the counted voxels (the ignored ones
            become background) before surfaces and distances are taken,
            and the empty-mask rules apply to the restricted masks; MONAI
            has no mask for this metric. Defaults to `None`.
        name: str, the metric's name. Defaults to `"asd"`.
        dtype: the dtype of the result, as `keras.metrics.Metric`.
            Defaults to `None`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 8, 8, 1)); y[0, 2:6, 2:6] = 1
    >>> p = np.zeros((1, 8, 8, 1)); p[0, 2:6, 3:7] = 1
    >>> m = ASD()
    >>> m.update_state(y, p)
    >>> float(m.result())
    0.5

    Reference:
        Chen et al., TPAMI 2023 [003, Eq. 12].
    """

    _direction = "down"

    def __init__(
        self, spacing=None, convention="mean", threshold=0.5, empty_value=None, directed=False,
        empty="score", include_background=True, mask_index=None, name="asd", dtype=None
    ):
        check_choice("convention", convention, sf.ASD_CONVENTIONS)
        check_number("threshold", threshold, low=0, high=1)
        super().__init__(
            sf.asd,
            name=name,
            dtype=dtype,
            include_background=include_background,
            spacing=spacing_argument(spacing),
            convention=convention,
            threshold=float(threshold),
            empty_value=sf.check_empty_value(empty_value, finite=True),
            directed=bool(directed),
            empty=check_empty(empty),
            mask_index=mask_index,
        )
