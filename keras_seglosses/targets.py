"""Target packing: labels and per-voxel maps travel together in `y_true`.

Keras hands a loss exactly two tensors, `y_true` and `y_pred`. Losses such as
the Reward-Penalty Dice loss need a third per-voxel tensor (the reward-penalty
map M); boundary and region-wise losses can use precomputed distance maps. We
concatenate them on the channel axis after the labels:

    y_true[..., 0:C]        labels (binary or one-hot), C = channels of y_pred
    y_true[..., C:2C]       first map
    y_true[..., 2C:3C]      second map, ...

The functions of this module (`pack_targets`, `unpack_targets` and the
readers the losses use) are the only places that know the layout.
"""

import numpy as np
from keras import ops

__all__ = ["pack_targets", "unpack_targets"]


def _channels(x):
    shape = tuple(getattr(x, "shape", np.shape(x)))
    if len(shape) < 2:
        raise ValueError(
            "Targets must have a batch axis, spatial axes and a channel axis "
            f"(channels_last). Received a tensor of shape {shape}."
        )
    return shape


def pack_targets(labels, *maps):
    """Concatenate labels and per-voxel maps on the channel axis.

    Args:
        labels: array of shape `(batch, *spatial, C)`, binary or one-hot.
        *maps: any number of arrays of the same shape as `labels` (for example
            the reward-penalty map M). A map with one channel fewer in rank
            (`(batch, *spatial)`) is accepted when `C == 1`.

    Returns:
        A numpy array (for numpy inputs) or tensor of shape
        `(batch, *spatial, C * (1 + len(maps)))`, float32.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((2, 4, 4, 1)); m = np.ones((2, 4, 4, 1))
    >>> pack_targets(y, m).shape
    (2, 4, 4, 2)
    """
    shape = _channels(labels)
    parts = [labels]
    for i, m in enumerate(maps):
        mshape = tuple(getattr(m, "shape", np.shape(m)))
        if shape[-1] == 1 and mshape == shape[:-1]:
            m = m[..., None] if isinstance(m, np.ndarray) else ops.expand_dims(m, -1)
            mshape = shape
        if mshape != shape:
            raise ValueError(
                f"Invalid shape for map {i} passed to `pack_targets`. Expected "
                f"the shape of `labels`, {shape}. Received: {mshape}."
            )
        parts.append(m)
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate([np.asarray(p, np.float32) for p in parts], axis=-1)
    return ops.concatenate([ops.cast(p, "float32") for p in parts], axis=-1)


def n_packed_maps(y_true_shape, n_classes):
    """Number of maps packed after the labels, from static shapes."""
    total = y_true_shape[-1]
    if total is None or total < n_classes or total % n_classes:
        raise ValueError(
            "Invalid packed target. Expected the channel count of `y_true` to "
            f"be a multiple of the {n_classes} channel(s) of `y_pred` (labels "
            "first, then maps built with `keras_seglosses.pack_targets`). "
            f"Received: y_true.shape={tuple(y_true_shape)}."
        )
    return total // n_classes - 1


def packed_or_computed(y_true, n_classes, index, compute, channels=None):
    """Packed map number `index` of `y_true` when the static shape holds it
    (without gradient), else `compute()`.

    A map has `n_classes` channels, or `channels` (a two-channel map for one
    sigmoid channel fills two one-channel slots, from slot `index` on).
    """
    channels = n_classes if channels is None else channels
    start = (index + 1) * n_classes
    total = (n_packed_maps(tuple(y_true.shape), n_classes) + 1) * n_classes
    if total >= start + channels:
        return ops.stop_gradient(y_true[..., start : start + channels])
    return compute()


def unpack_targets(y_true, n_classes):
    """Split a packed `y_true` into labels and a list of maps.

    Args:
        y_true: tensor of shape `(batch, *spatial, C * (1 + n_maps))`.
        n_classes: int, C, the number of channels of `y_pred`.

    Returns:
        Tuple `(labels, maps)`: labels of shape `(batch, *spatial, C)` and a
        list of `n_maps` tensors of the same shape.

    Example:

    >>> import numpy as np
    >>> labels, maps = unpack_targets(np.zeros((2, 4, 4, 3)), 1)
    >>> tuple(labels.shape), len(maps)
    ((2, 4, 4, 1), 2)
    """
    shape = _channels(y_true)
    n_maps = n_packed_maps(shape, n_classes)
    labels = y_true[..., :n_classes]
    maps = [
        y_true[..., (i + 1) * n_classes : (i + 2) * n_classes] for i in range(n_maps)
    ]
    return labels, maps


def _check_map(y_true, n_classes, index, loss_name, map_name):
    shape = _channels(y_true)
    n_maps = n_packed_maps(shape, n_classes)
    if n_maps <= index:
        raise ValueError(
            f"`{loss_name}` needs the {map_name} packed in `y_true` after the "
            f"labels: expected at least {(index + 2) * n_classes} channels "
            f"({n_classes} label channel(s) + {n_classes} per map), received "
            f"y_true.shape={tuple(shape)}. Build the target with "
            f"`keras_seglosses.pack_targets(labels, {map_name.replace(' ', '_')})`."
        )
    return (index + 1) * n_classes


def require_map(y_true, n_classes, index, loss_name, map_name):
    """Return packed map number `index`, or raise a `ValueError` explaining how
    to pack it."""
    start = _check_map(y_true, n_classes, index, loss_name, map_name)
    return y_true[..., start : start + n_classes]


def voxel_columns(x, batch):
    """The channels of `x` `(batch, *spatial, K)` as K flat voxel columns.

    Each column has shape `(batch * N,)` when `batch` is True (the sums pool
    the mini-batch) and `(batch, N)` otherwise, N the voxels of one sample.
    The whole tensor is flattened before the channels are taken apart: XLA
    on CPU reduces a strided column of a `(voxels, K)` matrix several times
    faster than a channel slice of the channels-last tensor, and for `K == 1`
    the column is a plain reshape (no slice, so torch's backward pass does
    not scatter its gradient into a zero tensor).
    """
    lead = (-1,) if batch else (ops.shape(x)[0], -1)
    if x.shape[-1] == 1:
        return [ops.reshape(x, lead)]
    flat = ops.reshape(x, lead + (x.shape[-1],))
    return [flat[..., k] for k in range(x.shape[-1])]


def require_map_columns(y_true, n_classes, index, batch, loss_name, map_name):
    """`(labels, map)` of a packed target as two lists of `n_classes` voxel
    columns (see `voxel_columns`); raises as `require_map` when the map is
    missing."""
    start = _check_map(y_true, n_classes, index, loss_name, map_name)
    columns = voxel_columns(y_true, batch)
    return columns[:n_classes], columns[start : start + n_classes]
