"""Topology-preserving losses: the soft clDice of Shit et al. (CVPR 2021).

clDice compares centrelines: the soft skeleton of the prediction should lie
inside the ground truth (topology precision) and the soft skeleton of the
ground truth inside the prediction (topology sensitivity); their harmonic
mean is clDice. The soft skeleton is a differentiable morphological
skeleton made of min- and max-pooling (erosion and dilation with the
3-voxel cross and cube), iterated `iterations` times; it needs at least as
many iterations as the half-width of the thickest structure to reach its
centre.

Conventions as MONAI's `SoftclDiceLoss` and `SoftDiceclDiceLoss` (whose
values the tests reproduce): the sums run over the spatial axes and the
kept channels together, one value per sample; `include_background=False`
drops channel 0 when there are several.

With an ignore mask (`mask_index`, see `keras_seglosses._core.ignore_mask`)
both skeletons are those of the masked prediction and labels (an ignored
voxel is background there, so a centreline through an ignored region is
cut) and every sum runs over the counted voxels. This is exactly MONAI's
`MaskedLoss(SoftclDiceLoss)`, which multiplies input and target by the mask.
A mask that differs between channels masks each class on its own with
probabilities; the softmax of logits (C > 1) couples the classes, so there a
voxel counts only where every channel counts.

The gradient of max-pooling has no deterministic XLA kernel in TensorFlow
2.21: with TensorFlow's op determinism on (`cmseg train --deterministic`)
a compiled TensorFlow training step with these losses raises
`UnimplementedError`; JAX and torch are unaffected.
"""

from keras import ops

from keras_seglosses._core import SegLoss, check_number, prepare, register
from keras_seglosses.losses.rpdl import dice

__all__ = ["soft_erode", "soft_dilate", "soft_skeleton", "soft_cl_dice", "dice_cl_dice",
           "SoftClDice", "DiceClDice"]


def _max_pool(x, size):
    return ops.max_pool(x, pool_size=size, strides=1, padding="same",
                        data_format="channels_last")


def soft_erode(x):
    """Soft erosion of `(batch, *spatial, C)`: the minimum over the 3-voxel
    line along each spatial axis, then the minimum over the axes (the
    cross-shaped structuring element)."""
    rank = len(x.shape) - 2
    lines = [-_max_pool(-x, tuple(3 if i == a else 1 for i in range(rank)))
             for a in range(rank)]
    out = lines[0]
    for line in lines[1:]:
        out = ops.minimum(out, line)
    return out


def soft_dilate(x):
    """Soft dilation of `(batch, *spatial, C)`: the maximum over the 3^d
    cube."""
    return _max_pool(x, (3,) * (len(x.shape) - 2))


def soft_skeleton(x, *, iterations=3):
    """Soft skeleton of probabilities `(batch, *spatial, C)` [Shit et al.,
    Alg. 1]: `skel = relu(x - open(x))`, then `iterations` times
    `x = erode(x)`, `delta = relu(x - open(x))`,
    `skel = skel + relu(delta - skel * delta)`, with `open = dilate o erode`.
    """
    skel = ops.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(int(iterations)):
        x = soft_erode(x)
        delta = ops.relu(x - soft_dilate(soft_erode(x)))
        skel = skel + ops.relu(delta - skel * delta)
    return skel


def _kept(x, include_background):
    return x[..., 1:] if (not include_background and x.shape[-1] > 1) else x


def soft_cl_dice(y_true, y_pred, *, iterations=3, smooth=1.0, epsilon=1e-4, from_logits=False,
                 include_background=True, mask_index=None):
    """Per-sample soft clDice loss [Shit et al., Eq. 1-2].

    `1 - 2 Tprec Tsens / (Tprec + Tsens + epsilon)` with
    `Tprec = (sum S_P G + smooth) / (sum S_P + smooth)` and
    `Tsens = (sum S_G P + smooth) / (sum S_G + smooth)`, `S_X` the soft
    skeleton of X, sums over space and the kept channels. With an ignore
    mask (slot `mask_index`) X is masked first and the sums run over the
    counted voxels.

    Returns:
        Tensor of shape `(batch,)`.
    """
    _, labels, p = prepare(y_true, y_pred, from_logits, "SoftClDice", mask_index)
    g = _kept(labels, include_background)
    p = _kept(p, include_background)
    # No mask on the skeletons: the soft skeleton of a map >= 0 is 0 wherever
    # the map is 0 (every erosion keeps such a voxel at 0), so those of the
    # masked p and g are 0 at every ignored voxel already.
    skel_p = soft_skeleton(p, iterations=iterations)
    skel_g = soft_skeleton(g, iterations=iterations)
    axes = tuple(range(1, len(p.shape)))
    t_prec = (ops.sum(skel_p * g, axis=axes) + smooth) / (ops.sum(skel_p, axis=axes) + smooth)
    t_sens = (ops.sum(skel_g * p, axis=axes) + smooth) / (ops.sum(skel_g, axis=axes) + smooth)
    return 1.0 - 2.0 * t_prec * t_sens / (t_prec + t_sens + epsilon)


