"""Pieces every metric shares: binarization, the empty-mask ratio, and the
base of the Keras metric classes.

Both functional modules (`functional`, `_surface_functional`) import from
here, so that neither has to import the other.
"""

import keras
from keras import ops

from keras_seglosses._core import (
    apply_mask,
    check_mask_slot,
    ignore_mask,
    mask_reads,
    split_targets,
)
from keras_seglosses.targets import MapRead

__all__ = ["binarize", "masked_binarize", "ratio_or_one", "SegMetric", "EMPTY_MODES",
           "check_empty", "undefined"]

#: The `empty` argument of every metric: `"score"` scores cases with an
#: empty mask by the package's rules (both empty is perfect; see each
#: metric), `"nan"` makes them NaN so that means leave them out (MONAI's
#: `ignore_empty` / NaN results), counted by the Keras metrics in `excluded`.
EMPTY_MODES = ("score", "nan")


def check_empty(empty):
    if empty not in EMPTY_MODES:
        raise ValueError(
            f"Invalid value for argument `empty`. Expected one of {list(EMPTY_MODES)}. "
            f"Received: empty={empty!r}"
        )
    return empty


def undefined(value, where, empty):
    """`value`, with NaN where `where` holds when `empty="nan"`."""
    if empty == "nan":
        return ops.where(where, float("nan"), value)
    return value


def binarize(y_true, y_pred, threshold=0.5, name="metric", mask_index=None):
    """Validate shapes and binarize the prediction.

    `P' = 1[y_pred > threshold]`, the paper's binarization at 0.5 [000,
    Sec. V].

    Args:
        y_true: labels `(batch, *spatial, C)`, possibly packed with maps
            (see `keras_seglosses.pack_targets`).
        y_pred: predictions `(batch, *spatial, C)`.
        threshold: float, the binarization threshold. Defaults to `0.5`.
        name: str, the metric named in shape errors. Defaults to `"metric"`.
        mask_index: int >= 0, the packed slot of an ignore mask (see
            `keras_seglosses._core.ignore_mask`), or `None`. Defaults to `None`.

    Returns:
        Tuple `(y_true, labels, P')` of float32 tensors: the whole packed
        target, its first C channels, and the binarized prediction; with
        `mask_index`, all three are 0 (background, no map value) at the
        ignored voxels.
    """
    y_true, labels, pred, mask = masked_binarize(y_true, y_pred, threshold, name, mask_index)
    if mask is None:
        return y_true, labels, pred
    return apply_mask(y_true, mask), labels * mask, pred * mask


def masked_binarize(y_true, y_pred, threshold, name, mask_index):
    """`binarize` without applying the mask: `(y_true, labels, P', mask)`,
    `mask` the counted voxels (`ignore_mask`, 0/1) `(batch, *spatial, C)` or `None`. For the
    metrics whose counts the masked labels alone do not restrict (true
    negatives)."""
    y_true, labels, y_pred = split_targets(y_true, y_pred, name)
    pred = ops.cast(ops.cast(y_pred, "float32") > threshold, "float32")
    return y_true, labels, pred, ignore_mask(y_true, pred.shape[-1], mask_index, name)


def ratio_or_one(numerator, denominator):
    """`numerator / denominator`, and 1 where the denominator is 0.

    A zero denominator of Dice or RPD means both masks are empty, which
    scores perfectly (SPEC.md Sec. 5). Both branches are computed, so the
    division is safe under `jit` and its gradient finite.

    Args:
        numerator: float tensor.
        denominator: float tensor of the same shape, >= 0.

    Returns:
        Float tensor of the same shape.
    """
    safe = ops.where(denominator > 0, denominator, 1.0)
    return ops.where(denominator > 0, numerator / safe, 1.0)


