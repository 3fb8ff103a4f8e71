"""Distribution-based losses of the Loss odyssey: cross entropy and its
weighted, TopK, focal and distance-penalized variants [004, Sec. 2.1].

Every loss is written once over "expanded classes": a softmax prediction
(one-hot labels, C > 1) has its C classes; a sigmoid prediction (C == 1, or
`multi_label=True`) has, per channel, a background class `1 - s` and a
foreground class `s`. The per-voxel cross entropy is the sum over classes for
softmax and the mean over channels for sigmoid channels, so a single sigmoid
channel gives the usual binary cross entropy and multi-label predictions
`keras.losses.binary_crossentropy`.

An ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`) that
differs between the channels of a voxel: softmax classes are coupled (a
voxel's cross entropy sums over them, and a softmax of logits ties them
together), so a voxel counts only where every channel counts; sigmoid
channels are independent, so the means run over the counted (voxel,
channel) entries. TopK ranks whole voxels, so with sigmoid channels too a
voxel is a candidate only where every channel counts.
"""

import math

import keras
from keras import ops

from keras_seglosses._core import (
    SegLoss,
    check_map_index,
    check_number,
    register,
    spatial_axes,
    voxel_sum,
    voxel_weight,
)
from keras_seglosses.losses._common import (
    _check_weights,
    _masked_mean,
    _side_weights,
    _sides,
    _voxel_values,
    boundary_distance,
)
from keras_seglosses.ops.distance import spacing_argument
from keras_seglosses.ops.order import search_bits
from keras_seglosses.targets import packed_or_computed

__all__ = [
    "cross_entropy",
    "weighted_cross_entropy",
    "top_k",
    "focal",
    "distance_penalized_cross_entropy",
    "dpce_penalty_map",
    "CrossEntropy",
    "WeightedCrossEntropy",
    "TopK",
    "Focal",
    "DistancePenalizedCrossEntropy",
]


# ------------------------------------------------------------------ functions
def cross_entropy(y_true, y_pred, *, from_logits=False, multi_label=False, mask_index=None):
    """Per-sample cross entropy [004, Eq. 1].

    `-(1/N) sum_i sum_c g_i^c log s_i^c` over the N voxels of a sample
    (the counted voxels, with an ignore mask at slot `mask_index`).

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, sides, sigmoid, mask = _sides(
        y_true, y_pred, from_logits, multi_label, "CrossEntropy", mask_index)
    return _masked_mean([-g * log_s for g, _, log_s in sides], sigmoid, mask)


def weighted_cross_entropy(
    y_true, y_pred, *, class_weights, from_logits=False, multi_label=False, mask_index=None
):
    """Per-sample weighted cross entropy [004, Eq. 2].

    `-(1/N) sum_i sum_c w_c g_i^c log s_i^c`; `class_weights` is
    `(w_background, w_foreground)` for sigmoid channels, one weight per class
    for softmax.

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, sides, sigmoid, mask = _sides(
        y_true, y_pred, from_logits, multi_label, "WeightedCrossEntropy", mask_index
    )
    weights = _side_weights(class_weights, sides, sigmoid, "class_weights")
    terms = [-w * g * log_s for w, (g, _, log_s) in zip(weights, sides)]
    return _masked_mean(terms, sigmoid, mask)


def _pooled(value, like):
    """One batch-wide value repeated per sample (Keras' mean keeps it)."""
    return ops.broadcast_to(value, ops.shape(like)[:1])


def _total(x):
    """Sum of every element, through `voxel_sum` (fast under XLA on CPU)."""
    return ops.sum(voxel_sum(x))


# Counts and sums over the voxels of the batch run as matrix-vector products
# over blocks of this many values: XLA on CPU vectorizes those, unlike
# reductions of comparisons. A block's count (at most 128) fits in 8 bits,
# so one product counts three thresholds at once, exactly in float32:
# `1 * n_1 + 256 * n_2 + 65536 * n_3 < 2^24`.
_BLOCK = 128
_FIELD = 256


