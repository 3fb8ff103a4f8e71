"""`cmseg.predict`: `.keras` and original `.h5` models, outputs against a
direct computation, input validation."""

import os

import h5py
import keras
import numpy as np
import pytest
from _references import CT_PREPROCESSING, np_encode_input, write_affine_run

from cmseg.cli import main
from cmseg.predict import encode, load_volumes

SIZE = 16


def _model(**kw):
    import models3d

    keras.utils.set_random_seed(0)
    settings = dict(input_shape=(SIZE, SIZE, SIZE, 1), n_base_filters=2, depth=2)
    settings.update(kw)
    return models3d.get("unet", **settings)


def _png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_predict_keras_model(tmp_path):
    model = _model()
    model_path = str(tmp_path / "m.keras")
    model.save(model_path)
    x = np.random.default_rng(0).integers(0, 14, size=(2, SIZE, SIZE, SIZE)).astype(np.int8)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "x.npy"),
                 "--out", str(out)]) == 0
    prob = np.load(out / "probability.npy")
    region = np.load(out / "region.npy")
    want = keras.ops.convert_to_numpy(model(np_encode_input(x, "scaled"), training=False))[..., 0]
    assert prob.shape == region.shape == (2, SIZE, SIZE, SIZE)
    np.testing.assert_allclose(prob, want, atol=1e-5)
    np.testing.assert_array_equal(region, (prob > 0.5).astype(np.int8))
    assert set(np.unique(region)) <= {0, 1}
    assert _png(out / "slices.png")


def _write_keras2_h5(model, path):
    """A Keras 2 weights file: `layer_names` at the root, one group per layer
    with `weight_names` and a dataset per weight (Keras 2's HDF5 layout)."""
    layers = [layer for layer in model.layers if layer.weights]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [f"layer_{i}".encode() for i in range(len(layers))]
        f.attrs["keras_version"] = b"2.2.4"
        for i, layer in enumerate(layers):
            g = f.create_group(f"layer_{i}")
            names = [f"layer_{i}/w{j}:0".encode() for j in range(len(layer.weights))]
            g.attrs["weight_names"] = names
            for name, w in zip(names, layer.get_weights()):
                g.create_dataset(name.decode(), data=w)


def test_predict_original_h5_single_volume(tmp_path, capsys):
    source = _model(n_base_filters=4, depth=5)  # the original's settings
    _write_keras2_h5(source, tmp_path / "unet_bone1_heatmapdice.h5")
    x = np.random.default_rng(1).integers(0, 14, size=(SIZE, SIZE, SIZE)).astype(np.int16)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tmp_path / "unet_bone1_heatmapdice.h5"),
                 "--input", str(tmp_path / "x.npy"), "--out", str(out)]) == 0
    prob = np.load(out / "probability.npy")
    want = keras.ops.convert_to_numpy(
        source(np_encode_input(x[None], "scaled"), training=False))[..., 0]
    np.testing.assert_allclose(prob, want, atol=1e-5)
    assert _png(out / "slices.png")
    # The wrong architecture for the file: a usage error naming the file.
    h5 = tmp_path / "unet_bone1_heatmapdice.h5"
    before = h5.read_bytes()
    assert main(["predict", "--model", str(h5), "--architecture", "isensee2017", "--input",
                 str(tmp_path / "x.npy"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert f"--model {h5}: not loadable as an original isensee2017 model" in err
    assert "--architecture" in err
    assert h5.read_bytes() == before and not os.path.exists(tmp_path / "o2")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4), np.int8), "wrong shape"),
        (np.full((SIZE,) * 3, 20, np.int8), "label out of range"),
        (np.full((SIZE,) * 3, 0.5, np.float32), "wrong dtype"),
    ],
)
def test_bad_input_volumes(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ValueError, match=message):
        load_volumes(str(tmp_path / "x.npy"))


