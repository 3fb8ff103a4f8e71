"""`load_original_weights` against files written by a real Keras 2 writer.

`tf_keras` (Keras 2.x) builds, independently of models3d, the RPDL original's
U-net, V-net and Isensee17 from the architecture facts (SPEC.md section 6,
written here with Keras 2's default layer names and the original's layer
creation order), saves them as HDF5 and we check that our models, after
loading, predict the same. This checks the loader and, layer for layer, the
architectures themselves, at the paper's depth 5 (on a small input).
"""

import h5py
import keras
import numpy as np
import pytest

import models3d
from models3d.weights import read_keras2_weights

BACKEND = keras.backend.backend()
SHAPE = (16, 16, 16, 1)
DEPTH = 5
BASE = 2

needs_tf_keras = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf_keras (Keras 2) needs TensorFlow"
)


def keras2_model(kind, base=BASE, depth=DEPTH, n_labels=1, n_segmentation_levels=3):
    """The original's architecture written with Keras 2 (tf_keras)."""
    tf_keras = pytest.importorskip("tf_keras")
    L = tf_keras.layers

    def conv_block(x, n, kernel=3, strides=1):
        x = L.Conv3D(n, kernel, strides=strides, padding="same")(x)
        x = L.BatchNormalization()(x)
        return L.LeakyReLU()(x)

    inputs = L.Input(SHAPE)
    x, levels, filters = inputs, [], []
    for level in range(depth):
        n = base * 2**level
        entry = conv_block(x, n, strides=1 if level == 0 else 2)
        c = conv_block(entry, n)
        c = L.SpatialDropout3D(0.3)(c)
        c = conv_block(c, n)
        x = L.Add()([entry, c]) if kind in ("vnet", "isensee2017") else c
        levels.append(x)
        filters.append(n)
    segs = []
    for level in range(depth - 2, -1, -1):
        up = conv_block(L.UpSampling3D(2)(x), filters[level])
        x = L.Concatenate()([levels[level], up])
        x = conv_block(x, filters[level])
        x = conv_block(x, filters[level], kernel=1)
        # The original creates a 1x1x1 segmentation conv on each of the
        # finest levels for all three models; U-net and V-net only use the
        # finest, the others dangle and are not part of the saved model.
        if level < n_segmentation_levels:
            segs.insert(0, L.Conv3D(n_labels, 1)(x))
    if kind == "isensee2017":
        # Isensee et al. 2017: sum from the coarsest segmentation level,
        # up-sampling before each addition.
        out = None
        for level in reversed(range(n_segmentation_levels)):
            out = segs[level] if out is None else L.Add()([out, segs[level]])
            if level > 0:
                out = L.UpSampling3D(2)(out)
    else:
        out = segs[0]
    out = L.Activation("sigmoid")(out)
    model = tf_keras.Model(inputs, out)
    rng = np.random.default_rng(1)
    # Random weights everywhere (moving statistics included) at scales that
    # keep the signal alive through the network, so that a misplaced layer
    # shows in the predictions.
    def draw(w):
        shape, name = tuple(w.shape), w.name
        if "kernel" in name:
            return rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        if "gamma" in name or "moving_variance" in name:
            return rng.uniform(0.5, 1.5, shape)
        return rng.normal(0, 0.1, shape)

    model.set_weights([draw(w).astype("float32") for w in model.weights])
    return model


def ours(kind, base=BASE, depth=DEPTH):
    return models3d.get(kind, input_shape=SHAPE, n_base_filters=base, depth=depth)


@needs_tf_keras
@pytest.mark.parametrize("kind", ["unet", "vnet", "isensee2017"])
def test_predictions_match_keras2_model(kind, tmp_path):
    reference = keras2_model(kind)
    path = tmp_path / f"{kind}.h5"
    reference.save(path)  # whole model, as the original's ModelCheckpoint
    with h5py.File(path, "r") as f:
        assert "model_weights" in f
    x = np.random.default_rng(2).normal(size=(2, *SHAPE)).astype("float32")
    expected = reference(x, training=False).numpy()

    model = ours(kind)
    assert models3d.load_original_weights(model, path) is model
    got = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # And the predictions are not trivially equal (weights did matter).
    assert np.std(expected) > 1e-2


