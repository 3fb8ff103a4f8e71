"""Helpers that several loss families share (each family module imports
from here, never from another family's module)."""

import math

import keras
from keras import ops

from keras_seglosses._core import apply_mask, ignore_mask, per_channel, prepare, voxel_mean
from keras_seglosses.ops.distance import signed_distance


# ------------------------------------------------------------- distance maps
def signed_distance_map(labels, spacing=None):
    """The signed distance `phi_G` of every channel, the map of `Boundary`.

    Per sample and channel, `keras_seglosses.ops.signed_distance` of the
    mask `labels > 0.5`: minus the distance to the background inside, the
    distance to the mask outside, 0 for an empty or full mask. Precompute it
    to pack it: `pack_targets(labels, signed_distance_map(labels))`.

    Args:
        labels: tensor `(batch, *spatial, C)`, 2 or 3 spatial axes.
        spacing: voxel size, a number or one per spatial axis. Defaults to
            `None` (1).

    Returns:
        float32 tensor of the same shape, without gradient.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 1, 4, 1)); y[0, 0, 1:3] = 1
    >>> np.asarray(signed_distance_map(y))[0, 0, :, 0].tolist()
    [1.0, -1.0, -1.0, 1.0]
    """
    return per_channel(lambda mask: signed_distance(mask, spacing), labels)


def boundary_distance(x, spacing=None):
    """`|signed distance|` per channel: inside a mask the distance to the
    nearest background voxel, outside the distance to the nearest mask voxel,
    0 for an empty or full mask (`x > 0.5` is the mask)."""
    return ops.abs(signed_distance_map(x, spacing))


# ------------------------------------------------------------ cross entropy
def _sides(y_true, y_pred, from_logits, multi_label, name, mask_index=None):
    """Labels, probabilities and log-probabilities of the expanded classes.

    Returns `(y_true, sides, sigmoid, mask)`. `sides` is a list of
    `(g, s, log_s)` triples of shape `(batch, *spatial, C)`: one for softmax
    (the C classes), two for sigmoid channels (background `1 - s`,
    foreground `s`), kept apart rather than concatenated to save memory
    traffic. `mask` is the ignore mask (`ignore_mask`) or None; `y_true` is
    then zero at ignored voxels (maps computed from it treat them as
    background), but the sides are not: a background side would turn a
    zeroed voxel into a confident one, so the callers weight each voxel's
    terms by the mask instead (`_masked_mean`). The mask of sigmoid channels
    is per channel; that of softmax classes the per-voxel minimum, as their
    cross entropy sums over the classes of a voxel.
    """
    # without `from_logits`, `prepare` only casts: these are the raw outputs
    y_true, labels, logits = prepare(y_true, y_pred, False, name)
    sigmoid = multi_label or logits.shape[-1] == 1
    mask = ignore_mask(y_true, logits.shape[-1], mask_index, name, coupled=not sigmoid)
    if mask is not None:
        y_true, labels = apply_mask(y_true, mask), labels * mask
    return (y_true, *_expand(labels, logits, from_logits, multi_label), mask)


def _expand(labels, logits, from_logits, multi_label):
    sigmoid = multi_label or logits.shape[-1] == 1
    eps = keras.config.epsilon()
    if sigmoid:
        if from_logits:
            s = ops.sigmoid(logits)
            log_fg, log_bg = ops.log_sigmoid(logits), ops.log_sigmoid(-logits)
        else:
            s = logits
            clipped = ops.clip(logits, eps, 1.0 - eps)
            log_fg, log_bg = ops.log(clipped), ops.log(1.0 - clipped)
        return [(1.0 - labels, 1.0 - s, log_bg), (labels, s, log_fg)], True
    if from_logits:
        probs, log_s = ops.softmax(logits, axis=-1), ops.log_softmax(logits, axis=-1)
    else:
        probs, log_s = logits, ops.log(ops.clip(logits, eps, 1.0 - eps))
    return [(labels, probs, log_s)], False


def _voxel_values(terms, sigmoid):
    """Per-voxel loss from per-side terms: the sum over classes for softmax,
    the mean over channels of background + foreground terms for sigmoid."""
    total = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    if sigmoid:
        return ops.mean(total, axis=-1)
    return ops.sum(total, axis=-1)


def _masked_mean(terms, sigmoid, mask):
    """Per-sample mean of the per-voxel loss of `terms` (`_voxel_values`)
    over the counted voxels (all without `mask`). Sigmoid channels are
    independent, so there the mean runs over the counted (voxel, channel)
    entries, which for a mask that is the same in every channel is the
    mean over counted voxels of the mean over channels."""
    if sigmoid and mask is not None:
        return voxel_mean(terms[0] + terms[1], mask)
    return voxel_mean(_voxel_values(terms, sigmoid), mask)


def _side_weights(weights, sides, sigmoid, name):
    """One weight (sigmoid: a number per side) or weight vector (softmax:
    one per class) for each side."""
    weights = [float(w) for w in weights]
    n_channels = sides[0][0].shape[-1]
    if sigmoid:
        if len(weights) != 2:
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected "
                "(w_background, w_foreground) for sigmoid predictions. "
                f"Received: {name}={tuple(weights)}"
            )
        return weights
    if len(weights) != n_channels:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one weight per "
            f"class ({n_channels}) for softmax predictions. "
            f"Received: {name}={tuple(weights)}"
        )
    return [ops.convert_to_tensor(weights, "float32")]


def _check_weights(name, weights, allow_none=False):
    if weights is None and allow_none:
        return None
    ok = isinstance(weights, (list, tuple)) and len(weights) > 0
    if ok:
        try:
            ok = all(float(w) >= 0 and math.isfinite(float(w)) for w in weights)
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a non-empty list of "
            "finite numbers >= 0 ((w_background, w_foreground) for sigmoid "
            f"predictions, one per class for softmax). Received: {name}={weights!r}"
        )
    return [float(w) for w in weights]


# ------------------------------------------------------------------- powers
def _safe_power(x, exponent):
    """`x ** exponent` for x >= 0 with a zero (not NaN/inf) gradient at x = 0
    when exponent < 1.

    Written as `exp(exponent * log x)`: the backward pass then reuses the
    forward exponential instead of evaluating a second power, which halves
    the transcendental work of per-voxel uses (`ExpLog`).
    """
    positive = x > 0
    safe = ops.where(positive, x, 1.0)
    return ops.where(positive, ops.exp(exponent * ops.log(safe)), 0.0)