def dice_cl_dice(y_true, y_pred, *, alpha=0.5, iterations=3, smooth=1.0, epsilon=1e-4,
                 from_logits=False, include_background=True, mask_index=None):
    """Per-sample `(1 - alpha) Dice + alpha clDice` [Shit et al., Eq. 3]:
    the Dice loss per sample and class (`batch=False`, `smooth` added to
    numerator and denominator) plus `soft_cl_dice`, both with the ignore mask
    at slot `mask_index`, if any.

    Returns:
        Tensor of shape `(batch,)`.
    """
    d = dice(y_true, y_pred, smooth=smooth, batch=False, from_logits=from_logits,
             include_background=include_background, mask_index=mask_index)
    cl = soft_cl_dice(y_true, y_pred, iterations=iterations, smooth=smooth, epsilon=epsilon,
                      from_logits=from_logits, include_background=include_background,
                      mask_index=mask_index)
    return (1.0 - alpha) * d + alpha * cl


def _iterations(value):
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError("Invalid value for argument `iterations`. Expected a non-negative "
                         f"integer. Received: iterations={value!r}")
    return int(value)


@register
class SoftClDice(SegLoss):
    """Soft clDice loss (centreline Dice), for tubular and thin structures.

    `L = 1 - 2 Tprec Tsens / (Tprec + Tsens + epsilon)`: topology precision
    `Tprec`, the share of the prediction's soft skeleton inside the ground
    truth, and topology sensitivity `Tsens`, the share of the ground
    truth's soft skeleton inside the prediction (see `soft_skeleton`).
    2D and 3D. Equals MONAI's `SoftclDiceLoss(iter_=iterations,
    smooth_nr=smooth, smooth_dr=smooth, smooth=epsilon)`.

    Args:
        iterations: int >= 0, the skeleton's erosion steps; at least the
            half-width (in voxels) of the thickest structure. Defaults to `3`.
        smooth: float >= 0 added to the numerators and denominators of
            Tprec and Tsens. Defaults to `1.0`.
        epsilon: float >= 0 added to the harmonic mean's denominator.
            Defaults to `1e-4`.
        from_logits: bool; sigmoid for one channel, softmax for several.
            Defaults to `False`.
        include_background: bool; when False and C > 1, channel 0 is left
            out. Defaults to `True`.
        mask_index: `None` (every voxel counts) or int >= 0, the packed slot
            of an ignore mask (1 counts, 0 ignored; see `ignore_mask`). Both
            skeletons are then those of the masked prediction and labels (an
            ignored voxel is background) and the sums run over the counted
            voxels, so ignored voxels change neither value nor gradient; the
            same as MONAI's `MaskedLoss(SoftclDiceLoss)`. Defaults to `None`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Example:

    >>> import numpy as np
    >>> y = np.zeros((1, 9, 9, 1)); y[0, 4, 1:8] = 1.0  # a line
    >>> round(float(SoftClDice()(y, y)), 4)
    0.0

    Reference:
        Shit et al., "clDice - a Novel Topology-Preserving Loss Function for
        Tubular Structure Segmentation", CVPR 2021.
    """

    def __init__(self, iterations=3, smooth=1.0, epsilon=1e-4, from_logits=False,
                 include_background=True, mask_index=None, reduction="sum_over_batch_size",
                 name="soft_cl_dice", dtype=None):
        super().__init__(
            soft_cl_dice, reduction=reduction, name=name, dtype=dtype,
            iterations=_iterations(iterations),
            smooth=float(check_number("smooth", smooth, low=0)),
            epsilon=float(check_number("epsilon", epsilon, low=0)),
            from_logits=bool(from_logits), include_background=bool(include_background),
            mask_index=mask_index,
        )


@register
class DiceClDice(SegLoss):
    """Dice loss plus soft clDice: `L = (1 - alpha) Dice + alpha clDice`.

    The Dice term is per sample and class (`Dice(batch=False,
    smooth=smooth)`), the clDice term `SoftClDice`. Equals MONAI's
    `SoftDiceclDiceLoss(iter_=iterations, alpha=alpha, smooth_nr=smooth,
    smooth_dr=smooth, smooth=epsilon)`.

    Args:
        alpha: float in [0, 1], the weight of clDice. Defaults to `0.5`.
        iterations, smooth, epsilon, from_logits, include_background,
            mask_index: as `SoftClDice` (defaults `3`, `1.0`, `1e-4`,
            `False`, `True`, `None`); the mask applies to both terms (the
            Dice sums too: MONAI's `MaskedLoss(SoftDiceclDiceLoss)`).
        reduction, name, dtype: as `keras.losses.Loss`.

    Returns (from `call`): one value per sample, `(batch,)`.

    Reference:
        Shit et al., CVPR 2021, Eq. 3.
    """

    def __init__(self, alpha=0.5, iterations=3, smooth=1.0, epsilon=1e-4, from_logits=False,
                 include_background=True, mask_index=None, reduction="sum_over_batch_size",
                 name="dice_cl_dice", dtype=None):
        super().__init__(
            dice_cl_dice, reduction=reduction, name=name, dtype=dtype,
            alpha=float(check_number("alpha", alpha, low=0, high=1)),
            iterations=_iterations(iterations),
            smooth=float(check_number("smooth", smooth, low=0)),
            epsilon=float(check_number("epsilon", epsilon, low=0)),
            from_logits=bool(from_logits), include_background=bool(include_background),
            mask_index=mask_index,
        )
