"""Shared pieces of every loss: input preparation, reductions, validation.

Every loss in this package follows the same convention (SPEC.md section 2):
channels_last tensors, `y_true` possibly packed with maps after the labels,
float32 math, and `call` returning one value per sample.
"""

import math
import numbers

import keras
from keras import ops

from keras_seglosses.targets import MapRead, n_packed_maps, require_map

# Losses and metrics are registered under different packages because some
# share a class name (the `Dice` loss and the `Dice` metric).
LOSSES_PACKAGE = "keras_seglosses"
METRICS_PACKAGE = "keras_seglosses.metrics"


def register(cls):
    """Register a public loss or layer so `.keras` files load without
    `custom_objects`."""
    return keras.saving.register_keras_serializable(package=LOSSES_PACKAGE)(cls)


def register_metric(cls):
    """Register a public metric (its own namespace, see above)."""
    return keras.saving.register_keras_serializable(package=METRICS_PACKAGE)(cls)


class SegLoss(keras.losses.Loss):
    """Base of the package's losses: a pure loss function and its
    hyperparameters, stated once (as Keras' `LossFunctionWrapper`).

    A subclass validates its arguments in `__init__` and passes them to
    `super().__init__(fn, reduction=..., name=..., dtype=..., **hyperparameters)`.
    `call` is `fn(y_true, y_pred, **hyperparameters)` (hyperparameters are
    keyword-only in the functions), `get_config` the Keras base config plus
    the hyperparameters, and each hyperparameter reads as an attribute
    (`Dice().smooth`).

    A loss that can read a packed map takes `map_index`: `None` computes the
    map, an int reads packed slot `map_index`. It declares the map's kind in
    `map_kind`, so that `map_reads` tells tools (`Compound`, `TargetLayout`,
    the command line) which slots it reads. `label_kind` names what the
    first C channels must hold: `"labels"`, or the released RPDL code's
    encoded target `"legacy"`.
    """

    map_kind = None
    label_kind = "labels"

    def __init__(self, fn, *, reduction, name, dtype, **hyperparameters):
        if "mask_index" in hyperparameters:
            hyperparameters["mask_index"] = check_mask_slot(
                hyperparameters["mask_index"], hyperparameters.get("map_index"))
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn = fn
        self._fn_kwargs = hyperparameters

    def __getattr__(self, name):
        # only reached when normal lookup fails; `__dict__` may not exist yet
        # while the object is being unpickled or copied
        kwargs = self.__dict__.get("_fn_kwargs", {})
        if name in kwargs:
            return kwargs[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        return {**super().get_config(), **self._fn_kwargs}

    def map_slots(self, n_classes):
        """How many packed slots this loss's map takes (one map of C channels
        is one slot)."""
        return 1

    def map_reads(self, n_classes=None):
        """The packed maps `call` reads: a tuple of `targets.MapRead`, empty
        when the loss reads the labels only or computes its map."""
        index = self._fn_kwargs.get("map_index")
        reads = ()
        if self.map_kind is not None and index is not None:
            reads = (MapRead(self.map_kind, index, self.map_slots(n_classes)),)
        return reads + mask_reads(self._fn_kwargs.get("mask_index"))


def mask_reads(mask_index):
    """`(MapRead("mask", mask_index, 1),)`, or `()` without a mask."""
    return () if mask_index is None else (MapRead("mask", mask_index, 1),)


def check_map_index(map_index, allow_none=True, name="map_index"):
    """Validate a `map_index` argument (or another slot argument `name`):
    `None` (compute the map, where the loss can) or an int >= 0, a packed
    slot."""
    if map_index is None and allow_none:
        return None
    return int(check_number(name, map_index, low=0, integer=True))


def check_mask_slot(mask_index, map_index=None):
    """Validate a `mask_index` (`None`, or a packed slot other than the one
    `map_index` reads) and return it."""
    if mask_index is None:
        return None
    mask_index = check_map_index(mask_index, allow_none=False, name="mask_index")
    if map_index is not None and mask_index == map_index:
        raise ValueError(
            "Invalid value for argument `mask_index`. Expected a packed slot other "
            f"than the map's (`map_index={map_index}`). Received: mask_index={mask_index}"
        )
    return mask_index


# --------------------------------------------------------------------- inputs
def check_shapes(y_true, y_pred, name):
    """Static shape checks shared by all losses and metrics.

    `y_true` and `y_pred` must have the same rank (>= 3: batch, spatial...,
    channels) and the same spatial shape; `y_true` must hold the C label
    channels of `y_pred` plus a whole number of C-channel maps.
    """
    ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
    if len(ps) < 3:
        raise ValueError(
            f"`{name}` expects channels_last predictions of shape "
            f"(batch, *spatial, channels). Received: y_pred.shape={ps}."
        )
    if len(ts) != len(ps):
        raise ValueError(
            f"`{name}`: `y_true` and `y_pred` must have the same rank "
            f"(batch, *spatial, channels). Received: y_true.shape={ts}, "
            f"y_pred.shape={ps}."
        )
    for a, b in zip(ts[:-1], ps[:-1]):
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"`{name}`: `y_true` and `y_pred` differ in batch or spatial "
                f"shape. Received: y_true.shape={ts}, y_pred.shape={ps}."
            )
    n_packed_maps(ts, ps[-1])


