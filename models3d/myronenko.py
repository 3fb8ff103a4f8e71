"""Myronenko 2018 (BraTS 2018 winner): ResNet encoder, decoder, VAE branch."""

import math
import numbers

import keras
from keras import layers, ops

from models3d.blocks import _invalid, check_arguments, check_int, register

# Myronenko's encoder: ResNet blocks per level, filters doubling each level.
ENCODER_BLOCKS = (1, 2, 2, 4)


@register
class LinearUpSampling3D(layers.Layer):
    """Trilinear x2 up-sampling ("UpLinear" in Myronenko 2018).

    Half-pixel centres with edge clamping (as `align_corners=False` in
    PyTorch and `tf.image.resize`): along each spatial axis

        out[2i]     = 0.75 x[i] + 0.25 x[max(i - 1, 0)]
        out[2i + 1] = 0.75 x[i] + 0.25 x[min(i + 1, n - 1)].

    Keras' `UpSampling3D` is nearest-neighbour only. Trilinear
    interpolation is separable, so this layer runs two bilinear
    `keras.ops.image.resize` passes (H and W on `(batch * D, H, W, C)`
    slices, then D on `(batch, D, 4 H W, C)`, where bilinear resizing to the
    same width is the identity): each backend's native resize kernel, which
    trains two to three times faster than interleaving shifted copies with
    `ops.stack`, and it compiles on every backend.

    Shapes: `(batch, D, H, W, C)` -> `(batch, 2D, 2H, 2W, C)`; static
    spatial sizes.

    Example:

    >>> import numpy as np
    >>> x = np.arange(2, dtype="float32").reshape(1, 2, 1, 1, 1)
    >>> y = LinearUpSampling3D()(x)
    >>> [round(float(v), 2) for v in np.ravel(y)[::4]]
    [0.0, 0.25, 0.75, 1.0]
    """

    def call(self, x):
        _, d, h, w, c = x.shape

        def resize(images, size):
            # channels_last whatever the global image_data_format; TF's
            # resize returns float32 for float16 input, hence the cast.
            y = ops.image.resize(
                images, size, interpolation="bilinear", antialias=False,
                data_format="channels_last",
            )
            return ops.cast(y, x.dtype)

        # -1 keeps the batch size free.
        y = resize(ops.reshape(x, (-1, h, w, c)), (2 * h, 2 * w))
        y = resize(ops.reshape(y, (-1, d, 4 * h * w, c)), (2 * d, 4 * h * w))
        return ops.reshape(y, (-1, 2 * d, 2 * h, 2 * w, c))

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis in (1, 2, 3):
            shape[axis] = None if shape[axis] is None else 2 * shape[axis]
        return tuple(shape)


