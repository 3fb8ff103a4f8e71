"""Target packing: labels and per-voxel maps travel together in `y_true`.

Keras hands a loss exactly two tensors, `y_true` and `y_pred`. Losses such as
the Reward-Penalty Dice loss need a third per-voxel tensor (the reward-penalty
map M); boundary and region-wise losses can use precomputed distance maps. We
concatenate them on the channel axis after the labels:

    y_true[..., 0:C]        labels (binary or one-hot), C = channels of y_pred
    y_true[..., C:2C]       first map
    y_true[..., 2C:3C]      second map, ...

Slots are explicit: a loss or metric reads a packed map only where its
`map_index` says, and one that can compute its map (phi, RRW, DPCE, ...)
computes it unless told where it is packed. Each declares what it reads
(`map_reads`); `TargetLayout` puts names on the slots for users. This module
(`pack_targets`, `unpack_targets`, `TargetLayout` and the readers the
losses use) is the only code that knows the layout.
"""

import collections

import numpy as np
from keras import ops

__all__ = ["pack_targets", "unpack_targets", "MapRead", "map_reads", "TargetLayout"]


class MapRead(collections.namedtuple("MapRead", ("kind", "index", "slots"))):
    """One packed map that a loss or metric reads from `y_true`.

    Attributes:
        kind: str, what the map is (`"rpmap"`, `"phi"`, `"distance"`,
            `"dpce"`, `"rrw"`, `"rw_boundary"`, `"rw_ac"`, `"soft"`,
            `"consensus"`, `"mask"`).
        index: int >= 0, the first map slot it reads (slot k holds
            channels `(k + 1) C` to `(k + 2) C` of `y_true`).
        slots: int >= 1, how many consecutive slots it takes.
    """

    __slots__ = ()


def map_reads(obj, n_classes=None):
    """The packed maps `obj` (a loss or metric) reads, as a tuple of
    `MapRead`: what its `map_reads(n_classes)` declares, `()` for objects
    that declare nothing (Keras' own losses read the labels only).

    `n_classes` is the channel count of `y_pred` when known; a map whose
    width depends on it (the region-wise map of one sigmoid channel takes
    two slots) is given at its narrowest when it is `None`.
    """
    declared = getattr(obj, "map_reads", None)
    return tuple(declared(n_classes)) if callable(declared) else ()


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