@needs_tf_keras
def test_weights_only_file_and_keras2_layer_names(tmp_path):
    reference = keras2_model("unet")
    path = tmp_path / "weights.h5"
    reference.save_weights(path)  # root-level layout, no `model_weights`
    saved = read_keras2_weights(path)
    assert saved[0][0].startswith("conv3d")
    assert saved[1][0].startswith("batch_normalization")
    model = models3d.load_original_weights(ours("unet"), path)
    x = np.random.default_rng(3).normal(size=(1, *SHAPE)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x, training=False)),
        reference(x, training=False).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


@needs_tf_keras
def test_mismatch_errors_leave_model_unchanged(tmp_path):
    path = tmp_path / "unet.h5"
    keras2_model("unet").save(path)

    model = ours("unet", base=3)
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"enc0_entry_conv.*\(3, 3, 3, 1, 3\).*\(3, 3, 3, 1, 2\)"):
        models3d.load_original_weights(model, path)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)

    # Same weights, different architecture: the V-net's residual additions
    # have no weights, so only the saved architecture tells them apart.
    vnet = ours("vnet")
    before = [np.array(w) for w in vnet.get_weights()]
    with pytest.raises(ValueError, match=r"architectures differ.*Add \(file 0, model 5\)"):
        models3d.load_original_weights(vnet, path)
    for a, b in zip(before, vnet.get_weights()):
        np.testing.assert_array_equal(a, b)
    models3d.load_original_weights(vnet, path, check_structure=False)

    shallow = ours("unet", depth=2)
    with pytest.raises(ValueError, match=r"architectures differ.*Conv3D \(file 28, model 10\)"):
        models3d.load_original_weights(shallow, path)
    with pytest.raises(ValueError, match="file has 55 layers with weights, the model has 19"):
        models3d.load_original_weights(shallow, path, check_structure=False)


def write_keras2_layout(path, layers, root=False, chunked=False):
    """Keras 2's HDF5 layout written with h5py (for the non-TF backends and
    the chunked-attribute case)."""
    with h5py.File(path, "w") as f:
        g = f if root else f.create_group("model_weights")
        names = [name.encode() for name, _ in layers]
        if chunked:
            g.attrs["layer_names0"] = names[: len(names) // 2]
            g.attrs["layer_names1"] = names[len(names) // 2 :]
        else:
            g.attrs["layer_names"] = names
        for name, arrays in layers:
            lg = g.create_group(name)
            wnames = [f"{name}/w{i}:0".encode() for i in range(len(arrays))]
            lg.attrs["weight_names"] = wnames
            for w, a in zip(wnames, arrays):
                lg.create_dataset(w.decode(), data=a)


@pytest.mark.backends
@pytest.mark.parametrize("root,chunked", [(False, False), (True, True)])
def test_positional_loading_from_hand_written_file(tmp_path, root, chunked):
    model = models3d.basic_unet(input_shape=(8, 8, 8, 1), n_base_filters=2, depth=2)
    rng = np.random.default_rng(4)
    layers = [("input_1", [])]
    expected = []
    for i, layer in enumerate(l for l in model.layers if l.weights):
        arrays = [rng.normal(size=w.shape).astype("float32") for w in layer.weights]
        layers.append((f"keras2_layer_{i}", arrays))
        expected.extend(arrays)
    path = tmp_path / "w.h5"
    write_keras2_layout(path, layers, root=root, chunked=chunked)
    models3d.load_original_weights(model, path)
    for a, b in zip(expected, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unreadable_and_foreign_files_name_the_path(tmp_path):
    model = models3d.basic_unet(input_shape=(8, 8, 8, 1), n_base_filters=2, depth=2)
    bad = tmp_path / "not_hdf5.h5"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not_hdf5.h5"):
        models3d.load_original_weights(model, bad)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.h5.*layer_names"):
        models3d.load_original_weights(model, foreign)
    with pytest.raises(ValueError, match="missing.h5"):
        models3d.load_original_weights(model, tmp_path / "missing.h5")