@register
class VAESampling(layers.Layer):
    """Reparameterized draw `z = mu + exp(log_var / 2) * eps`, eps ~ N(0, I).

    Noise comes from a `keras.random.SeedGenerator`, so
    `keras.utils.set_random_seed` (or `seed`) makes training reproducible
    on every backend. Outside training the layer returns `mu`, so
    inference is deterministic.

    Args:
        seed: int or `None`. Defaults to `None` (the global seed).

    Call arguments:
        inputs: `[mu, log_var]`, each `(batch, latent_dim)`.
        training: bool.

    Example:

    >>> import numpy as np
    >>> mu, log_var = np.ones((2, 3), "float32"), np.zeros((2, 3), "float32")
    >>> z = VAESampling(seed=1)([mu, log_var], training=False)
    >>> tuple(z.shape)
    (2, 3)
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mu, log_var = inputs
        if not training:
            return mu
        eps = keras.random.normal(
            ops.shape(mu), dtype=mu.dtype, seed=self.seed_generator
        )
        return mu + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@register
class VAELoss(layers.Layer):
    """Adds Myronenko's VAE terms to the model's losses; passes `x` through.

    `self.add_loss(l2_weight * L2 + kl_weight * KL)` with, per sample and
    then averaged over the batch (as Keras averages the segmentation loss),

        L2 = 1 / (N C) sum_voxels,channels (image - reconstruction)^2
        KL = 1 / N sum_k (mu_k^2 + sigma_k^2 - log sigma_k^2 - 1),
        sigma_k^2 = exp(log_var_k),

    N the number of image voxels (D * H * W) and C the image channels.

    Normalization, against the paper: its `L_KL` is taken as written (the
    1/N and no factor 1/2 of the textbook Gaussian KL). Its `L_L2` is
    written as the squared norm `||I_input - I_pred||^2`, a sum over all
    N * C values; a sum would grow with the input size and, at the paper's
    160 x 192 x 128 x 4 input, outweigh the Dice term (at most 1) by orders
    of magnitude whatever its 0.1 weight, so L2 here is the mean, on the
    scale of the segmentation loss for any input size. Multiply `l2_weight`
    by N * C to get the literal sum.

    The layer returns its first input unchanged: placed on the segmentation
    path it keeps the VAE branch in the model while the segmentation stays
    the only output, so `model.compile(loss=RewardPenaltyDice())` trains
    `L = L_seg + 0.1 L2 + 0.1 KL`.

    Args:
        l2_weight: float >= 0. Defaults to `0.1`.
        kl_weight: float >= 0. Defaults to `0.1`.

    Call arguments:
        inputs: `[x, image, reconstruction, mu, log_var]`.

    Example:

    >>> import numpy as np
    >>> layer = VAELoss()
    >>> img = np.ones((1, 2, 2, 2, 1), "float32")
    >>> z = np.zeros((1, 4), "float32")
    >>> _ = layer([img, img, 0 * img, z, z])
    >>> round(float(layer.losses[0]), 4)          # 0.1 * mean((1 - 0)^2)
    0.1

    Reference:
        Myronenko, "3D MRI brain tumor segmentation using autoencoder
        regularization", BrainLes 2018: `L = L_dice + 0.1 L_L2 + 0.1 L_KL`.
    """

    def __init__(self, l2_weight=0.1, kl_weight=0.1, **kwargs):
        super().__init__(**kwargs)
        self.l2_weight = _check_weight("l2_weight", l2_weight)
        self.kl_weight = _check_weight("kl_weight", kl_weight)

    def call(self, inputs):
        x, image, reconstruction, mu, log_var = inputs
        image = ops.cast(image, "float32")
        reconstruction = ops.cast(reconstruction, "float32")
        mu = ops.cast(mu, "float32")
        log_var = ops.cast(log_var, "float32")
        l2 = ops.mean(ops.square(image - reconstruction))
        n_voxels = math.prod(image.shape[1:4])
        kl = ops.mean(
            ops.sum(ops.square(mu) + ops.exp(log_var) - log_var - 1.0, axis=-1)
        ) / n_voxels
        self.add_loss(self.l2_weight * l2 + self.kl_weight * kl)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {
            **super().get_config(),
            "l2_weight": self.l2_weight,
            "kl_weight": self.kl_weight,
        }


def _check_weight(arg, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= value < math.inf
    ):
        raise _invalid(arg, "a finite float >= 0", value)
    return float(value)


def _groups(filters):
    # The paper's 8 groups, or fewer where the channels do not split into 8.
    return math.gcd(8, filters)


def apply_resnet_block(x, filters, name="resnet_block"):
    """Myronenko's pre-activation ResNet block:
    (GroupNorm -> ReLU -> Conv3D 3x3x3) twice, plus the identity."""
    shortcut = x
    for i in (1, 2):
        x = layers.GroupNormalization(_groups(filters), name=f"{name}_gn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
        x = layers.Conv3D(filters, 3, padding="same", name=f"{name}_conv{i}")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def apply_up_block(x, filters, name="up"):
    """1x1x1 Conv3D to `filters`, then trilinear x2 up-sampling."""
    x = layers.Conv3D(filters, 1, name=f"{name}_conv")(x)
    return LinearUpSampling3D(name=f"{name}_upsample")(x)


def apply_vae_branch(x, image, n_base_filters, latent_dim, seed, name="vae"):
    """VAE branch: encoder end point -> latent sample -> reconstruction.

    VD: GroupNorm, ReLU, Conv3D(n_base_filters / 2, stride 2), Dense(2 *
    latent_dim) split into mean and log-variance; sample; VU: Dense, ReLU,
    reshape, 1x1x1 conv, x2 up; then three levels of (1x1x1 conv, x2 up,
    ResNet block) and a 1x1x1 conv back to the image's channels.

    Returns:
        `(reconstruction, mu, log_var)`.
    """
    channels = x.shape[-1]
    vd_filters = max(1, n_base_filters // 2)
    x = layers.GroupNormalization(_groups(channels), name=f"{name}_down_gn")(x)
    x = layers.ReLU(name=f"{name}_down_relu")(x)
    x = layers.Conv3D(
        vd_filters, 3, strides=2, padding="same", name=f"{name}_down_conv"
    )(x)
    small = tuple(x.shape[1:])
    x = layers.Flatten(name=f"{name}_flatten")(x)
    mu = layers.Dense(latent_dim, name=f"{name}_mu")(x)
    log_var = layers.Dense(latent_dim, name=f"{name}_log_var")(x)
    z = VAESampling(seed=seed, name=f"{name}_sampling")([mu, log_var])
    x = layers.Dense(math.prod(small), name=f"{name}_up_dense")(z)
    x = layers.ReLU(name=f"{name}_up_relu")(x)
    x = layers.Reshape(small, name=f"{name}_up_reshape")(x)
    x = apply_up_block(x, channels, name=f"{name}_up")
    for level in (2, 1, 0):
        filters = n_base_filters * 2**level
        x = apply_up_block(x, filters, name=f"{name}_dec{level}_up")
        x = apply_resnet_block(x, filters, name=f"{name}_dec{level}_block")
    reconstruction = layers.Conv3D(
        image.shape[-1], 1, name=f"{name}_reconstruction"
    )(x)
    return reconstruction, mu, log_var


def myronenko2018(
    input_shape=(64, 64, 64, 1),
    n_labels=1,
    n_base_filters=4,
    activation="sigmoid",
    vae=True,
    latent_dim=None,
    l2_weight=0.1,
    kl_weight=0.1,
    seed=None,
    name="myronenko2018",
):
    """Myronenko 2018: ResNet encoder-decoder with a VAE regularization branch.

    Encoder: Conv3D 3x3x3 to `n_base_filters`, then levels of 1, 2, 2, 4
    ResNet blocks (GroupNorm -> ReLU -> Conv3D, twice, plus identity) with
    `n_base_filters * 2**l` filters, a stride-2 Conv3D between levels.
    Decoder: per level a 1x1x1 Conv3D halving the filters, trilinear x2
    up-sampling, the encoder output of the level added, one ResNet block;
    a 1x1x1 Conv3D and the activation give the segmentation. With
    `vae=True` a VAE branch reconstructs the input from a latent sample of
    the encoder end point, and the model adds `l2_weight * L2 + kl_weight *
    KL` to its losses (see `VAELoss`): the segmentation is its only output,
    and `compile(loss=...)` with any segmentation loss trains the paper's
    `L = L_seg + 0.1 L2 + 0.1 KL`. No dropout (as in the RPDL paper).

    The paper's sizes (32 initial filters, 16 VD filters, latent 128) are
    scaled with `n_base_filters` (`n_base_filters / 2` VD filters, latent
    `4 * n_base_filters`). GroupNorm uses 8 groups, or `gcd(8, channels)`
    where the channels do not split into 8. The paper's VD Dense(256) gives
    "128 to represent mean, and 128 to represent std"; here two Dense
    layers give the mean and the log-variance (the same linear map, split;
    `exp` keeps sigma positive without a constraint).

    The VAE branch does not change the segmentation at inference, and the
    segmentation path has the same layer names with and without it, so a
    trained model's weights move to the branch-free one by name:

    ```python
    bare = myronenko2018(vae=False)  # same other arguments as `model`
    for layer in bare.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    ```

    Shapes: input `(batch, *input_shape)`; output
    `(batch, D, H, W, n_labels)`.

    Args:
        input_shape: `(D, H, W, channels)`, spatial sizes divisible by 16
            (8 without the VAE branch). Defaults to `(64, 64, 64, 1)`.
        n_labels: output channels. Defaults to `1`.
        n_base_filters: filters of the first level (32 in the paper).
            Defaults to `4`.
        activation: `"sigmoid"` or `"softmax"` (`n_labels >= 2`). Defaults
            to `"sigmoid"`.
        vae: bool, build the VAE branch (training); `False` builds the
            segmentation path only (inference). Defaults to `True`.
        latent_dim: size of the VAE latent. Defaults to `None`
            (`4 * n_base_filters`).
        l2_weight: weight of the reconstruction term. Defaults to `0.1`.
        kl_weight: weight of the KL term. Defaults to `0.1`.
        seed: seed of the latent sampling. Defaults to `None` (global seed).
        name: model name. Defaults to `"myronenko2018"`.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> model = myronenko2018(input_shape=(16, 16, 16, 1))
    >>> model.output_shape
    (None, 16, 16, 16, 1)

    Reference:
        He et al., IJCNN 2020, section V "Model details" [000]; Myronenko,
        "3D MRI brain tumor segmentation using autoencoder regularization",
        BrainLes 2018.
    """
    if not isinstance(vae, bool):
        raise _invalid("vae", "a bool", vae)
    # Validated with or without the branch, so that a typo never waits
    # for the training configuration to surface.
    l2_weight = _check_weight("l2_weight", l2_weight)
    kl_weight = _check_weight("kl_weight", kl_weight)
    depth = len(ENCODER_BLOCKS) + (1 if vae else 0)
    shape, n_labels, n_base_filters, _, _ = check_arguments(
        input_shape, n_labels, n_base_filters, depth, activation
    )
    latent_dim = (
        4 * n_base_filters if latent_dim is None
        else check_int("latent_dim", latent_dim, 1)
    )
    inputs = keras.Input(shape, name="image")
    x = layers.Conv3D(n_base_filters, 3, padding="same", name="init_conv")(inputs)
    skips = []
    for level, n_blocks in enumerate(ENCODER_BLOCKS):
        filters = n_base_filters * 2**level
        if level > 0:
            x = layers.Conv3D(
                filters, 3, strides=2, padding="same", name=f"enc{level}_down"
            )(x)
        for b in range(n_blocks):
            x = apply_resnet_block(x, filters, name=f"enc{level}_block{b + 1}")
        skips.append(x)
    bottom = x
    for level in range(len(ENCODER_BLOCKS) - 2, -1, -1):
        filters = n_base_filters * 2**level
        x = apply_up_block(x, filters, name=f"dec{level}_up")
        x = layers.Add(name=f"dec{level}_add")([x, skips[level]])
        x = apply_resnet_block(x, filters, name=f"dec{level}_block")
    x = layers.Conv3D(n_labels, 1, name="head_conv")(x)
    if vae:
        reconstruction, mu, log_var = apply_vae_branch(
            bottom, inputs, n_base_filters, latent_dim, seed
        )
        x = VAELoss(l2_weight, kl_weight, name="vae_loss")(
            [x, inputs, reconstruction, mu, log_var]
        )
    outputs = layers.Activation(activation, dtype="float32", name="head_act")(x)
    return keras.Model(inputs, outputs, name=name)
