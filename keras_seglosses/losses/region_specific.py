"""Region-specific losses of Chen et al.: a squared-denominator Dice loss and
an adaptive Tversky loss computed separately in each cell of a regular grid
of sub-regions [003, Eq. 4, Eq. 6-8].

Design decisions (also in README):

- Sub-regions are the cells of a regular grid, `grid` cells per spatial axis
  (the paper: 16 x 16 x 16 [003, Sec. 3.2]); the spatial shape must be
  divisible by the grid. Block sums are one reshape and one reduction per
  spatial axis, whatever the number of cells (no loop over cells); after
  the first axis each runs over a tensor smaller by the cell size.
- A (sub-region, class) pair whose ground truth holds no voxel of the class
  contributes nothing, as the paper does [003, Sec. 5].
- Combination of the per-region values, `region_reduction`: `"sum"` is the
  paper's Eq. 4/6 (the sum over sub-regions; then the mean over classes, as
  the package's other overlap losses); `"mean"` averages over the
  contributing (sub-region, class) pairs, so the loss stays in [0, 1]
  whatever the grid. Both equal the squared-denominator Dice loss of
  [003, Eq. 2] with `grid=1` when every class is present.
  The default is `"sum"`: it is the loss the paper trains and tunes (its
  A, B and learning rates go with it), and only with it is every
  sub-region's gradient exactly that of a Dice (Tversky) loss of that
  sub-region alone, the independence Sec. 3.2 argues for. `"mean"` divides
  each sub-region's gradient by the number of contributing pairs of its
  sample, so a sub-region of a sample with a large object weighs less than
  one of a sample with a small object. Its scale (up to 16^3 = 4096 cells
  hold foreground in the paper's setting) is what `"mean"` is for: combining
  with other losses or comparing grids.
- Adaptive weights [003, Eq. 7-8]: alpha and beta are functions of the
  prediction, and by default gradients flow through them (the paper treats
  them as part of the loss, and the public ports do not detach them);
  `adaptive_gradient=False` stops their gradient so they act as per-region
  constants re-estimated at each step.
- Ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`): the
  per-cell sums run over the counted voxels only (labels and prediction are
  masked, and so is every `1 - g`, `1 - p` term), and a class counts as
  present in a cell by its counted voxels; a cell whose voxels are all
  ignored contributes nothing. As MONAI's `MaskedLoss`, which multiplies
  input and target by the mask. A mask that differs between channels masks
  each class on its own with probabilities; the softmax of logits (C > 1)
  couples the classes, so there a voxel counts only where every channel
  counts.
"""

import numbers

from keras import ops

from keras_seglosses._core import (
    SegLoss,
    check_choice,
    check_number,
    prepare,
    register,
)

__all__ = [
    "region_specific_dice",
    "adaptive_region_specific_tversky",
    "adaptive_tversky_weights",
    "RegionSpecificDice",
    "AdaptiveRegionSpecificTversky",
]


# -------------------------------------------------------------------- helpers
def _check_grid(grid):
    """`__init__` validation: a positive int, or a tuple/list of them."""
    values = grid if isinstance(grid, (tuple, list)) else (grid,)
    ok = len(values) > 0 and all(
        isinstance(g, numbers.Integral) and not isinstance(g, bool) and g >= 1
        for g in values
    )
    if not ok:
        raise ValueError(
            "Invalid value for argument `grid`. Expected a positive integer "
            "(sub-regions per spatial axis) or a tuple of positive integers, "
            f"one per spatial axis. Received: grid={grid!r}"
        )
    return int(grid) if not isinstance(grid, (tuple, list)) else tuple(int(g) for g in grid)


def _grid_per_axis(grid, spatial_shape, name):
    """Expand `grid` to one count per axis and check divisibility."""
    rank = len(spatial_shape)
    if isinstance(grid, (tuple, list)):
        grid = tuple(int(g) for g in grid)
        if len(grid) != rank:
            raise ValueError(
                f"`{name}`: invalid value for argument `grid`. Expected {rank} "
                f"values, one per spatial axis of the input. Received: "
                f"grid={grid} for spatial shape {tuple(spatial_shape)}."
            )
    else:
        grid = (int(grid),) * rank
    if any(s is None for s in spatial_shape):
        raise ValueError(
            f"`{name}` needs static spatial dimensions to divide the volume "
            f"into sub-regions. Received: spatial shape {tuple(spatial_shape)}."
        )
    if any(s % g for s, g in zip(spatial_shape, grid)):
        raise ValueError(
            f"`{name}`: the spatial shape must be divisible by `grid` on every "
            f"axis so that the sub-regions are even. Received: spatial shape "
            f"{tuple(spatial_shape)}, grid={grid}."
        )
    return grid