def probabilities(y_pred, from_logits):
    """float32 probabilities: sigmoid for one channel, softmax for several."""
    y_pred = ops.cast(y_pred, "float32")
    if not from_logits:
        return y_pred
    if y_pred.shape[-1] == 1:
        return ops.sigmoid(y_pred)
    return ops.softmax(y_pred, axis=-1)


def split_targets(y_true, y_pred, name):
    """Validate shapes, then return `(y_true, labels, y_pred)`: the whole
    packed target and its first C channels (the labels) in float32, and
    `y_pred` as a tensor (dtype unchanged)."""
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    check_shapes(y_true, y_pred, name)
    y_true = ops.cast(y_true, "float32")
    return y_true, y_true[..., : y_pred.shape[-1]], y_pred


def prepare(y_true, y_pred, from_logits, name, mask_index=None, return_mask=False):
    """Validate, then return `(y_true, labels, probs)`, all float32, and
    with `return_mask` the ignore mask too (`None` without `mask_index`).

    `y_true` is the whole packed target, `labels` its first C channels.
    With `mask_index` (see `ignore_mask`) all three are zero at ignored
    voxels, so that every sum over voxels leaves them out and neither their
    labels, maps nor predictions reach the value or the gradient; losses
    that average over voxels divide by the counted voxels instead
    (`voxel_mean(x, mask=...)`). A softmax (`from_logits` with C > 1)
    couples the channels of a voxel, so its mask is the per-voxel minimum
    (`ignore_mask(..., coupled=True)`).
    """
    y_true, labels, y_pred = split_targets(y_true, y_pred, name)
    probs = probabilities(y_pred, from_logits)
    c = probs.shape[-1]
    mask = ignore_mask(y_true, c, mask_index, name, coupled=softmax_couples(from_logits, c))
    if mask is not None:
        y_true, labels, probs = apply_mask(y_true, mask), labels * mask, probs * mask
    if return_mask:
        return y_true, labels, probs, mask
    return y_true, labels, probs


def softmax_couples(from_logits, n_classes):
    """Whether `probabilities` applies a softmax, which makes every class
    entry of a voxel depend on every logit of that voxel."""
    return bool(from_logits) and n_classes > 1


def ignore_mask(y_true, n_classes, mask_index, name, coupled=False):
    """The ignore mask packed at map slot `mask_index` (a voxel counts where
    it is above 0.5 and is ignored elsewhere; MONAI's `MaskedLoss` mask,
    nnU-Net's ignore label) as 0 and 1, float32
    `(batch, *spatial, C)` without gradient, or `None` when `mask_index` is
    `None`. A missing slot raises a `ValueError` that says how to pack it.

    The mask may differ between the channels of a voxel. The rule:

    - Independent channels (a sigmoid per class: probabilities with C > 1
      given to an overlap loss, cross entropies with `multi_label=True`):
      each channel masks its own class entry.
    - Coupled channels (`coupled=True`): a softmax that the loss applies
      (`from_logits=True` with C > 1), through which a counted class entry
      would pass gradient to the logit of an ignored one; and per-voxel
      terms over all classes (categorical cross entropy, TopK's ranking of
      voxels, the Wasserstein distance between class distributions). A
      voxel then counts only where every channel counts: the mask becomes
      its per-voxel minimum (`voxel_weight`) on all C channels. (Raising on
      a mask that differs between channels is no option: a compiled step
      cannot test tensor values.)

    Probabilities from a softmax outside the loss (`from_logits=False`,
    C > 1) are taken as independent channels: give them a mask that is the
    same in every channel (or give the loss logits), or the model's softmax
    carries the gradient of counted entries to the logits of ignored ones.
    """
    if mask_index is None:
        return None
    packed = require_map(y_true, n_classes, mask_index, name, "ignore mask", "mask_index")
    # binary, as the metrics' surfaces need: a soft weight would enter twice
    # where a masked input meets a masked mean
    mask = ops.cast(packed > 0.5, "float32")
    if coupled and n_classes > 1:
        mask = ops.repeat(voxel_weight(mask)[..., None], n_classes, axis=-1)
    return ops.stop_gradient(mask)


def apply_mask(x, mask):
    """`x` `(batch, *spatial, k C)` (a packed target, or any C-channel
    tensor) times `mask` `(batch, *spatial, C)` on every C-channel group."""
    groups = x.shape[-1] // mask.shape[-1]
    if groups == 1:
        return x * mask
    return x * ops.tile(mask, (1,) * (len(x.shape) - 1) + (groups,))


def voxel_weight(mask):
    """One weight per voxel, `(batch, *spatial)`, from a C-channel mask: its
    smallest channel (a voxel counts where every class counts)."""
    return mask[..., 0] if mask.shape[-1] == 1 else ops.min(mask, axis=-1)


