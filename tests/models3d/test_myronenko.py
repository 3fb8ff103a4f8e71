"""`myronenko2018`: parameter count from Myronenko's table (scaled), the
trilinear up-sampling against scipy, the VAE terms against a numpy
transcription of the paper's losses, and the branch-free inference model."""

import math

import keras
import numpy as np
import pytest
from scipy import ndimage

import keras_seglosses
import models3d
from models3d import LinearUpSampling3D, VAELoss, VAESampling


def conv(k, cin, cout):
    return k**3 * cin * cout + cout


def resblock(f):  # (GroupNorm: gamma, beta; Conv3D 3x3x3) twice
    return 2 * (2 * f + conv(3, f, f))


def myronenko_params(shape=(64, 64, 64, 1), labels=1, base=4, vae=True):
    f = [base * 2**l for l in range(4)]
    total = conv(3, shape[-1], base)
    for l, blocks in enumerate((1, 2, 2, 4)):
        if l:
            total += conv(3, f[l - 1], f[l])
        total += blocks * resblock(f[l])
    for l in range(3):
        total += conv(1, f[l + 1], f[l]) + resblock(f[l])
    total += conv(1, base, labels)
    if vae:
        vd, latent = base // 2, 4 * base
        flat = vd * math.prod(s // 16 for s in shape[:3])
        total += 2 * f[3] + conv(3, f[3], vd)  # VD: GroupNorm, Conv stride 2
        total += 2 * (flat * latent + latent)  # mean and log-variance
        total += latent * flat + flat + conv(1, vd, f[3])  # VU
        for l in range(3):
            total += conv(1, f[l + 1], f[l]) + resblock(f[l])
        total += conv(1, base, shape[-1])
    return total


def test_parameter_count_at_paper_settings():
    model = models3d.myronenko2018()
    assert model.output_shape == (None, 64, 64, 64, 1)
    assert model.count_params() == myronenko_params() == 322228
    bare = models3d.myronenko2018(vae=False)
    assert bare.count_params() == myronenko_params(vae=False)
    # The inference model is the segmentation path, with the same names.
    shared = {l.name for l in bare.layers}
    assert shared <= {l.name for l in model.layers}
    assert not any("dropout" in l.name for l in model.layers)


def test_paper_sized_configuration_counts():
    # Myronenko's BraTS setting scaled down in space: 4 input channels,
    # 3 labels, 32 initial filters.
    model = models3d.myronenko2018(input_shape=(32, 32, 32, 4), n_labels=3, n_base_filters=32)
    assert model.count_params() == myronenko_params((32, 32, 32, 4), 3, 32)
    assert model.get_layer("vae_mu").units == 128
    assert model.get_layer("vae_down_conv").filters == 16
    assert model.get_layer("enc0_block1_gn1").groups == 8


@pytest.mark.backends
def test_linear_upsampling_matches_scipy(jit):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 2)).astype("float32")
    layer = LinearUpSampling3D()
    got = keras.ops.convert_to_numpy(jit(layer)(x))
    # Half-pixel centres with edge clamping = scipy's grid mode, 'nearest'.
    expected = ndimage.zoom(x, (1, 2, 2, 2, 1), order=1, mode="nearest", grid_mode=True)
    assert got.shape == (2, 6, 8, 10, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert layer.compute_output_shape((None, 3, 4, 5, 2)) == (None, 6, 8, 10, 2)
    # Under mixed precision the layer computes in, and returns, float16.
    half = LinearUpSampling3D(dtype="mixed_float16")(x)
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(half), expected, rtol=2e-3, atol=2e-3)


def vae_terms(image, reconstruction, mu, log_var):
    """Myronenko 2018, Eq. for L_L2 (as a voxel mean) and L_KL."""
    l2 = np.mean((image - reconstruction) ** 2)
    n = np.prod(image.shape[1:4])
    kl = np.mean(np.sum(mu**2 + np.exp(log_var) - log_var - 1, axis=-1)) / n
    return l2, kl


@pytest.mark.backends
def test_vae_loss_layer_against_numpy(jit):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 4, 4, 4, 2)).astype("float32")
    recon = rng.normal(size=image.shape).astype("float32")
    mu = rng.normal(size=(2, 5)).astype("float32")
    log_var = rng.normal(size=(2, 5)).astype("float32")
    seg = rng.normal(size=(2, 4, 4, 4, 1)).astype("float32")
    layer = VAELoss(l2_weight=0.3, kl_weight=0.7)
    out = layer([seg, image, recon, mu, log_var])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), seg)
    l2, kl = vae_terms(image, recon, mu, log_var)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.losses[0]), 0.3 * l2 + 0.7 * kl, rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"`kl_weight`.*>= 0.*kl_weight=-1"):
        VAELoss(kl_weight=-1)


