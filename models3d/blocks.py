"""Building blocks shared by the 3D architectures, and argument validation.

Every helper takes a tensor, returns a tensor and names each layer it creates
from `name`, so that a model's layer names are deterministic and say where
the layer sits (`enc2_context_block1_conv`, `dec0_localization_block2_bn`).
The structure follows the RPDL original's released code (SPEC.md section 6):

    conv block          Conv3D 3x3x3 'same' -> BatchNormalization -> LeakyReLU
    context module      conv block -> SpatialDropout3D -> conv block
    up-sampling module  UpSampling3D x2 -> conv block
    localization module conv block -> 1x1x1 conv block
"""

import numbers

import keras
from keras import layers

# Registered layers of this package (the Myronenko VAE pieces) live under
# their own name so that they never collide with keras_seglosses' classes.
PACKAGE = "models3d"


def register(cls):
    """Register a layer so `.keras` files load without `custom_objects`."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


# ------------------------------------------------------------------- blocks
def apply_conv_block(x, filters, kernel_size=3, strides=1, name="conv_block"):
    """Conv3D ('same') -> BatchNormalization -> LeakyReLU.

    Args:
        x: tensor `(batch, D, H, W, C)`.
        filters: int, output channels.
        kernel_size: int. Defaults to `3`.
        strides: int. Defaults to `1` (`2` halves each spatial size).
        name: prefix of the three layer names (`{name}_conv`, `{name}_bn`,
            `{name}_act`).

    Returns:
        Tensor `(batch, D / strides, H / strides, W / strides, filters)`.
    """
    x = layers.Conv3D(
        filters, kernel_size, strides=strides, padding="same", name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(axis=-1, name=f"{name}_bn")(x)
    return layers.LeakyReLU(name=f"{name}_act")(x)


def apply_context_module(x, filters, dropout_rate, name="context"):
    """Conv block -> SpatialDropout3D -> conv block (Isensee et al. 2017).

    SpatialDropout3D drops whole feature maps: neighbouring voxels of a map
    are strongly correlated, so voxel-wise dropout would barely regularize.
    """
    x = apply_conv_block(x, filters, name=f"{name}_block1")
    x = layers.SpatialDropout3D(dropout_rate, name=f"{name}_dropout")(x)
    return apply_conv_block(x, filters, name=f"{name}_block2")


def apply_up_sampling_module(x, filters, name="up"):
    """Nearest-neighbour UpSampling3D x2, then a conv block."""
    x = layers.UpSampling3D(size=2, name=f"{name}_upsample")(x)
    return apply_conv_block(x, filters, name=f"{name}_block")


def apply_localization_module(x, filters, name="localization"):
    """Conv block (3x3x3), then a 1x1x1 conv block that mixes the
    concatenated encoder and decoder features at each voxel."""
    x = apply_conv_block(x, filters, name=f"{name}_block1")
    return apply_conv_block(x, filters, kernel_size=1, name=f"{name}_block2")


def apply_encoder(x, n_base_filters, depth, dropout_rate, residual):
    """The shared encoder of `basic_unet`, `vnet` and `isensee2017`.

    Level `l` has `n_base_filters * 2**l` filters, enters with a conv block
    (stride 2 on every level but the first) and runs a context module. With
    `residual=True` the level output is entry + context (V-net, Isensee);
    otherwise it is the context output (U-net).

    Returns:
        `(level_outputs, level_filters)`, finest level first.
    """
    outputs, filters = [], []
    for level in range(depth):
        n = n_base_filters * 2**level
        entry = apply_conv_block(
            x, n, strides=1 if level == 0 else 2, name=f"enc{level}_entry"
        )
        context = apply_context_module(
            entry, n, dropout_rate, name=f"enc{level}_context"
        )
        if residual:
            x = layers.Add(name=f"enc{level}_add")([entry, context])
        else:
            x = context
        outputs.append(x)
        filters.append(n)
    return outputs, filters


def apply_decoder_level(x, skip, filters, level):
    """Up-sampling module, concatenation with the encoder output of the same
    level (encoder features first, as the original), localization module."""
    up = apply_up_sampling_module(x, filters, name=f"dec{level}_up")
    x = layers.Concatenate(axis=-1, name=f"dec{level}_concat")([skip, up])
    return apply_localization_module(x, filters, name=f"dec{level}_localization")


def apply_head(x, n_labels, activation, name="head"):
    """1x1x1 Conv3D to `n_labels` channels, then the output activation
    (computed in float32 so that mixed precision keeps a stable output)."""
    x = layers.Conv3D(n_labels, 1, name=f"{name}_conv")(x)
    return layers.Activation(activation, dtype="float32", name=f"{name}_act")(x)


# --------------------------------------------------------------- validation
def _invalid(arg, expected, value):
    return ValueError(
        f"Invalid value for argument `{arg}`. Expected {expected}. "
        f"Received: {arg}={value!r}"
    )


def check_int(arg, value, low):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < low
    ):
        raise _invalid(arg, f"an integer >= {low}", value)
    return int(value)


def check_arguments(
    input_shape, n_labels, n_base_filters, depth, activation, dropout_rate=0.0
):
    """Validate the arguments every builder shares.

    Args:
        depth: number of resolution levels; the input's spatial sizes must be
            divisible by `2**(depth - 1)` so that each stride-2 step halves
            them exactly and the decoder's x2 up-sampling restores them.

    Returns:
        `(input_shape as a tuple of ints, n_labels, n_base_filters, depth,
        dropout_rate as float)`.
    """
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if (
        shape is None
        or len(shape) != 4
        or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
            for s in shape
        )
    ):
        raise _invalid(
            "input_shape",
            "a tuple of 4 positive integers (D, H, W, channels), channels_last",
            input_shape,
        )
    shape = tuple(int(s) for s in shape)
    n_labels = check_int("n_labels", n_labels, 1)
    n_base_filters = check_int("n_base_filters", n_base_filters, 1)
    depth = check_int("depth", depth, 2)
    factor = 2 ** (depth - 1)
    if any(s % factor for s in shape[:3]):
        raise _invalid(
            "input_shape",
            f"spatial sizes divisible by 2**(depth - 1) = {factor} "
            f"(depth={depth})",
            input_shape,
        )
    if (
        isinstance(dropout_rate, bool)
        or not isinstance(dropout_rate, numbers.Real)
        or not 0 <= dropout_rate < 1
    ):
        raise _invalid("dropout_rate", "a float in [0, 1)", dropout_rate)
    if activation not in ("sigmoid", "softmax"):
        raise _invalid("activation", "one of 'sigmoid', 'softmax'", activation)
    if activation == "softmax" and n_labels < 2:
        raise _invalid(
            "activation",
            "'sigmoid' when n_labels=1 (a softmax over one channel is "
            "constant 1)",
            activation,
        )
    return shape, n_labels, n_base_filters, depth, float(dropout_rate)


# ------------------------------------------------------------ shared builder
def build_encoder_decoder(
    inputs, n_labels, n_base_filters, depth, dropout_rate, activation,
    residual, n_segmentation_levels, name, deep_supervision=False,
):
    """The encoder-decoder shared by `basic_unet`, `vnet` and `isensee2017`.

    With `n_segmentation_levels = k > 1`, the `k` finest decoder levels each
    give a 1x1x1 segmentation map; starting at the coarsest, the running sum
    is up-sampled x2 and added to the next finer map (Isensee et al. 2017's
    deep supervision), and the activation is applied to the full-resolution
    sum. With `k = 1` a single 1x1x1 head follows the finest level.

    `deep_supervision=True` (k > 1) outputs, besides the full-resolution
    map, the activated running sum at each of the `k - 1` coarser levels
    (level l at 1/2^l of the input size): a list, finest first.
    """
    skips, filters = apply_encoder(
        inputs, n_base_filters, depth, dropout_rate, residual
    )
    x = skips[-1]
    segmentations = {}
    for level in range(depth - 2, -1, -1):
        x = apply_decoder_level(x, skips[level], filters[level], level)
        if 1 < n_segmentation_levels and level < n_segmentation_levels:
            segmentations[level] = layers.Conv3D(
                n_labels, 1, name=f"dec{level}_segmentation"
            )(x)
    if n_segmentation_levels == 1:
        outputs = apply_head(x, n_labels, activation)
    else:
        y = None
        coarse = []
        for level in range(n_segmentation_levels - 1, -1, -1):
            seg = segmentations[level]
            y = seg if y is None else layers.Add(name=f"deep_sum{level}")([y, seg])
            if level > 0:
                if deep_supervision:
                    coarse.insert(0, layers.Activation(
                        activation, dtype="float32", name=f"deep{level}_act")(y))
                y = layers.UpSampling3D(size=2, name=f"deep_sum{level}_upsample")(y)
        outputs = layers.Activation(activation, dtype="float32", name="head_act")(y)
        if deep_supervision:
            outputs = [outputs, *coarse]
    return keras.Model(inputs, outputs, name=name)
