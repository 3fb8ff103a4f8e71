"""3D V-net as in the RPDL original (residual encoder levels)."""

import keras

from models3d.blocks import build_encoder_decoder, check_arguments


def vnet(
    input_shape=(64, 64, 64, 1),
    n_labels=1,
    n_base_filters=4,
    depth=5,
    dropout_rate=0.3,
    activation="sigmoid",
    name="vnet",
):
    """3D V-net of the RPDL original: `basic_unet` with residual levels.

    As `basic_unet`, except that each encoder level learns a residual
    function (Milletari et al. 2016): its output is the sum of the entry conv
    block and the context module,

        level_output = entry + context(entry).

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
        activation: `"sigmoid"` or `"softmax"` (`n_labels >= 2`). Defaults
            to `"sigmoid"`.
        name: model name. Defaults to `"vnet"`.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> model = vnet(input_shape=(16, 16, 16, 1), depth=3)
    >>> model.output_shape
    (None, 16, 16, 16, 1)

    Reference:
        He et al., IJCNN 2020, section V "Model details" [000]; Milletari et
        al., "V-Net", 3DV 2016.
    """
    shape, n_labels, n_base_filters, depth, dropout_rate = check_arguments(
        input_shape, n_labels, n_base_filters, depth, activation, dropout_rate
    )
    inputs = keras.Input(shape, name="image")
    return build_encoder_decoder(
        inputs, n_labels, n_base_filters, depth, dropout_rate, activation,
        residual=True, n_segmentation_levels=1, name=name,
    )
