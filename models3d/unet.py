"""3D U-net as in the RPDL original (the paper's "U-net")."""

import keras

from models3d.blocks import build_encoder_decoder, check_arguments


def basic_unet(
    input_shape=(64, 64, 64, 1),
    n_labels=1,
    n_base_filters=4,
    depth=5,
    dropout_rate=0.3,
    activation="sigmoid",
    name="basic_unet",
):
    """3D U-net of the RPDL original (Ronneberger/Cicek-style encoder-decoder).

    Level `l` of the encoder has `n_base_filters * 2**l` filters: an entry
    conv block (Conv3D 3x3x3 -> BatchNorm -> LeakyReLU, stride 2 below the
    first level) and a context module (conv block -> SpatialDropout3D -> conv
    block) whose output is the level output. Each decoder level up-samples
    x2, applies a conv block, concatenates the encoder output of its level
    and runs a localization module (conv block, 1x1x1 conv block). A 1x1x1
    Conv3D and the activation give the output.

    Shapes: input `(batch, *input_shape)`; output
    `(batch, D, H, W, n_labels)`.

    Args:
        input_shape: `(D, H, W, channels)`, spatial sizes divisible by
            `2**(depth - 1)`. Defaults to `(64, 64, 64, 1)`.
        n_labels: output channels. Defaults to `1`.
        n_base_filters: filters of the first level. Defaults to `4`.
        depth: number of resolution levels. Defaults to `5`.
        dropout_rate: SpatialDropout3D rate in every context module.
            Defaults to `0.3`.
        activation: `"sigmoid"` (independent channels) or `"softmax"`
            (one-hot classes, `n_labels >= 2`). Defaults to `"sigmoid"`.
        name: model name. Defaults to `"basic_unet"`.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> model = basic_unet(input_shape=(16, 16, 16, 1), depth=3)
    >>> model.output_shape
    (None, 16, 16, 16, 1)

    Reference:
        He et al., IJCNN 2020, section V "Model details" [000]; Cicek et
        al., "3D U-Net", MICCAI 2016.
    """
    shape, n_labels, n_base_filters, depth, dropout_rate = check_arguments(
        input_shape, n_labels, n_base_filters, depth, activation, dropout_rate
    )
    inputs = keras.Input(shape, name="image")
    return build_encoder_decoder(
        inputs, n_labels, n_base_filters, depth, dropout_rate, activation,
        residual=False, n_segmentation_levels=1, name=name,
    )