def block_sums(x, grid):
    """Sum `x` over the cells of a regular grid.

    Args:
        x: tensor `(batch, *spatial, C)` whose spatial shape is divisible by
            `grid`.
        grid: tuple, number of cells per spatial axis.

    Returns:
        Tensor `(batch, R, C)`, R the number of cells (row-major order).
    """
    spatial = tuple(x.shape[1:-1])
    channels = x.shape[-1]
    rest = channels
    for s in spatial:
        rest *= s
    n_cells = 1
    # One axis at a time, as `(cells so far, cell, within the cell, rest)`:
    # a single `(batch, g1, b1, g2, b2, g3, b3, C)` reshape and sum would do,
    # but for 3D inputs the gradient of that sum is a broadcast that
    # TensorFlow's eager kernel refuses ("not supported yet"), which broke
    # `run_eagerly=True` training.
    for s, g in zip(spatial, grid):
        rest //= s
        x = ops.sum(ops.reshape(x, (-1, g, s // g, rest)), axis=2)
        n_cells *= g
    return ops.reshape(x, (-1, n_cells, channels))


def _cell_sums(y_true, y_pred, grid, from_logits, name, statistics, mask_index=None):
    """Labels `g` and probabilities `p` prepared (masked, with `mask_index`),
    then the per-cell sums of each per-voxel term of `statistics(p, g)` (a
    list), each `(batch, R, C)`."""
    _, g, p = prepare(y_true, y_pred, from_logits, name, mask_index)
    grid = _grid_per_axis(grid, tuple(p.shape[1:-1]), name)
    parts = statistics(p, g)
    # One fused reduction of the statistics stacked on the channel axis.
    sums = block_sums(ops.concatenate(parts, axis=-1), grid)
    c = p.shape[-1]
    return tuple(sums[..., i * c : (i + 1) * c] for i in range(len(parts)))


def _safe(denominator, present):
    """Denominator with 1 in (cell, class) pairs that are dropped anyway, so
    that `smooth=0` yields no 0/0 there (a NaN would leak into the gradient
    through `where`)."""
    return ops.where(present, denominator, 1.0)


def _combine(loss, present, region_reduction):
    """Per-sample value from `(batch, R, C)` per-cell losses and presence."""
    loss = ops.where(present, loss, 0.0)
    present = ops.cast(present, "float32")
    if region_reduction == "sum":
        return ops.mean(ops.sum(loss, axis=1), axis=-1)
    count = ops.sum(present, axis=(1, 2))
    return ops.divide_no_nan(ops.sum(loss, axis=(1, 2)), count)


# ------------------------------------------------------------------ functions
def region_specific_dice(
    y_true, y_pred, *, grid=16, smooth=1e-7, region_reduction="sum", from_logits=False,
    mask_index=None,
):
    """Per-sample region-specific Dice loss [003, Eq. 4].

    For each cell `V_k` of the grid and each class,
    `1 - (2 sum_{V_k} p g + eps) / (sum_{V_k} p^2 + sum_{V_k} g^2 + eps)`;
    pairs whose ground truth lacks the class are dropped; the rest are summed
    over cells (or averaged, see `RegionSpecificDice`). With an ignore mask
    (slot `mask_index`) the sums run over the counted voxels of each cell.

    Returns:
        Tensor of shape `(batch,)`.
    """
    pg, sg, squares = _cell_sums(
        y_true, y_pred, grid, from_logits, "RegionSpecificDice",
        lambda p, g: [p * g, g, p * p + g * g], mask_index,
    )
    present = sg > 0.5
    loss = 1.0 - (2.0 * pg + smooth) / _safe(squares + smooth, present)
    return _combine(loss, present, region_reduction)


def adaptive_tversky_weights(fp, fn, A=0.3, B=0.4, smooth=1e-7):
    """Adaptive Tversky weights of one sub-region [003, Eq. 7-8].

    `alpha = A + B (FP + eps) / (FP + FN + eps)`,
    `beta = A + B (FN + eps) / (FP + FN + eps)`, as printed in the paper
    (eps in both numerators); both lie in `[A, A + B]`. A sub-region without
    errors (FP = FN = 0) thus gets `alpha = beta = A + B` when eps > 0; with
    eps = 0, where Eq. 7-8 are 0/0, both are `A + B / 2`, their value for
    FP = FN > 0. Either way such a sub-region's loss is 0.

    Args:
        fp: soft false positives `sum p (1 - g)`, any shape.
        fn: soft false negatives `sum (1 - p) g`, the same shape.
        A: float, the lower end of the weights' range. Defaults to `0.3`.
        B: float, the width of the weights' range. Defaults to `0.4`.
        smooth: float >= 0, eps. Defaults to `1e-7`.

    Returns:
        Tuple `(alpha, beta)` of the shape of `fp`.

    Example:

    >>> import numpy as np
    >>> alpha, beta = adaptive_tversky_weights(np.array([3.0]), np.array([1.0]), smooth=0.0)
    >>> [round(float(alpha[0]), 4), round(float(beta[0]), 4)]
    [0.6, 0.4]
    """
    total = fp + fn + smooth
    # FP = FN = 0 with smooth = 0: the FP = FN case, alpha = beta = A + B/2.
    nonzero = total > 0
    safe_total = ops.where(nonzero, total, 1.0)
    fp_fraction = ops.where(nonzero, (fp + smooth) / safe_total, 0.5)
    fn_fraction = ops.where(nonzero, (fn + smooth) / safe_total, 0.5)
    return A + B * fp_fraction, A + B * fn_fraction


def adaptive_region_specific_tversky(
    y_true,
    y_pred,
    *,
    grid=16,
    A=0.3,
    B=0.4,
    smooth=1e-7,
    region_reduction="sum",
    adaptive_gradient=True,
    from_logits=False,
    mask_index=None,
):
    """Per-sample adaptive region-specific Tversky loss [003, Eq. 6-8].

    For each cell and class,
    `1 - (TP + eps) / (TP + alpha FP + beta FN + eps)` with soft
    `TP = sum p g`, `FP = sum p (1 - g)`, `FN = sum (1 - p) g` and alpha, beta
    from `adaptive_tversky_weights`; pairs whose ground truth lacks the class
    are dropped; the rest are summed over cells (or averaged). With an
    ignore mask (slot `mask_index`) the counts run over the counted voxels
    of each cell.

    Returns:
        Tensor of shape `(batch,)`.
    """
    # FP and FN summed directly rather than as `sum p - TP`, `sum g - TP`:
    # in a large, well-predicted float32 cell those differences cancel (a
    # 64^3 cell with FP = 0.065 gave 0.078).
    tp, fp, fn = _cell_sums(
        y_true, y_pred, grid, from_logits, "AdaptiveRegionSpecificTversky",
        # p and g are masked, so the `1 - g` and `1 - p` terms are too
        lambda p, g: [p * g, p * (1.0 - g), (1.0 - p) * g], mask_index,
    )
    alpha, beta = adaptive_tversky_weights(fp, fn, A, B, smooth)
    if not adaptive_gradient:
        alpha, beta = ops.stop_gradient(alpha), ops.stop_gradient(beta)
    present = tp + fn > 0.5  # sum g
    denominator = tp + alpha * fp + beta * fn + smooth
    loss = 1.0 - (tp + smooth) / _safe(denominator, present)
    return _combine(loss, present, region_reduction)


# -------------------------------------------------------------------- classes
class _GridLoss(SegLoss):
    """Base of the two classes: the arguments they share, validated once; a
    tuple `grid` is serialized as a list (plain JSON; `_check_grid` turns it
    back into a tuple)."""

    def __init__(self, fn, grid, smooth, region_reduction, from_logits, mask_index, reduction,
                 name, dtype, **kwargs):
        super().__init__(
            fn, reduction=reduction, name=name, dtype=dtype, grid=_check_grid(grid),
            smooth=float(check_number("smooth", smooth, low=0)),
            region_reduction=check_choice(
                "region_reduction", region_reduction, {"sum", "mean"}
            ),
            from_logits=bool(from_logits), mask_index=mask_index, **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        if isinstance(self.grid, tuple):
            config["grid"] = list(self.grid)
        return config


@register
class RegionSpecificDice(_GridLoss):
    """Region-specific Dice loss of Chen et al.

    The volume is divided evenly into `grid` sub-regions per spatial axis
    (16 x 16 x 16 in the paper); in each sub-region `V_k` and for each class a
    Dice loss with squared denominators is computed [003, Eq. 4]:

        L = sum_k (1 - (2 sum_{V_k} p g + eps)
                       / (sum_{V_k} p^2 + sum_{V_k} g^2 + eps))

    so each sub-region's gradient depends only on its own prediction and
    labels: well-predicted sub-regions stop contributing. Sub-regions where a
    class is absent from the ground truth contribute nothing for that class
    [003, Sec. 5]. With several channels the per-class values are averaged.
    With `grid=1` (and every class present) this is
    `Dice(squared=True, batch=False)`, the global loss of [003, Eq. 2].

    Args:
        grid: int or tuple of ints, sub-regions per spatial axis; every
            spatial dimension must be divisible by it. Defaults to `16`.
        smooth: float >= 0, the eps of Eq. 4. Defaults to `1e-7`.
        region_reduction: `"sum"` over sub-regions (the paper's Eq. 4: each
            sub-region's gradient is that of its own Dice loss; the scale
            grows with the number of sub-regions holding foreground) or
            `"mean"` over the contributing (sub-region, class) pairs (a loss
            in [0, 1] whatever the grid, for compound losses or comparing
            grids). Defaults to `"sum"`, the paper's.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`). The
            per-cell sums then run over the counted voxels, a class is
            present in a cell by its counted voxels, and a cell with none
            counted contributes nothing: ignored voxels change neither value
            nor gradient (MONAI's `MaskedLoss` semantics). Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Shapes: `y_pred` `(batch, *spatial, C)`, 2D or 3D; `y_true` the same
    (binary or one-hot), possibly packed with maps (ignored).

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 4, 4, 1)); y[0, :2, :2] = 1.0
    >>> loss = RegionSpecificDice(grid=2, smooth=0.0)
    >>> float(loss(y, y))
    0.0
    >>> round(float(loss(y, 0.5 * np.ones_like(y))), 4)  # one cell has foreground
    0.2

    Reference:
        Chen et al., TPAMI 2023 [003, Eq. 2, Eq. 4, Sec. 3.2, Sec. 5].
    """

    def __init__(
        self,
        grid=16,
        smooth=1e-7,
        region_reduction="sum",
        from_logits=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="region_specific_dice",
        dtype=None,
    ):
        super().__init__(
            region_specific_dice, grid, smooth, region_reduction, from_logits, mask_index,
            reduction, name, dtype,
        )


@register
class AdaptiveRegionSpecificTversky(_GridLoss):
    """Adaptive region-specific Tversky loss of Chen et al.

    In each sub-region `V_k` of an even grid and for each class, a Tversky
    loss whose weights adapt to the sub-region's errors [003, Eq. 6-8]:

        L = sum_k (1 - (TP_k + eps) / (TP_k + alpha_k FP_k + beta_k FN_k + eps))
        alpha_k = A + B (FP_k + eps) / (FP_k + FN_k + eps)
        beta_k  = A + B (FN_k + eps) / (FP_k + FN_k + eps)

    with soft counts `TP = sum p g`, `FP = sum p (1 - g)`,
    `FN = sum (1 - p) g` over the sub-region; alpha and beta lie in
    `[A, A + B]`, and the error type that dominates a sub-region is penalized
    more. Sub-regions where a class is absent from the ground truth contribute
    nothing for that class [003, Sec. 5]; per-class values are averaged.

    Gradients flow through alpha and beta by default, as in the paper's
    formulation and the public ports; `adaptive_gradient=False` treats them as
    constants of the step.

    Args:
        grid: int or tuple of ints, sub-regions per spatial axis. Defaults to
            `16`.
        A: float >= 0, the lower end of the weights' range. Defaults to `0.3`.
        B: float >= 0, the width of the weights' range. Defaults to `0.4`.
        smooth: float >= 0, eps. Defaults to `1e-7`.
        region_reduction: `"sum"` (the paper) or `"mean"` over contributing
            (sub-region, class) pairs, see `RegionSpecificDice`. Defaults to
            `"sum"`.
        adaptive_gradient: bool, let gradients flow through alpha and beta.
            Defaults to `True`.
        from_logits: bool. Defaults to `False`.
        mask_index: as `RegionSpecificDice`. Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 4, 4, 1)); y[0, :2, :2] = 1.0
    >>> loss = AdaptiveRegionSpecificTversky(grid=2, smooth=0.0)
    >>> float(loss(y, y))
    0.0
    >>> # one cell holds foreground: TP=2, FN=2, FP=0 -> beta=0.7
    >>> round(float(loss(y, 0.5 * np.ones_like(y))), 4)
    0.4118

    Reference:
        Chen et al., TPAMI 2023 [003, Eq. 5-8, Sec. 3.3, Sec. 5].
    """

    def __init__(
        self,
        grid=16,
        A=0.3,
        B=0.4,
        smooth=1e-7,
        region_reduction="sum",
        adaptive_gradient=True,
        from_logits=False,
        mask_index=None,
        reduction="sum_over_batch_size",
        name="adaptive_region_specific_tversky",
        dtype=None,
    ):
        check_number("A", A, low=0)
        check_number("B", B, low=0)
        if A + B <= 0:
            # alpha = beta = 0: the loss would be 1 - (TP + eps) / (TP + eps),
            # identically 0 (or 0/0 with smooth = 0).
            raise ValueError(
                "Invalid values for arguments `A` and `B`. Expected A + B > 0. "
                f"Received: A={A!r}, B={B!r}"
            )
        super().__init__(
            adaptive_region_specific_tversky, grid, smooth, region_reduction, from_logits,
            mask_index, reduction, name, dtype, A=float(A), B=float(B),
            adaptive_gradient=bool(adaptive_gradient),
        )