def test_input_errors_exit_2(tmp_path, capsys):
    model_path = str(tmp_path / "m.keras")
    _model().save(model_path)
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 8, 8, 8), np.int8))
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "Expected one volume (D, H, W)" in capsys.readouterr().err
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "o"), "--overlap", "1.0"]) == 2
    assert "--overlap: expected a fraction in [0, 1)" in capsys.readouterr().err
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "none.npy"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "file missing" in capsys.readouterr().err
    (tmp_path / "m.pt").write_text("x")
    np.save(tmp_path / "ok.npy", np.zeros((SIZE,) * 3, np.int8))
    assert main(["predict", "--model", str(tmp_path / "m.pt"), "--input",
                 str(tmp_path / "ok.npy"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown format" in capsys.readouterr().err
    (tmp_path / "bad.keras").write_bytes(b"not a zip file")
    assert main(["predict", "--model", str(tmp_path / "bad.keras"), "--input",
                 str(tmp_path / "ok.npy"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'bad.keras'}: unreadable as a Keras model" in err
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "bad.npy"),
                 "--out", str(tmp_path / "o")]) == 2
    assert f"--input {tmp_path / 'bad.npy'}: unreadable" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
    assert (tmp_path / "bad.keras").read_bytes() == b"not a zip file"  # inputs untouched


def test_other_sizes_slide_windows_with_tta_and_post_processing(tmp_path, rng):
    """A volume of another size than the model's input: sliding windows
    (the output has the input's shape); flips TTA and the largest
    component run on it."""
    from scipy import ndimage

    model_path = str(tmp_path / "m.keras")
    _model().save(model_path)
    x = rng.integers(0, 14, (21, 16, 19)).astype(np.int8)
    np.save(tmp_path / "odd.npy", x)
    out = tmp_path / "o"
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "odd.npy"),
                 "--out", str(out), "--tta", "flips", "--keep-largest"]) == 0
    region, prob = np.load(out / "region.npy"), np.load(out / "probability.npy")
    assert region.shape == prob.shape == (1, 21, 16, 19)
    labels, n = ndimage.label(region[0], structure=np.ones((3, 3, 3)))
    assert n <= 1
    np.testing.assert_array_equal(region[0] > 0, (prob[0] > 0.5) if n == 0 else region[0] > 0)


def test_encode_onehot():
    x = np.array([[0, 13, 5]])
    np.testing.assert_array_equal(encode(x, "onehot").argmax(-1), x)
    np.testing.assert_allclose(encode(x, "scaled")[..., 0], x / 6.5 - 1)
    with pytest.raises(ValueError, match="encoding"):
        encode(x, "raw")


# NIfTI and NRRD inputs: a label volume of odd size on an anisotropic,
# rotated grid away from the origin, written by nibabel or pynrrd directly.
ODD = (17, 21, 13)


def _grid_affine():
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.5, 0.7, 1.3])
    affine[:3, 3] = (-40.0, 12.5, 77.0)
    return affine


def _write_input(path, x, affine):
    import nibabel as nib
    import nrrd

    if str(path).endswith(".nrrd"):
        lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # Slicer's and ITK's world
        nrrd.write(str(path), x, {"space": "left-posterior-superior",
                                  "space directions": lps[:, :3].T, "space origin": lps[:, 3]})
    else:
        image = nib.Nifti1Image(x, affine)
        image.header.set_qform(affine, code=1)
        image.header["descrip"] = b"bone 7"
        nib.save(image, str(path))


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_predict_nifti_and_nrrd_keep_the_input_grid(tmp_path, rng, ext):
    """Outputs in the input's format, shape, affine and header; the same
    prediction as for the array given as .npy."""
    nib = pytest.importorskip("nibabel")
    nrrd = pytest.importorskip("nrrd")
    sitk = pytest.importorskip("SimpleITK")
    model_path = str(tmp_path / "m.keras")
    _model().save(model_path)
    x = rng.integers(0, 14, ODD).astype(np.int16)
    source = tmp_path / f"bone{ext}"
    _write_input(source, x, _grid_affine())
    np.save(tmp_path / "bone.npy", x)
    before = source.read_bytes()
    out = tmp_path / "out"
    assert main(["predict", "--model", model_path, "--input", str(source), "--out", str(out),
                 "--min-size", "2"]) == 0
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "bone.npy"),
                 "--out", str(tmp_path / "ref"), "--min-size", "2"]) == 0
    suffix = ".nii.gz" if ext == ".nii.gz" else ".nrrd"
    assert sorted(os.listdir(out)) == sorted([f"probability{suffix}", f"region{suffix}",
                                              "slices.png"])
    want_prob = np.load(tmp_path / "ref" / "probability.npy")[0]
    want_region = np.load(tmp_path / "ref" / "region.npy")[0]
    if ext == ".nii.gz":
        region, prob = nib.load(out / "region.nii.gz"), nib.load(out / "probability.nii.gz")
        assert region.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
        for image in (region, prob):
            assert image.shape == ODD
            np.testing.assert_allclose(image.affine, _grid_affine(), atol=1e-5)
            assert image.header["descrip"] == b"bone 7"
        region, prob = np.asanyarray(region.dataobj), np.asanyarray(prob.dataobj)
    else:
        region, header = nrrd.read(str(out / "region.nrrd"))
        prob, prob_header = nrrd.read(str(out / "probability.nrrd"))
        _, source_header = nrrd.read(str(source))
        assert region.dtype == np.uint8 and prob.dtype == np.float32
        for h in (header, prob_header):
            assert h["space"] == "left-posterior-superior"
            np.testing.assert_array_equal(h["space directions"], source_header["space directions"])
            np.testing.assert_array_equal(h["space origin"], source_header["space origin"])
    np.testing.assert_allclose(prob, want_prob, atol=1e-6)
    np.testing.assert_array_equal(region, want_region)
    # SimpleITK, an independent reader, puts input and output on one grid.
    a, b = sitk.ReadImage(str(source)), sitk.ReadImage(str(out / f"region{suffix}"))
    assert a.GetSize() == b.GetSize() == ODD
    np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-5)
    assert source.read_bytes() == before