def _top_k_mean(values, k, n_counted=None):
    """Mean of the `ceil(k% * n)` largest of the non-negative 1-D `values`.

    With `tau` the exact `count`-th largest value, the top values are those
    above `tau` plus `count - #{values > tau}` copies of `tau`; the values
    tied at `tau` share that weight equally (a subgradient; the same value).
    `n_counted` (a tensor) replaces n, the length of `values`, when only
    that many are candidates (the others are -1).
    """
    n = values.shape[0]
    if n_counted is not None:
        count = ops.maximum(ops.ceil(k / 100.0 * n_counted), 1.0)
    if n is None:  # unknown batch size, e.g. a tf.data pipeline without drop_remainder
        if n_counted is None:
            count = ops.maximum(
                ops.ceil(k / 100.0 * ops.cast(ops.shape(values)[0], "float32")), 1.0)

        def partial_sums(x):
            return x
    else:
        if n_counted is None:
            count = float(max(1, math.ceil(k / 100.0 * n)))
        # -1 is below every threshold (they are >= 0) and gets no weight
        values = ops.pad(values, [(0, -n % _BLOCK)], constant_values=-1.0)
        values = ops.reshape(values, (-1, _BLOCK))
        ones = ops.ones((_BLOCK,), "float32")

        def partial_sums(x):
            return ops.matmul(x, ones)

    def count_at_least(x, t1, t2, t3):
        if n is None:
            return [ops.sum(ops.cast(x >= t, "int32")) for t in (t1, t2, t3)]
        packed = (
            ops.cast(x >= t1, "float32")
            + ops.where(x >= t2, float(_FIELD), 0.0)
            + ops.where(x >= t3, float(_FIELD * _FIELD), 0.0)
        )
        fields = ops.cast(partial_sums(packed), "int32")
        return [
            ops.sum(fields % _FIELD),
            ops.sum((fields // _FIELD) % _FIELD),
            ops.sum(fields // (_FIELD * _FIELD)),
        ]

    frozen = ops.stop_gradient(values)
    if keras.backend.backend() == "torch" and n_counted is None:
        # torch's native top-k is fast, and eager loops are not
        tau = ops.min(ops.top_k(ops.reshape(frozen, (-1,)), int(count), sorted=False)[0])
    elif keras.backend.backend() == "torch":
        # a count known only at run time: the count-th largest after a sort
        flat = ops.sort(ops.reshape(frozen, (-1,)))
        tau = ops.take(flat, ops.cast(ops.shape(flat)[0] - ops.cast(count, "int32"), "int32"))
    else:
        # the largest float tau with #{values >= tau} >= count, which is the
        # exact count-th largest value
        needed = ops.cast(count, "int32")

        def enough(cuts, x):
            floats = (ops.view(c, "float32") for c in cuts)
            return [reached >= needed for reached in count_at_least(x, *floats)]

        # four ways: `count_at_least` counts its three cuts in one product
        bits, frozen = search_bits(enough, carry=frozen, ways=4)
        tau = ops.view(bits, "float32")
    # the next float above tau (`ops.nextafter` rounds through float64 on TF)
    after = ops.view(ops.view(tau, "int32") + 1, "float32")
    reached, above, _ = count_at_least(frozen, tau, after, tau)
    share = ops.divide_no_nan(
        count - ops.cast(above, "float32"), ops.cast(reached - above, "float32")
    )
    weights = ops.where(frozen > tau, 1.0, ops.where(frozen == tau, share, 0.0))
    return ops.sum(partial_sums(values * ops.stop_gradient(weights))) / count


def top_k(
    y_true, y_pred, *, k=10.0, threshold=None, from_logits=False, multi_label=False,
    mask_index=None,
):
    """TopK cross entropy over the whole mini-batch [004, Eq. 3-4].

    Percentage variant (`threshold=None`): the mean per-voxel cross entropy of
    the `ceil(k% * voxels)` worst voxels of the batch. Threshold variant: the
    mean of `-log s_i^c` over the (voxel, true class) pairs with
    `s_i^c < threshold`; 0 when there are none. With an ignore mask (slot
    `mask_index`) only counted voxels (every channel counted) are
    candidates, and the percentage is of the counted voxels; the threshold
    variant counts the pairs whose channel counts.

    Returns:
        Tensor of shape `(batch,)`, the batch value repeated.
    """
    _, sides, sigmoid, mask = _sides(y_true, y_pred, from_logits, multi_label, "TopK",
                                     mask_index)
    like = sides[0][1]
    if threshold is not None:
        total, count = 0.0, 0.0
        for g, s, log_s in sides:
            hard = g * ops.cast(s < threshold, "float32")
            if mask is not None:
                hard = hard * mask
            total = total + _total(-hard * log_s)
            count = count + _total(hard)
        return _pooled(ops.divide_no_nan(total, count), like)
    ce = ops.reshape(_voxel_values([-g * log_s for g, _, log_s in sides], sigmoid), (-1,))
    if mask is None:
        return _pooled(_top_k_mean(ce, k), like)
    counted = ops.reshape(voxel_weight(mask), (-1,)) > 0
    # -1 is below every cross entropy: an ignored voxel is never among the top
    ce = ops.where(counted, ce, -1.0)
    n = _total(ops.cast(counted, "float32"))
    return _pooled(ops.where(n > 0, _top_k_mean(ce, k, n), 0.0), like)


def focal(
    y_true, y_pred, *, gamma=2.0, alpha=None, from_logits=False, multi_label=False,
    mask_index=None,
):
    """Per-sample focal loss [004, Eq. 5].

    `-(1/N) sum_i sum_c a_c (1 - s_i^c)^gamma g_i^c log s_i^c`, with `a_c`
    from `alpha` (`alpha` for the foreground and `1 - alpha` for the
    background of sigmoid channels, one weight per class for softmax) or 1.

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, sides, sigmoid, mask = _sides(y_true, y_pred, from_logits, multi_label, "Focal",
                                     mask_index)
    # (1 - s) can be a tiny negative through float error; gamma may be < 1.
    terms = [
        -ops.power(ops.maximum(1.0 - s, 0.0), gamma) * g * log_s for g, s, log_s in sides
    ]
    if alpha is not None:
        if isinstance(alpha, (int, float)):
            if not sigmoid:
                raise ValueError(
                    "Invalid value for argument `alpha`. A single number is the "
                    "foreground weight of sigmoid predictions; softmax "
                    "predictions need one weight per class. Received: "
                    f"alpha={alpha!r} with {sides[0][0].shape[-1]} softmax classes."
                )
            alpha = (1.0 - alpha, alpha)
        weights = _side_weights(alpha, sides, sigmoid, "alpha")
        terms = [w * t for w, t in zip(weights, terms)]
    return _masked_mean(terms, sigmoid, mask)


def dpce_penalty_map(labels, spacing=None):
    """The distance penalty D of DPCE, from labels (keras.ops, no gradient).

    Per sample and channel: inside the mask `1 - d_in / max d_in`, outside
    `1 - d_out / max d_out`, with `d_in` the distance of a mask voxel to the
    nearest non-mask voxel and `d_out` that of a background voxel to the mask
    (the "inverse of the distance transform" of Caliva et al.: 1 next to the
    boundary, 0 at the farthest voxel). An empty or full mask gives 0.

    Args:
        labels: tensor `(batch, *spatial, C)`, 2 or 3 spatial axes.
        spacing: voxel size, a number or one per spatial axis. Defaults to
            `None` (1).

    Returns:
        float32 tensor of the same shape.
    """
    labels = ops.cast(labels, "float32")
    d = boundary_distance(labels, spacing)
    inside = labels > 0.5
    axes = spatial_axes(labels)
    zero = ops.zeros_like(d)
    max_in = ops.max(ops.where(inside, d, zero), axis=axes, keepdims=True)
    max_out = ops.max(ops.where(inside, zero, d), axis=axes, keepdims=True)
    scale = ops.where(inside, max_in, max_out)
    return ops.stop_gradient(ops.where(scale > 0, 1.0 - ops.divide_no_nan(d, scale), 0.0))


def distance_penalized_cross_entropy(
    y_true, y_pred, *, from_logits=False, multi_label=False, map_index=None, spacing=None,
    mask_index=None,
):
    """Per-sample distance-map penalized cross entropy [004, Eq. 6].

    `-(1/N) sum_i sum_c (1 + D_i^c) g_i^c log s_i^c` with D from
    `dpce_penalty_map`, computed from the labels when `map_index` is None,
    else read from packed map slot `map_index`. With an ignore mask (slot
    `mask_index`) D is computed from the masked labels (ignored voxels are
    background) and the mean runs over the counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    y_true, sides, sigmoid, mask = _sides(
        y_true, y_pred, from_logits, multi_label, "DistancePenalizedCrossEntropy", mask_index
    )
    c = sides[0][0].shape[-1]
    penalty = packed_or_computed(
        y_true, c, map_index, lambda: dpce_penalty_map(y_true[..., :c], spacing),
        "DistancePenalizedCrossEntropy", "DPCE penalty map",
    )
    weight = 1.0 + penalty
    return _masked_mean([-weight * g * log_s for g, _, log_s in sides], sigmoid, mask)


# -------------------------------------------------------------------- classes
class _DistributionLoss(SegLoss):
    """The arguments every cross-entropy loss shares, validated once."""

    def __init__(self, fn, from_logits, multi_label, reduction, name, dtype, **kwargs):
        super().__init__(
            fn, reduction=reduction, name=name, dtype=dtype, from_logits=bool(from_logits),
            multi_label=bool(multi_label), **kwargs,
        )


@register
class CrossEntropy(_DistributionLoss):
    """Cross entropy for segmentation.

    `CE = -(1/N) sum_i sum_c g_i^c log s_i^c` over the N voxels of a sample;
    sigmoid channels count their background `1 - s` as a class (binary cross
    entropy, averaged over channels).

    Args:
        from_logits: bool; sigmoid for one channel (or `multi_label`),
            softmax for several. Defaults to `False`.
        multi_label: bool; treat every channel as an independent sigmoid
            output. Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[0.5], [0.5]]])
    >>> round(float(CrossEntropy()(y, p)), 4)
    0.6931

    Reference:
        Ma et al., Loss odyssey [004, Eq. 1].
    """


    def __init__(
        self,
        from_logits=False,
        multi_label=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="cross_entropy",
        dtype=None,
    ):
        super().__init__(cross_entropy, from_logits, multi_label, reduction, name, dtype,
                         mask_index=mask_index)


@register
class WeightedCrossEntropy(_DistributionLoss):
    """Class-weighted cross entropy.

    `WCE = -(1/N) sum_i sum_c w_c g_i^c log s_i^c`. The review sets `w_c` to
    the reciprocal of the class frequency in the training set.

    Args:
        class_weights: list of floats >= 0: `(w_background, w_foreground)`
            for sigmoid channels, one weight per class for softmax.
        from_logits: bool. Defaults to `False`.
        multi_label: bool, independent sigmoid channels. Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[0.5], [0.5]]])
    >>> round(float(WeightedCrossEntropy((1.0, 3.0))(y, p)), 4)
    1.3863

    Reference:
        Ma et al., Loss odyssey [004, Eq. 2].
    """


    def __init__(
        self,
        class_weights,
        from_logits=False,
        multi_label=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="weighted_cross_entropy",
        dtype=None,
    ):
        super().__init__(
            weighted_cross_entropy, from_logits, multi_label, reduction, name, dtype,
            mask_index=mask_index,
            class_weights=_check_weights("class_weights", class_weights),
        )


@register
class TopK(_DistributionLoss):
    """TopK cross entropy: the hardest voxels of the mini-batch only.

    Percentage variant (default): the mean per-voxel cross entropy of the
    `ceil(k% * n)` worst of the n voxels of the whole batch (Eq. 4, k = 10
    is the review's default). Threshold variant (`threshold=t`): the mean of
    `-log s_i^c` over voxels whose true-class probability is below t (Eq. 3).
    Both are batch-wide, so every sample carries the same value.

    The k-th largest voxel loss is found exactly without sorting (XLA sorts
    slowly on CPU): a 16-pass search over the bit patterns of the float
    losses. Voxels tied with it share the weight of the places it fills.

    Args:
        k: float in (0, 100], the percentage of voxels kept. Defaults to `10`.
        threshold: float in (0, 1] or `None` (percentage variant). Defaults
            to `None`.
        from_logits: bool. Defaults to `False`.
        multi_label: bool, independent sigmoid channels. Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): `(batch,)`, the batch value repeated.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0], [1.0], [0.0]]])
    >>> p = np.array([[[0.9], [0.1], [0.5], [0.1]]])
    >>> round(float(TopK(k=25)(y, p)), 4)
    0.6931

    Reference:
        Ma et al., Loss odyssey [004, Eq. 3-4].
    """


    def __init__(
        self,
        k=10,
        threshold=None,
        from_logits=False,
        multi_label=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="top_k",
        dtype=None,
    ):
        if threshold is not None:
            threshold = float(check_number("threshold", threshold, 0, 1, low_open=True))
        super().__init__(
            top_k, from_logits, multi_label, reduction, name, dtype, mask_index=mask_index,
            k=float(check_number("k", k, low=0, high=100, low_open=True)),
            threshold=threshold,
        )


@register
class Focal(_DistributionLoss):
    """Focal loss: cross entropy down-weighting well-classified voxels.

    `FL = -(1/N) sum_i sum_c a_c (1 - s_i^c)^gamma g_i^c log s_i^c`;
    `gamma = 0` and no `alpha` give the cross entropy.

    Args:
        gamma: float >= 0, the focusing parameter. Defaults to `2.0`.
        alpha: `None` (no class weights), a float in [0, 1] (foreground
            weight of sigmoid channels, background gets `1 - alpha`), or a list
            of weights: `(w_background, w_foreground)` for sigmoid, one per
            class for softmax. Defaults to `None`.
        from_logits: bool. Defaults to `False`.
        multi_label: bool, independent sigmoid channels. Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[1.0], [0.0]]]); p = np.array([[[0.5], [0.5]]])
    >>> round(float(Focal()(y, p)), 4)
    0.1733

    Reference:
        Ma et al., Loss odyssey [004, Eq. 5].
    """


    def __init__(
        self,
        gamma=2.0,
        alpha=None,
        from_logits=False,
        multi_label=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="focal",
        dtype=None,
    ):
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            alpha = float(check_number("alpha", alpha, low=0, high=1))
        elif alpha is not None:
            alpha = _check_weights("alpha", alpha)
        super().__init__(
            focal, from_logits, multi_label, reduction, name, dtype, mask_index=mask_index,
            gamma=float(check_number("gamma", gamma, low=0)), alpha=alpha,
        )


@register
class DistancePenalizedCrossEntropy(_DistributionLoss):
    """Distance-map penalized cross entropy (DPCE).

    `DPCE = -(1/N) sum_i sum_c (1 + D_i^c) g_i^c log s_i^c`, D the inverted,
    per-sample normalized distance transform of the ground truth
    (`dpce_penalty_map`): voxels next to a boundary weigh up to twice as much.
    D is computed from the labels with the package's distance transform by
    default; to precompute it, pack it (`pack_targets(labels, D)`) and say
    where (`map_index=0`). No gradient flows through it.

    Args:
        from_logits: bool. Defaults to `False`.
        multi_label: bool, independent sigmoid channels. Defaults to `False`.
        map_index: `None` (compute D) or int >= 0, the packed slot that
            holds it (map kind `"dpce"`). Defaults to `None`.
        spacing: voxel size (a number or one per spatial axis) for computed
            maps. Defaults to `None` (1).
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`).
            Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 1, 6, 1)); y[0, 0, 1:5] = 1
    >>> p = np.full((1, 1, 6, 1), 0.5)
    >>> round(float(DistancePenalizedCrossEntropy()(y, p)), 4)
    0.8087

    Reference:
        Ma et al., Loss odyssey [004, Eq. 6]; Caliva et al., 2019.
    """


    map_kind = "dpce"

    def __init__(
        self,
        from_logits=False,
        multi_label=False,
        map_index=None,
        spacing=None,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="distance_penalized_cross_entropy",
        dtype=None,
    ):
        super().__init__(
            distance_penalized_cross_entropy, from_logits, multi_label, reduction, name,
            dtype, mask_index=mask_index, map_index=check_map_index(map_index),
            spacing=spacing_argument(spacing),
        )