@pytest.mark.backends
def test_model_loss_is_segmentation_plus_vae_terms():
    model = models3d.myronenko2018(input_shape=(16, 16, 16, 1), n_base_filters=2)
    model.compile(loss=keras_seglosses.RewardPenaltyDice())
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(2, 16, 16, 16, 1)).astype("float32")
    labels = (x > 0.5).astype("float32")
    y = keras_seglosses.pack_targets(labels, 2 * labels - 1)
    probe = keras.Model(
        model.input,
        [model.get_layer(n).output for n in ("vae_reconstruction", "vae_mu", "vae_log_var")],
    )
    recon, mu, log_var = (keras.ops.convert_to_numpy(t) for t in probe(x, training=False))
    y_pred = model(x, training=False)
    total = keras.ops.convert_to_numpy(model.compute_loss(x=x, y=y, y_pred=y_pred))
    seg = keras.ops.convert_to_numpy(keras_seglosses.RewardPenaltyDice()(y, y_pred))
    l2, kl = vae_terms(x, recon, mu, log_var)
    np.testing.assert_allclose(total, seg + 0.1 * l2 + 0.1 * kl, rtol=1e-5)


@pytest.mark.backends
def test_sampling_layer():
    mu = np.full((3, 4), 2.0, "float32")
    log_var = np.full((3, 4), np.log(0.25), "float32")
    layer = VAESampling(seed=3)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer([mu, log_var], training=False)), mu
    )
    z = keras.ops.convert_to_numpy(layer([mu, log_var], training=True))
    z2 = keras.ops.convert_to_numpy(layer([mu, log_var], training=True))
    assert not np.array_equal(z, z2)  # fresh noise per call
    big = np.zeros((2000, 8), "float32")
    draws = keras.ops.convert_to_numpy(
        VAESampling(seed=4)([big + 2.0, big + np.log(0.25)], training=True)
    )
    assert abs(draws.mean() - 2.0) < 0.02 and abs(draws.std() - 0.5) < 0.02
    clone = VAESampling.from_config(layer.get_config())
    assert clone.seed == 3


def test_myronenko_input_divisibility():
    with pytest.raises(ValueError, match=r"`input_shape`.*divisible by .*16"):
        models3d.myronenko2018(input_shape=(24, 24, 24, 1))
    # Without the VAE branch the encoder's factor 8 suffices.
    assert models3d.myronenko2018(input_shape=(24, 24, 24, 1), vae=False).output_shape == (
        None, 24, 24, 24, 1,
    )


def test_branch_free_model_takes_the_weights_by_name_and_predicts_the_same():
    kwargs = dict(input_shape=(16, 16, 16, 1), n_base_filters=2)
    model = models3d.myronenko2018(**kwargs)
    bare = models3d.myronenko2018(vae=False, **kwargs)
    for layer in bare.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).normal(size=(2, 16, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bare(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-6, atol=1e-7,
    )
    assert not bare.losses and len(model.losses) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vae=False, l2_weight=-1), r"`l2_weight`.*>= 0.*l2_weight=-1"),
        (dict(kl_weight=float("nan")), r"`kl_weight`.*kl_weight=nan"),
        (dict(vae="yes"), r"`vae`.*bool.*vae='yes'"),
        (dict(latent_dim=0), r"`latent_dim`.*>= 1"),
    ],
)
def test_myronenko_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models3d.myronenko2018(input_shape=(16, 16, 16, 1), **kwargs)


def test_wiring_follows_the_paper():
    # Myronenko 2018, Tables 1-2: decoder levels add the encoder output of
    # their level after the 1x1x1 conv + trilinear up-sampling; the VAE
    # branch starts at the encoder end point (the last of the 4 blocks of
    # level 3) and ends with a 1x1x1 conv to the input's channels.
    model = models3d.myronenko2018(input_shape=(16, 16, 16, 2), n_base_filters=8)
    last_block = {0: 1, 1: 2, 2: 2, 3: 4}
    for level in range(3):
        add = model.get_layer(f"dec{level}_add")
        assert add.input[0] is model.get_layer(f"dec{level}_up_upsample").output
        skip = model.get_layer(f"enc{level}_block{last_block[level]}_add").output
        assert add.input[1] is skip
        assert isinstance(model.get_layer(f"dec{level}_up_upsample"), LinearUpSampling3D)
        assert model.get_layer(f"dec{level}_up_conv").kernel_size == (1, 1, 1)
    bottom = model.get_layer("enc3_block4_add").output
    assert model.get_layer("vae_down_gn").input is bottom
    assert model.get_layer("vae_down_conv").strides == (2, 2, 2)
    assert model.get_layer("vae_reconstruction").filters == 2
    assert isinstance(model.get_layer("vae_sampling"), VAESampling)
    # Pre-activation ResNet block: GroupNorm -> ReLU -> Conv3D, twice, + id.
    names = [l.name for l in model.layers if l.name.startswith("enc1_block2_")]
    assert names == [
        "enc1_block2_gn1", "enc1_block2_relu1", "enc1_block2_conv1",
        "enc1_block2_gn2", "enc1_block2_relu2", "enc1_block2_conv2",
        "enc1_block2_add",
    ]
    assert model.get_layer("enc1_block2_add").input[0] is model.get_layer("enc1_block1_add").output