def test_nifti_input_errors_exit_2(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    model_path = str(tmp_path / "m.keras")
    _model().save(model_path)

    def run(path):
        return main(["predict", "--model", model_path, "--input", str(path),
                     "--out", str(tmp_path / "o")])

    nib.save(nib.Nifti1Image(np.zeros(ODD + (2,), np.int16), np.eye(4)), tmp_path / "4d.nii.gz")
    assert run(tmp_path / "4d.nii.gz") == 2
    assert (f"--input {tmp_path / '4d.nii.gz'}: wrong shape. Expected one label volume (D, H, W). "
            "Received: shape (17, 21, 13, 2)") in capsys.readouterr().err
    nib.save(nib.Nifti1Image(np.full(ODD, 20, np.int16), np.eye(4)), tmp_path / "big.nii")
    assert run(tmp_path / "big.nii") == 2
    assert f"--input {tmp_path / 'big.nii'}: label out of range" in capsys.readouterr().err
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    assert run(tmp_path / "bad.nii.gz") == 2
    assert f"--input {tmp_path / 'bad.nii.gz'}: unreadable as NIfTI (" in capsys.readouterr().err
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: short\n")
    assert run(tmp_path / "bad.nrrd") == 2
    assert f"--input {tmp_path / 'bad.nrrd'}: unreadable as NRRD (" in capsys.readouterr().err
    (tmp_path / "x.mha").write_bytes(b"")
    assert run(tmp_path / "x.mha") == 2
    assert (f"--input {tmp_path / 'x.mha'}: unknown format. Expected a .npy, .nii, .nii.gz or "
            ".nrrd file") in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_missing_nibabel_names_the_extra(tmp_path, monkeypatch, capsys):
    """Without nibabel a NIfTI input is an error line naming the extra (a
    .npy input needs none of it)."""
    import sys

    from cmseg import _deps

    model_path = str(tmp_path / "m.keras")
    _model().save(model_path)
    (tmp_path / "x.nii.gz").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import of nibabel now fails
    assert _deps.main(["predict", "--model", model_path, "--input", str(tmp_path / "x.nii.gz"),
                       "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "No module named 'nibabel'" in err and 'pip install "keras-seglosses[' in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["region.nii.gz", "probability.npy", "probability.nrrd"])
def test_output_over_the_input_is_refused(tmp_path, capsys, name):
    """`--out` the input's own folder, the input named like an output: a
    usage error naming both paths, before anything is written (also when
    the folder is spelled another way)."""
    model_path = str(tmp_path / "m.keras")
    _model().save(model_path)
    data = tmp_path / "data"
    data.mkdir()
    source = data / name
    x = np.zeros((SIZE,) * 3, np.int16)
    if name.endswith(".npy"):
        np.save(source, x)
    else:
        _write_input(source, x, _grid_affine())
    before = source.read_bytes()
    (tmp_path / "link").symlink_to(data)
    for out in (data, f"{data}/./", tmp_path / "link"):
        assert main(["predict", "--model", model_path, "--input", str(source),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: " in err and f"--input {source}" in err, err
        assert os.path.join(str(out), name) in err, err
        assert os.listdir(data) == [name] and source.read_bytes() == before
    # Another folder, or another name in the same folder, is fine.
    assert main(["predict", "--model", model_path, "--input", str(source),
                 "--out", str(tmp_path / "o")]) == 0
    os.rename(source, data / f"bone{name[name.index('.'):]}")
    assert main(["predict", "--model", model_path, "--input",
                 str(data / f"bone{name[name.index('.'):]}"), "--out", str(data)]) == 0


CT = CT_PREPROCESSING


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_predict_normalizes_an_image_as_its_run_recorded(tmp_path, ext):
    """CT clipped to the run's window and scaled to [-1, 1], predicted by
    sliding windows on the image's own (odd, anisotropic) grid, written with
    its geometry."""
    from _references import FOLDER_SPACING, write_case_folder

    from cm_dataset.folder import read_volume

    written = write_case_folder(str(tmp_path / "data"))
    case = "case02" if ext == ".nrrd" else "case01"
    image = written[case][0]
    model = write_affine_run(str(tmp_path / "run"), CT, patch=16)
    out = tmp_path / "out"
    src = str(tmp_path / "data" / case / f"image{ext}")
    assert main(["predict", "--model", model, "--input", src, "--out", str(out),
                 "--tta", "flips", "--batch-size", "8"]) == 0
    prob, spacing, _, _ = read_volume(str(out / f"probability{ext}"))
    x = 2 * (np.clip(image, -1000, 2000) + 1000) / 3000 - 1
    np.testing.assert_allclose(prob, 0.5 * x + 0.5, atol=1e-5)
    np.testing.assert_allclose(spacing, FOLDER_SPACING, rtol=1e-6)
    region, _, _, _ = read_volume(str(out / f"region{ext}"))
    np.testing.assert_array_equal(region, prob > 0.5)


@pytest.mark.backends
def test_predict_mr_and_resampled_run(tmp_path):
    """MR z-scored over its nonzero voxels; a run trained with --resample 8
    predicts on the image resized to 8^3 and resizes the probability back
    (both linear, corners aligned as the training pipeline resamples; scipy's
    zoom as the reference)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    image = np.zeros((13, 11, 9), np.float32)
    image[2:11, 2:9, 1:8] = rng.normal(300, 40, (9, 7, 7))
    np.save(tmp_path / "mr.npy", image)
    pre = {**CT, "intensity": "mr", "window": None, "resample": 8}
    model = write_affine_run(str(tmp_path / "run"), pre, scale=0.1, shift=0.5)
    out = tmp_path / "out"
    assert main(["predict", "--model", model, "--input", str(tmp_path / "mr.npy"),
                 "--out", str(out)]) == 0
    fg = image != 0
    z = np.where(fg, (image - image[fg].mean()) / image[fg].std(), 0)

    def zoom(v, shape):
        # the training pipeline's convention (corners aligned)
        return ndimage.zoom(v, [t / s for t, s in zip(shape, v.shape)], order=1)

    want = zoom(0.1 * zoom(z, (8, 8, 8)) + 0.5, image.shape)
    np.testing.assert_allclose(np.load(out / "probability.npy")[0], want, atol=1e-4)


def test_predict_refuses_an_image_of_other_channels(tmp_path, capsys):
    model = write_affine_run(str(tmp_path / "run"), {**CT, "channels": 2, "input_channels": 2})
    np.save(tmp_path / "one.npy", np.zeros((9, 9, 9), np.float32))
    assert main(["predict", "--model", model, "--input", str(tmp_path / "one.npy"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "2 channel(s)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("spacing, n_symmetries", [((1.0, 1.0, 2.0), 16), ((1.2,) * 3, 48)])
def test_tta_all_permutes_only_axes_of_equal_spacing(tmp_path, spacing, n_symmetries):
    """`--tta all` on a NIfTI label volume: the mean, over the cube's
    symmetries whose axis permutation keeps the header's spacing, of the
    model on the transformed volume mapped back (`cm_dataset.augment` as
    the independent reference); a model without symmetry tells them apart."""
    import nibabel as nib

    from cm_dataset import augment

    keras.utils.set_random_seed(4)
    inputs = keras.Input((SIZE, SIZE, SIZE, 1))
    outputs = keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model_path = str(tmp_path / "m.keras")
    model.save(model_path)
    x = np.random.default_rng(5).integers(0, 14, (SIZE,) * 3).astype(np.int16)
    nib.save(nib.Nifti1Image(x, np.diag([*spacing, 1.0])), str(tmp_path / "x.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", "--model", model_path, "--input", str(tmp_path / "x.nii.gz"),
                 "--out", str(out), "--tta", "all"]) == 0
    prob = np.asarray(nib.load(str(out / "probability.nii.gz")).dataobj)
    encoded = np_encode_input(x[None], "scaled")[0]
    kept = [k for k, (perm, _) in enumerate(augment.SYMMETRIES)
            if all(spacing[a] == spacing[b] for a, b in enumerate(perm))]
    assert len(kept) == n_symmetries
    outs = [augment.apply(keras.ops.convert_to_numpy(
        model(augment.apply(encoded, k)[None].copy(), training=False))[0], augment.inverse(k))
        for k in kept]
    np.testing.assert_allclose(prob, np.mean(outs, axis=0)[..., 0], atol=1e-5)
