"""Region-wise (RW) loss of Valverde and Tohka [002, Eq. 1-4].

`L_RW = (NK)^-1 sum_i softmax(phi_i)^T z_i`: each class probability of each
voxel weighted by a map computed from the ground truth (`keras_seglosses.maps`)
or read precomputed from the packed `y_true`.

With an ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`)
the map is that of the masked labels and the mean runs over the counted
voxels. (MONAI has no region-wise loss; its `MaskedLoss`, which only
multiplies input and target by the mask, would still divide by every voxel
and, for one sigmoid channel, keep the `1 - p` of ignored voxels.) A mask
that differs between the channels of a voxel masks each class on its own
with probabilities; the softmax of logits (C > 1) couples the classes, so
there a voxel counts only where every channel counts.
"""

from keras import ops

from keras_seglosses._core import (
    SegLoss,
    check_choice,
    check_map_index,
    prepare,
    register,
    voxel_mean,
)
from keras_seglosses.maps import RW_MAPS
from keras_seglosses.ops.distance import spacing_argument
from keras_seglosses.targets import packed_or_computed

__all__ = ["region_wise", "RegionWise"]


#: The map kind (`targets.MapRead.kind`) of each region-wise map.
MAP_KINDS = {"rrw": "rrw", "boundary": "rw_boundary", "ac": "rw_ac"}


def region_wise(
    y_true, y_pred, *, map="rrw", spacing=None, map_index=None, from_logits=False,
    mask_index=None,
):
    """Per-sample region-wise loss [002, Eq. 1].

    The mean over voxels and classes of `P * Z`, with P the class
    probabilities (a single sigmoid channel p becomes `[1 - p, p]`) and Z the
    region-wise map: computed from the labels with `keras_seglosses.maps`
    when `map_index` is None, else read from packed map slot `map_index`.
    With an ignore mask (slot `mask_index`) Z is the map of the masked labels
    and the mean runs over the counted voxels.

    Args:
        y_true, y_pred: as `RegionWise`.
        map, spacing, map_index, from_logits, mask_index: see `RegionWise`.

    Returns:
        Tensor of shape `(batch,)`.
    """
    check_choice("map", map, set(RW_MAPS))
    y_true, y, p, mask = prepare(y_true, y_pred, from_logits, "RegionWise", mask_index,
                                 return_mask=True)
    c = p.shape[-1]
    if c == 1:
        p = ops.concatenate([1.0 - p, p], axis=-1)
        if mask is not None:
            # 1 - p is 1 at an ignored voxel, and the mean runs over K = 2
            # classes per voxel
            mask = ops.concatenate([mask, mask], axis=-1)
            p = p * mask
    # K = max(C, 2) map channels: one sigmoid channel's map fills two slots
    slots = -(-p.shape[-1] // c)
    if map_index is not None and mask_index is not None and (
        map_index <= mask_index < map_index + slots
    ):
        # `__init__` cannot see this: the map's width depends on C
        raise ValueError(
            "Invalid value for argument `mask_index`. Expected a packed slot outside "
            f"the region-wise map's slots {list(range(map_index, map_index + slots))} "
            f"(one sigmoid channel's map takes two). Received: mask_index={mask_index}"
        )
    z = packed_or_computed(
        y_true, c, map_index, lambda: RW_MAPS[map](y, spacing), "RegionWise",
        f"{map!r} region-wise map", channels=p.shape[-1],
    )
    return voxel_mean(p * z, mask)


@register
class RegionWise(SegLoss):
    """Region-wise loss with rectified (RRW), boundary or active-contour maps.

    `L_RW = (NK)^-1 sum_i sum_k softmax(phi_i)_k z_ik` [002, Eq. 1], the
    mean over the N voxels and K classes of a sample of the probabilities
    weighted by a map Z computed from the ground truth:

    - `"rrw"` (default, [002, Eq. 4]): inside class k, minus the distance to
      the nearest voxel outside k divided by its maximum over the class (in
      [-1, 0)); 1 elsewhere. Hyperparameter-free, and every voxel's gradient
      w.r.t. the logits has exactly one negative component, the true
      class's [002, Sec. 3.3].
    - `"boundary"` ([002, Eq. 3]): the signed distance of each class, which
      makes the RW loss Kervadec's boundary loss.
    - `"ac"`: `Z = 1 - Y`, the region term of the active contour loss.

    See `keras_seglosses.maps` for the maps of absent classes (finite, never
    inf or NaN). A single sigmoid channel is handled as two classes
    (background `1 - p`, foreground `p`), so K = 2 and its map has two
    channels.

    To avoid computing the map at every step, precompute it and pack it in
    `y_true` after the labels: `pack_targets(y, z)` for `C > 1`, or
    `pack_targets(y, z[..., :1], z[..., 1:])` for one sigmoid channel (the
    two-channel map takes two packed slots), and say where: `map_index=0`.
    With `map_index=None` (the default) the map is computed from the labels.

    Args:
        map: `"rrw"`, `"boundary"` or `"ac"`. Defaults to `"rrw"`.
        spacing: optional voxel spacing for the distance maps, a positive
            number or a list with one per spatial axis. Defaults to `None`
            (unit spacing).
        map_index: `None` (compute the map) or int >= 0, the first packed
            slot of a precomputed map (map kind `"rrw"`, `"rw_boundary"` or
            `"rw_ac"`). Defaults to `None`.
        from_logits: bool; softmax for several channels, sigmoid for one.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`), not
            `map_index`. Z is then computed from the masked labels (an
            ignored voxel belongs to no class of a softmax, to the background
            of one sigmoid channel), a packed Z is masked (precompute it from
            the masked labels to get the same loss), and the mean runs over
            the counted voxels and the K classes, so ignored voxels change
            neither value nor gradient. Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Shapes: `y_pred` `(batch, *spatial, C)`, 2D or 3D; `y_true` one-hot (or
    binary for C = 1) labels, optionally packed with the map.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.array([[[[0.0], [1.0]]]])   # (1, 1, 2, 1)
    >>> p = np.array([[[[0.0], [1.0]]]])
    >>> float(RegionWise(map="ac")(y, p))
    0.0
    >>> float(RegionWise()(y, p))  # RRW map [[-1, 1], [1, -1]]
    -0.5

    Reference:
        Valverde and Tohka [002, Eq. 1-4, Sec. 3.2-3.3].
    """

    def __init__(
        self,
        map="rrw",
        spacing=None,
        map_index=None,
        from_logits=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="region_wise",
        dtype=None,
    ):
        super().__init__(
            region_wise,
            reduction=reduction,
            name=name,
            dtype=dtype,
            map=check_choice("map", map, set(RW_MAPS)),
            spacing=spacing_argument(spacing),
            map_index=check_map_index(map_index),
            from_logits=bool(from_logits),
            mask_index=mask_index,
        )

    @property
    def map_kind(self):
        return MAP_KINDS[self.map]

    def map_slots(self, n_classes):
        # one sigmoid channel is two classes, so its map fills two slots
        return 2 if n_classes == 1 else 1