class TargetLayout:
    """Names for the packed map slots of `y_true`.

    Tensors stay positional (labels, then maps of C channels each); the
    names live in Python. A layout lists the kinds of map in slot order,
    packs targets by name, and gives each loss its `map_index`.

    Args:
        kinds: sequence of distinct map kinds in slot order, for example
            `("rpmap", "phi")` (see `MapRead` for the kinds the library's
            losses and metrics read).
        slots: optional `{kind: n}` for maps that take n slots (the
            region-wise map of one sigmoid channel takes 2). Defaults to 1
            slot per kind.

    Example:

    >>> import numpy as np
    >>> layout = TargetLayout(("rpmap", "phi"))
    >>> layout.index("phi")
    1
    >>> y = np.zeros((2, 4, 4, 1)); m = np.ones((2, 4, 4, 1)); phi = -np.ones((2, 4, 4, 1))
    >>> layout.pack(y, rpmap=m, phi=phi).shape
    (2, 4, 4, 3)
    """

    def __init__(self, kinds, slots=None):
        kinds = tuple(kinds) if isinstance(kinds, (list, tuple)) else kinds
        if (not isinstance(kinds, tuple) or not all(isinstance(k, str) and k for k in kinds)
                or len(set(kinds)) != len(kinds)):
            raise ValueError(
                "Invalid value for argument `kinds`. Expected a sequence of distinct "
                f"non-empty strings. Received: kinds={kinds!r}"
            )
        slots = dict(slots or {})
        for kind, n in slots.items():
            if kind not in kinds or isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(
                    "Invalid value for argument `slots`. Expected {kind: int >= 1} "
                    f"for kinds among {list(kinds)}. Received: slots={slots!r}"
                )
        self.kinds = kinds
        self.slots = {k: slots.get(k, 1) for k in kinds}
        self._starts = {}
        start = 0
        for kind in kinds:
            self._starts[kind] = start
            start += self.slots[kind]
        self.n_slots = start

    def index(self, kind):
        """The first map slot of `kind`: the `map_index` of its reader."""
        if kind not in self._starts:
            raise ValueError(
                f"Invalid value for argument `kind`. Expected one of {list(self.kinds)}. "
                f"Received: kind={kind!r}"
            )
        return self._starts[kind]

    def pack(self, labels, **maps):
        """`pack_targets(labels, ...)` with the maps given by kind.

        Each map has the shape of `labels` times its slot count on the
        channel axis (`(batch, *spatial)` is accepted for one-slot maps
        when C is 1). Every kind of the layout must be given, no other.
        """
        missing = [k for k in self.kinds if k not in maps]
        unknown = [k for k in maps if k not in self.kinds]
        if missing or unknown:
            raise ValueError(
                f"Invalid maps passed to `TargetLayout.pack`. Expected exactly the "
                f"kinds {list(self.kinds)}. Missing: {missing}; unexpected: {unknown}."
            )
        shape = _channels(labels)
        parts = []
        for kind in self.kinds:
            m = maps[kind]
            n = self.slots[kind]
            mshape = tuple(getattr(m, "shape", np.shape(m)))
            if n > 1 and mshape != shape[:-1] + (n * shape[-1],):
                raise ValueError(
                    f"Invalid shape for map {kind!r} passed to `TargetLayout.pack`. "
                    f"Expected {shape[:-1] + (n * shape[-1],)} ({n} slots of "
                    f"{shape[-1]} channel(s)). Received: {mshape}."
                )
            if n > 1:
                c = shape[-1]
                parts += [m[..., i * c : (i + 1) * c] for i in range(n)]
            else:
                parts.append(m)
        return pack_targets(labels, *parts)

    def unpack(self, y_true, n_classes):
        """`(labels, {kind: map})` of a target packed with this layout."""
        labels, maps = unpack_targets(y_true, n_classes)
        if len(maps) != self.n_slots:
            raise ValueError(
                f"Invalid packed target for {self!r}: expected {self.n_slots} map "
                f"slot(s) of {n_classes} channel(s) after the labels, received "
                f"{len(maps)} (y_true.shape={tuple(y_true.shape)})."
            )
        out = {}
        for kind in self.kinds:
            i, n = self._starts[kind], self.slots[kind]
            out[kind] = maps[i] if n == 1 else ops.concatenate(maps[i : i + n], axis=-1)
        return labels, out

    def check(self, reader, n_classes=None):
        """Raise a `ValueError` unless every map `reader` (a loss or metric)
        reads sits in this layout at its slot, with its kind."""
        for read in map_reads(reader, n_classes):
            start = self._starts.get(read.kind)
            if start != read.index or self.slots[read.kind] != read.slots:
                where = ("is not in the layout" if start is None else
                         f"is at slot {start} ({self.slots[read.kind]} slot(s))")
                raise ValueError(
                    f"`{type(reader).__name__}` (name={getattr(reader, 'name', '?')!r}) "
                    f"reads {read.kind!r} at map slot {read.index} ({read.slots} "
                    f"slot(s)), but in {self!r} {read.kind!r} {where}. Pass "
                    f"`map_index=layout.index({read.kind!r})`."
                )
        return self

    @classmethod
    def for_reader(cls, reader, n_classes=None):
        """The layout a loss or metric reads: its `map_reads` in slot order.

        Raises a `ValueError` when the slots it reads leave a gap (a target
        cannot hold an empty slot) or overlap.
        """
        reads = sorted(map_reads(reader, n_classes), key=lambda r: r.index)
        kinds, slots, next_slot = [], {}, 0
        for read in reads:
            if read.index != next_slot or read.kind in slots:
                raise ValueError(
                    f"`{type(reader).__name__}` reads packed maps "
                    f"{[tuple(r) for r in reads]} ((kind, slot, slots)): expected "
                    "consecutive slots from 0, each kind once."
                )
            kinds.append(read.kind)
            slots[read.kind] = read.slots
            next_slot += read.slots
        return cls(kinds, slots)

    def __eq__(self, other):
        return (isinstance(other, TargetLayout) and self.kinds == other.kinds
                and self.slots == other.slots)

    def __hash__(self):
        return hash((self.kinds, tuple(self.slots.items())))

    def __repr__(self):
        extra = {k: n for k, n in self.slots.items() if n != 1}
        return f"TargetLayout({self.kinds!r}" + (f", slots={extra!r})" if extra else ")")


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


def packed_or_computed(y_true, n_classes, index, compute, loss_name, map_name, channels=None):
    """`compute()` when `index` is None, else packed map number `index` of
    `y_true` (without gradient); a missing map raises a `ValueError` that
    says how to pack it.

    A map has `n_classes` channels, or `channels` (a two-channel map for one
    sigmoid channel fills two one-channel slots, from slot `index` on).
    """
    if index is None:
        return compute()
    channels = n_classes if channels is None else channels
    slots = -(-channels // n_classes)
    start = _check_map(y_true, n_classes, index + slots - 1, loss_name, map_name)
    start -= (slots - 1) * n_classes
    return ops.stop_gradient(y_true[..., start : start + channels])


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


def _check_map(y_true, n_classes, index, loss_name, map_name, argument="map_index"):
    shape = _channels(y_true)
    n_maps = n_packed_maps(shape, n_classes)
    if n_maps <= index:
        raise ValueError(
            f"`{loss_name}` reads the {map_name} at packed map slot {index} "
            f"(`{argument}`): expected at least {(index + 2) * n_classes} "
            f"channels in `y_true` ({n_classes} label channel(s), "
            f"then {n_classes} per map slot), received y_true.shape={tuple(shape)}. "
            "Build the target with `keras_seglosses.pack_targets(labels, *maps)` "
            "or `keras_seglosses.TargetLayout(...).pack(labels, ...)`."
        )
    return (index + 1) * n_classes


def require_map(y_true, n_classes, index, loss_name, map_name, argument="map_index"):
    """Return packed map number `index`, or raise a `ValueError` explaining how
    to pack it."""
    start = _check_map(y_true, n_classes, index, loss_name, map_name, argument)
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
