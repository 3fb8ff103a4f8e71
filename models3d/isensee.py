"""Isensee et al. 2017 (BraTS 2017) as in the RPDL original."""

import keras

from models3d.blocks import build_encoder_decoder, check_arguments, check_int


def isensee2017(
    input_shape=(64, 64, 64, 1),
    n_labels=1,
    n_base_filters=4,
    depth=5,
    dropout_rate=0.3,
    activation="sigmoid",
    n_segmentation_levels=3,
    name="isensee2017",
    deep_supervision=False,
):
    """Isensee et al. 2017: residual encoder-decoder with deep supervision.

    The encoder and decoder are those of `vnet` (residual levels: entry conv
    block + context module). In addition the `n_segmentation_levels` finest
    decoder levels each give a 1x1x1 segmentation map `S_l` (level 0 is the
    finest); they are summed from the coarsest up, up-sampling x2 before each
    addition, and the activation is applied to the sum:

        y = act(S_0 + up(S_1 + up(S_2)))        (n_segmentation_levels=3)

    Shapes: input `(batch, *input_shape)`; output
    `(batch, D, H, W, n_labels)`. With `deep_supervision=True` the model
    has `n_segmentation_levels` outputs, finest first: that map and the
    activated running sums of the coarser levels, `(batch, D/2^l, H/2^l,
    W/2^l, n_labels)` for l = 1, ..., n_segmentation_levels - 1, to be
    trained each against the target at its resolution
    (`keras_seglosses.DeepSupervision`). The layers and weights are the
    same either way, so weights load across the two.

    Args:
        input_shape: `(D, H, W, channels)`, spatial sizes divisible by
            `2**(depth - 1)`. Defaults to `(64, 64, 64, 1)`.
        n_labels: output channels. Defaults to `1`.
        n_base_filters: filters of the first level. Defaults to `4`.
        depth: number of resolution levels. Defaults to `5`.
        dropout_rate: SpatialDropout3D rate in every context module.
            Defaults to `0.3`.
        activation: `"sigmoid"` or `"softmax"` (`n_labels >= 2`). Defaults
            to `"sigmoid"`.
        n_segmentation_levels: decoder levels that contribute a segmentation
            map, between 1 and `depth - 1`. Defaults to `3` (the paper).
        name: model name. Defaults to `"isensee2017"`.
        deep_supervision: bool, also output the coarser levels' maps.
            Defaults to `False`.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> model = isensee2017(input_shape=(16, 16, 16, 1), depth=3,
    ...                     n_segmentation_levels=2)
    >>> model.output_shape
    (None, 16, 16, 16, 1)

    Reference:
        He et al., IJCNN 2020, section V "Model details" [000]; Isensee et
        al., "Brain tumor segmentation and radiomics survival prediction:
        contribution to the BRATS 2017 challenge", BrainLes 2017.
    """
    shape, n_labels, n_base_filters, depth, dropout_rate = check_arguments(
        input_shape, n_labels, n_base_filters, depth, activation, dropout_rate
    )
    n_segmentation_levels = check_int("n_segmentation_levels", n_segmentation_levels, 1)
    if n_segmentation_levels > depth - 1:
        raise ValueError(
            "Invalid value for argument `n_segmentation_levels`. Expected an "
            f"integer between 1 and depth - 1 = {depth - 1} (there are "
            f"{depth - 1} decoder levels). Received: "
            f"n_segmentation_levels={n_segmentation_levels}"
        )
    if deep_supervision and n_segmentation_levels < 2:
        raise ValueError(
            "Invalid value for argument `deep_supervision`. Deep supervision needs "
            "n_segmentation_levels >= 2 (one output per level). Received: "
            f"deep_supervision=True with n_segmentation_levels={n_segmentation_levels}"
        )
    inputs = keras.Input(shape, name="image")
    return build_encoder_decoder(
        inputs, n_labels, n_base_filters, depth, dropout_rate, activation,
        residual=True, n_segmentation_levels=n_segmentation_levels, name=name,
        deep_supervision=bool(deep_supervision),
    )