def per_channel(fn, x):
    """Apply a batched op `fn: (n, *spatial) -> (n, *spatial)` (such as the
    distance transforms of `keras_seglosses.ops`) to every channel of `x`
    `(batch, *spatial, C)` in one call, by folding the channels into the
    batch axis; returns `(batch, *spatial, C)`."""
    spatial = tuple(x.shape[1:-1])
    c = x.shape[-1]
    rank = len(spatial)
    folded = ops.reshape(ops.transpose(x, (0, rank + 1, *range(1, rank + 1))), (-1, *spatial))
    out = ops.reshape(fn(folded), (-1, c, *spatial))
    return ops.transpose(out, (0, *range(2, rank + 2), 1))


# ----------------------------------------------------------------- reductions
def spatial_axes(x):
    """The axes between batch and channels, from the static rank."""
    return tuple(range(1, len(x.shape) - 1))


def region_sum(x, batch):
    """Sum over the spatial axes, and over the batch when `batch` is True.

    Returns shape `(batch, C)` for `batch=False`, `(C,)` for `batch=True`.
    """
    axes = spatial_axes(x)
    if batch:
        axes = (0,) + axes
    return ops.sum(x, axis=axes)


def voxel_dot(a, b):
    """`sum(a * b)` over the last axis of two voxel columns (see
    `targets.voxel_columns`): `(n,) -> ()` or `(batch, n) -> (batch,)`.

    XLA (TensorFlow, JAX) fuses the product into the reduction, and its
    reduction is more accurate than its dot product. Torch runs eagerly:
    for one long column `torch.dot` writes neither `a * b` nor a gradient
    buffer for it (about 2x faster there); for `(batch, n)` its batched
    contraction (`bmm`) is slower than multiply-and-sum.
    """
    if len(a.shape) == 1 and keras.backend.backend() == "torch":
        return ops.dot(a, b)
    return ops.sum(a * b, axis=-1)


def per_sample(values, like, batch, include_background=True):
    """Average per-class values over classes and give one value per sample.

    Args:
        values: `(batch, C)` (per-sample) or `(C,)` (pooled over the batch).
        like: a tensor whose first axis is the batch.
        batch: whether `values` were pooled over the batch; then the pooled
            value is repeated for every sample, so that Keras' mean reduction
            returns it and its gradient unchanged.
        include_background: when False and C > 1, channel 0 is left out.
    """
    if not include_background and values.shape[-1] > 1:
        values = values[..., 1:]
    values = ops.mean(values, axis=-1)
    if batch:
        values = ops.broadcast_to(values, ops.shape(like)[:1])
    return values


def voxel_sum(x):
    """Sum over every non-batch axis: `(batch, ...) -> (batch,)`.

    With a static non-batch shape the values are summed in blocks of 128 by
    a matrix-vector product with ones, then the block sums are added: XLA on
    CPU (JAX) runs logarithms fused into a reduction unvectorized, which made
    cross-entropy-like losses about 10x slower than their memory traffic; the
    product keeps the elementwise part in its own vectorized loop, and the
    short blocks keep the sum as accurate as a reduction.
    """
    n = 1
    for d in x.shape[1:]:
        if d is None:
            return ops.sum(x, axis=tuple(range(1, len(x.shape))))
        n *= d
    flat = ops.reshape(x, (-1, n))
    pad = -n % _SUM_BLOCK
    if pad:
        flat = ops.pad(flat, [(0, 0), (0, pad)])
    blocks = ops.reshape(flat, (-1, (n + pad) // _SUM_BLOCK, _SUM_BLOCK))
    return ops.sum(ops.matmul(blocks, ops.ones((_SUM_BLOCK,), dtype=x.dtype)), axis=1)


_SUM_BLOCK = 128


def voxel_mean(x, mask=None):
    """Mean over every non-batch axis: `(batch, ...) -> (batch,)` (computed
    as `voxel_sum`).

    With `mask` (a weight of `x`'s shape, or `(batch, *spatial, C)` for a
    per-voxel `x` `(batch, *spatial)`, see `voxel_weight`) the weighted mean
    `sum(mask x) / sum(mask)`: the mean over the counted voxels, 0 for a
    sample without any.
    """
    if mask is not None:
        if len(mask.shape) == len(x.shape) + 1:
            mask = voxel_weight(mask)
        return ops.divide_no_nan(voxel_sum(x * mask), voxel_sum(mask))
    shape = tuple(x.shape[1:])
    if None in shape:
        return ops.mean(x, axis=tuple(range(1, len(x.shape))))
    return voxel_sum(x) / float(math.prod(shape))


# ----------------------------------------------------------------- validation
def check_number(name, value, low=None, high=None, low_open=False, integer=False):
    """Validate a scalar hyperparameter in `__init__` with a Keras-style error."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = []
        if low is not None:
            bound.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bound.append(f"<= {high}")
        kind = "an integer" if integer else "a number"
        expected = f"{kind} {' and '.join(bound)}".strip()
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected {expected}. "
            f"Received: {name}={value!r}"
        )
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of "
            f"{sorted(choices)}. Received: {name}={value!r}"
        )
    return value