class SegMetric(keras.metrics.MeanMetricWrapper):
    """Base of the package's metrics: the mean over samples (and channels)
    of a functional form, its hyperparameters stated once.

    A subclass validates its arguments in `__init__` and passes them to
    `super().__init__(fn, name=..., dtype=..., **hyperparameters)`, with `fn`
    a function of `keras_seglosses.metrics.functional` returning
    `(batch, C)`. Each hyperparameter is stored as an attribute of the same
    name, and `get_config` is `name`, `dtype` and the hyperparameters, as
    plain Python values.

    A subclass sets the class attribute `_direction` to `"up"` (higher is
    better) or `"down"`: with `mode="auto"`, Keras' `EarlyStopping`,
    `ModelCheckpoint` and `ReduceLROnPlateau` read that attribute of the
    monitored metric. The base leaves it unset on purpose: Keras takes any
    value but `"up"` for `"down"`, while a missing one makes it raise, so a
    subclass that forgets fails loudly instead of being minimized.

    A metric that reads a packed map sets the class attribute `map_kind`
    and takes `map_index`; `map_reads` then declares it (one slot), as the
    losses do (`targets.map_reads`).

    Every metric takes `mask_index`, the packed slot of an ignore mask (1
    counts, 0 is ignored; nnU-Net's ignore label), or `None`: its
    functional form leaves the ignored voxels out (see each metric), and
    `map_reads` declares the mask after the metric's own map. It must
    differ from `map_index`.

    A metric built with the hyperparameter `empty="nan"` (its functional
    form then returns NaN for an undefined value, e.g. a sensitivity
    without ground truth) averages the defined values only, as MONAI's
    `ignore_empty`/`not_nans` do: a sample's value is the mean of its
    defined channels, a sample with none is left out of the mean, and the
    variable `excluded` counts the (sample, channel) values left out since
    the last `reset_state`. The result is 0 while nothing was defined.

    `include_background=False` leaves channel 0 out of the mean when there
    are several channels (MONAI's `include_background`); it is every
    metric's argument, not `fn`'s.

    Args:
        fn: callable `fn(y_true, y_pred, **hyperparameters) -> (batch, C)`.
        name: str, the metric's name.
        dtype: the dtype of the metric's result, as `keras.metrics.Metric`.
        include_background: bool. Defaults to `True`.
        **hyperparameters: keyword arguments of `fn`.
    """

    def __init__(self, fn, *, name, dtype, include_background=True, **hyperparameters):
        if "mask_index" in hyperparameters:
            hyperparameters["mask_index"] = check_mask_slot(
                hyperparameters["mask_index"], hyperparameters.get("map_index"))
        super().__init__(fn=fn, name=name, dtype=dtype, **hyperparameters)
        for key, value in hyperparameters.items():
            setattr(self, key, value)
        self.include_background = bool(include_background)
        self._per_channel = fn
        self._skips_undefined = hyperparameters.get("empty") == "nan"
        if self._skips_undefined:
            self.excluded = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                              name="excluded")

    map_kind = None

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = ops.cast(self._per_channel(y_true, y_pred, **self._fn_kwargs), "float32")
        if not self.include_background and values.shape[-1] > 1:
            values = values[..., 1:]
        if not self._skips_undefined:
            return keras.metrics.Mean.update_state(self, ops.mean(values, axis=-1),
                                                   sample_weight=sample_weight)
        defined = ops.cast(ops.logical_not(ops.isnan(values)), "float32")
        n = ops.sum(defined, axis=-1)
        per_sample = ops.sum(ops.where(defined > 0, values, 0.0), axis=-1) / ops.maximum(n, 1.0)
        weight = ops.cast(n > 0, "float32")
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), ops.shape(weight))
        self.excluded.assign_add(ops.sum(1.0 - defined))
        return keras.metrics.Mean.update_state(self, per_sample, sample_weight=weight)

    def reset_state(self):
        super().reset_state()
        if self._skips_undefined:
            self.excluded.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, **self._fn_kwargs,
                "include_background": self.include_background}

    def map_reads(self, n_classes=None):
        """The packed maps `update_state` reads: `MapRead(map_kind,
        map_index, 1)` (the map takes one slot whatever `n_classes`, the
        channels of `y_pred`), then `MapRead("mask", mask_index, 1)` with an
        ignore mask; `()` for a metric of the labels only."""
        reads = () if self.map_kind is None else (MapRead(self.map_kind, self.map_index, 1),)
        return reads + mask_reads(self._fn_kwargs.get("mask_index"))
