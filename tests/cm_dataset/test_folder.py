"""`cm_dataset.folder`: multi-annotator case folders in NIfTI, NRRD and .npy;
geometry against nibabel, pynrrd and SimpleITK as independent readers;
every validation failure named by file; lazy reading; write_volume."""

import hashlib
import os

import numpy as np
import pytest

from cm_dataset import folder
from cm_dataset.folder import DataError, iter_cases, load_folder, read_volume, write_volume

nib = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")
sitk = pytest.importorskip("SimpleITK")

SHAPE = (17, 21, 13)
SPACING = (0.5, 0.7, 1.3)
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (SimpleITK's and DICOM's world)


def _rotation(a=0.3, b=-0.5, c=0.8):
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(spacing=SPACING, origin=(-12.5, 30.25, 101.0), rotation=None):
    affine = np.eye(4)
    affine[:3, :3] = (_rotation() if rotation is None else rotation) * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


AFFINE = _affine()


def _write(path, array, affine=AFFINE):
    """A file as another program would write it: nibabel or pynrrd directly
    (NRRD in LPS space, as 3D Slicer and ITK write it), or np.save."""
    path = str(path)
    if path.endswith((".nii", ".nii.gz")):
        image = nib.Nifti1Image(array, affine)
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
        image.header["descrip"] = b"written by the test"
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, path)
    elif path.endswith(".nrrd"):
        lps = np.diag(LPS)[:, None] * affine[:3]  # not LPS @: 0 * NaN would spread a NaN
        nrrd.write(path, array, {"space": "left-posterior-superior",
                                 "space directions": lps[:, :3].T, "space origin": lps[:, 3],
                                 "encoding": "gzip", "my field": "kept"},
                   custom_field_map={"my field": "string"})
    else:
        np.save(path, array)
    return path


def _masks(rng, shape=SHAPE, k=3):
    base = rng.random(shape)
    return [(base + 0.2 * rng.random(shape) > 0.7 + 0.05 * i).astype(np.uint8) for i in range(k)]


def _case(root, name, ext=".nii.gz", shape=SHAPE, raters=("a", "b", "c"), affine=AFFINE,
          channels=None, seed=0):
    rng = np.random.default_rng(seed)
    case = root / name
    case.mkdir(parents=True)
    if channels:
        images = [rng.normal(size=shape).astype(np.float32) for _ in range(channels)]
        for i, image in enumerate(images):
            _write(case / f"image_{i:04d}{ext}", image, affine)
    else:
        images = [rng.integers(-1000, 2000, shape).astype(np.int16)]
        _write(case / f"image{ext}", images[0], affine)
    masks = dict(zip(raters, _masks(rng, shape, len(raters))))
    for rater, mask in masks.items():
        _write(case / f"annotation-{rater}{ext}", mask, affine)
    return np.stack(images, axis=-1).astype(np.float32), masks


def _snapshot(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[p] = (os.stat(p).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def _sitk_ras(path):
    """(spacing, RAS origin, RAS direction) of a file read by SimpleITK."""
    image = sitk.ReadImage(str(path))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetSpacing()), LPS @ np.array(image.GetOrigin()), LPS @ direction


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd"])
def test_case_reads_arrays_and_geometry(tmp_path, ext):
    image, masks = _case(tmp_path, "case1", ext)
    before = _snapshot(tmp_path)
    (case,) = load_folder(tmp_path)
    assert case.name == "case1" and case.raters == ("a", "b", "c")
    assert case.shape == SHAPE and case.channels == 1
    assert case.format == ("nrrd" if ext == ".nrrd" else "nifti")
    assert case.image.dtype == np.float32 and case.image.shape == SHAPE + (1,)
    np.testing.assert_array_equal(case.image, image)
    for rater, mask in masks.items():
        assert case.annotations[rater].dtype == np.uint8
        np.testing.assert_array_equal(case.annotations[rater], mask)
    assert case.annotation_stack().shape == (3,) + SHAPE
    np.testing.assert_allclose(case.affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(case.spacing, SPACING, rtol=1e-6)
    # SimpleITK, an independent reader (LPS world, its own NIfTI/NRRD code),
    # sees the same grid.
    spacing, origin, direction = _sitk_ras(case.image_files[0])
    np.testing.assert_allclose(spacing, case.spacing, rtol=1e-6)
    np.testing.assert_allclose(origin, case.affine[:3, 3], atol=1e-4)
    np.testing.assert_allclose(direction * spacing, case.affine[:3, :3], atol=1e-5)
    assert _snapshot(tmp_path) == before  # reading only reads


def test_channels_cases_of_their_own_size_and_raters(tmp_path):
    image, _ = _case(tmp_path, "case10", ".nrrd", channels=2, raters=("2", "10"))
    _case(tmp_path, "case2", shape=(9, 8, 7), affine=_affine((1.0, 1.0, 2.5), (0, 0, 0), np.eye(3)),
          raters=("1", "2", "3", "4"), seed=1)
    cases = load_folder(tmp_path)
    assert [c.name for c in cases] == ["case2", "case10"]  # natural order
    assert cases[0].shape == (9, 8, 7) and cases[0].spacing == pytest.approx((1.0, 1.0, 2.5))
    assert cases[1].channels == 2 and cases[1].image.shape == SHAPE + (2,)
    np.testing.assert_array_equal(cases[1].image, image)
    assert cases[1].raters == ("2", "10")
    assert folder.raters(cases) == ("1", "2", "3", "4", "10")
    table = folder.summary(cases)
    assert "17 x 21 x 13" in table and "0.5 x 0.7 x 1.3" in table and "2: 2, 10" in table
    assert table.splitlines()[-1] == "2 cases, 5 raters (1, 2, 3, 4, 10)"


def test_multichannel_file_and_npy_spacing(tmp_path):
    case = tmp_path / "c"
    case.mkdir()
    np.save(case / "image.npy", np.ones(SHAPE + (3,), np.float32))
    np.save(case / "annotation-x.npy", np.zeros(SHAPE, bool))
    (loaded,) = load_folder(tmp_path, spacing=(0.5, 0.7, 1.3))
    assert loaded.channels == 3 and loaded.image.shape == SHAPE + (3,)
    np.testing.assert_array_equal(loaded.affine, np.diag([0.5, 0.7, 1.3, 1.0]))
    assert load_folder(tmp_path)[0].spacing == (1.0, 1.0, 1.0)  # the default
    with pytest.raises(ValueError, match="spacing"):
        load_folder(tmp_path, spacing=(1, -1, 1))
    # A 4D NIfTI holds its channels on the last axis too.
    nib_case = tmp_path / "d"
    nib_case.mkdir()
    _write(nib_case / "image.nii.gz", np.zeros(SHAPE + (2,), np.float32))
    _write(nib_case / "annotation-x.nii.gz", np.zeros(SHAPE, np.uint8))
    assert load_folder(tmp_path)[1].image.shape == SHAPE + (2,)


def test_lazy_cases_read_on_demand(tmp_path):
    _, masks = _case(tmp_path, "a")
    _case(tmp_path, "b", seed=2)
    cases = load_folder(tmp_path, lazy=True)
    assert not any(c.loaded for c in cases)
    np.testing.assert_array_equal(cases[0].annotations["b"], masks["b"])
    cases[0].image
    assert cases[0].loaded and not cases[1].loaded
    cases[0].release()
    assert not cases[0].loaded
    seen = []
    for case in iter_cases(tmp_path):
        assert case.loaded
        seen.append(case)
    assert [c.name for c in seen] == ["a", "b"] and not any(c.loaded for c in seen)
    assert all(c.loaded for c in load_folder(tmp_path))  # eager by default


def _expect_problems(root, *fragments):
    with pytest.raises(DataError) as info:
        load_folder(root)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_shape_mismatch(tmp_path):
    _case(tmp_path, "c")
    bad = _write(tmp_path / "c" / "annotation-b.nii.gz", np.zeros((17, 21, 12), np.uint8))
    _expect_problems(tmp_path, f"{bad}: shape (17, 21, 12) differs from (17, 21, 13) of "
                     "image.nii.gz")


def test_affine_mismatch_beyond_the_tolerance_only(tmp_path):
    _case(tmp_path, "c")
    mask = np.zeros(SHAPE, np.uint8)
    near = _affine(origin=(-12.5 + 1e-4 * 0.5, 30.25, 101.0))  # 1e-4 of the smallest voxel
    _write(tmp_path / "c" / "annotation-b.nii.gz", mask, near)
    assert load_folder(tmp_path)[0].raters == ("a", "b", "c")
    far = _affine(origin=(-12.5 + 0.2, 30.25, 101.0))
    bad = _write(tmp_path / "c" / "annotation-b.nii.gz", mask, far)
    error = _expect_problems(tmp_path, f"{bad}: affine differs from that of image.nii.gz",
                             "origin (-12.3, 30.25, 101) vs (-12.5, 30.25, 101) mm",
                             "within 0.001 of a voxel")
    assert len(error.problems) == 1
    # Across formats the world is compared in RAS: the LPS NRRD of the same
    # grid agrees with the NIfTI image.
    os.remove(bad)
    _write(tmp_path / "c" / "annotation-b.nrrd", mask)
    assert load_folder(tmp_path)[0].raters == ("a", "b", "c")


def test_non_binary_annotation(tmp_path):
    _case(tmp_path, "c")
    mask = np.zeros(SHAPE, np.uint8)
    mask[0, 0, :3] = [1, 2, 255]
    bad = _write(tmp_path / "c" / "annotation-a.nrrd", mask)
    os.remove(tmp_path / "c" / "annotation-a.nii.gz")
    _expect_problems(tmp_path, f"{bad}: annotation not binary: values 0, 1, 2, 255 (4 distinct)",
                     "Expected 0 and 1 only")


def test_no_annotation_no_image_empty_folder(tmp_path):
    (tmp_path / "c").mkdir()
    _write(tmp_path / "c" / "image.nii.gz", np.zeros(SHAPE, np.int16))
    (tmp_path / "c" / "notes.txt").write_text("ignored")
    (tmp_path / "d").mkdir()
    _write(tmp_path / "d" / "annotation-a.nii.gz", np.zeros(SHAPE, np.uint8))
    error = _expect_problems(tmp_path, f"{tmp_path / 'c'}: no annotation. Expected at least one "
                             "annotation-<rater>.nii.gz", f"{tmp_path / 'd'}: no image.")
    assert len(error.problems) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}: no case folders. Expected DIR/<case>/image"):
        load_folder(empty)
    with pytest.raises(DataError, match="no such directory"):
        load_folder(tmp_path / "missing")


@pytest.mark.parametrize("name, content, reader", [
    ("image.nii.gz", b"not gzip at all", "NIfTI"),
    ("annotation-a.nrrd", b"NRRD0004\ntype: uint8\n", "NRRD"),
    ("annotation-a.npy", b"\x93NUMPY garbage", "a NumPy .npy array"),
])
def test_unreadable_files(tmp_path, name, content, reader):
    _case(tmp_path, "c")
    for old in (tmp_path / "c").glob(name.split(".")[0] + ".*"):
        old.unlink()
    bad = tmp_path / "c" / name
    bad.write_bytes(content)
    _expect_problems(tmp_path, f"{bad}: unreadable as {reader} (")


def test_truncated_payload_and_wrong_names(tmp_path):
    _case(tmp_path, "c")
    path = tmp_path / "c" / "annotation-b.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # the header reads, the voxels do not
    (tmp_path / "c" / "annotation-z.mha").write_bytes(b"")
    (tmp_path / "c" / "image_0000.nii.gz").write_bytes(b"")
    error = _expect_problems(tmp_path, f"{path}: unreadable as NIfTI (EOFError",
                             f"{tmp_path / 'c' / 'annotation-z.mha'}: unsupported format",
                             "both image.* and image_NNNN.* files")
    assert len(error.problems) == 3


def test_every_problem_of_the_folder_in_one_message(tmp_path):
    for name in ("a", "b", "c", "ok"):
        _case(tmp_path, name)
    _write(tmp_path / "a" / "annotation-a.nii.gz", np.zeros((3, 3, 3), np.uint8))
    _write(tmp_path / "b" / "annotation-b.nii.gz", np.full(SHAPE, 2, np.uint8))
    _write(tmp_path / "c" / "image.nii.gz", np.zeros(SHAPE + (2, 2), np.float32))
    before = _snapshot(tmp_path)
    error = _expect_problems(tmp_path, f"{tmp_path}: 3 problems in the data folder:")
    lines = str(error).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        str(tmp_path / "a" / "annotation-a.nii.gz"), str(tmp_path / "b" / "annotation-b.nii.gz"),
        str(tmp_path / "c" / "image.nii.gz")]
    assert "not a 3D volume: shape (17, 21, 13, 2, 2)" in lines[2]
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("ref_ext", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("out_ext", [".nii.gz", ".nrrd", ".npy"])
def test_write_volume_keeps_the_reference_geometry(tmp_path, ref_ext, out_ext):
    _case(tmp_path / "data", "c", ref_ext)
    (case,) = load_folder(tmp_path / "data")
    region = (case.annotations["a"] & case.annotations["b"]).astype(bool)
    prob = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    out = tmp_path / "out"
    for name, array in (("region", region), ("probability", prob)):
        path = write_volume(out / f"{name}{out_ext}", array, like=case)
        back, spacing, affine, meta = read_volume(path, spacing=case.spacing)
        np.testing.assert_array_equal(back, array.astype(back.dtype))
        assert back.dtype == (np.uint8 if name == "region" else np.float32)
        assert meta["shape"] == SHAPE
        if out_ext == ".npy":
            continue
        np.testing.assert_allclose(affine, case.affine, atol=1e-5)
        np.testing.assert_allclose(spacing, case.spacing, rtol=1e-6)
        ref_spacing, ref_origin, ref_direction = _sitk_ras(case.image_files[0])
        got_spacing, got_origin, got_direction = _sitk_ras(path)
        np.testing.assert_allclose(got_spacing, ref_spacing, rtol=1e-6)
        np.testing.assert_allclose(got_origin, ref_origin, atol=1e-4)
        np.testing.assert_allclose(got_direction, ref_direction, atol=1e-5)
    # No temporaries left behind.
    assert sorted(os.listdir(out)) == [f"probability{out_ext}", f"region{out_ext}"]
    if out_ext == ref_ext == ".nii.gz":
        header = nib.load(out / "region.nii.gz").header
        assert header["descrip"] == b"written by the test"
        assert header.get_xyzt_units() == ("mm", "sec")
        assert int(header["sform_code"]) == int(header["qform_code"]) == 1
        np.testing.assert_array_equal(header.get_sform(), case.header.get_sform())
    if out_ext == ref_ext == ".nrrd":
        _, header = nrrd.read(str(out / "region.nrrd"), custom_field_map={"my field": "string"})
        assert header["space"] == "left-posterior-superior" and header["my field"] == "kept"
        np.testing.assert_array_equal(header["space directions"],
                                      case.header["space directions"])
        np.testing.assert_array_equal(header["space origin"], case.header["space origin"])


def test_write_volume_refuses_another_grid(tmp_path):
    ref = _write(tmp_path / "ref.nii.gz", np.zeros(SHAPE, np.int16))
    with pytest.raises(ValueError, match=r"array of shape \(3, 3, 3\) does not fit the reference"):
        write_volume(tmp_path / "o.nii.gz", np.zeros((3, 3, 3)), like=ref)
    with pytest.raises(ValueError, match="unsupported output format"):
        write_volume(tmp_path / "o.mha", np.zeros(SHAPE), like=ref)
    assert sorted(os.listdir(tmp_path)) == ["ref.nii.gz"]


def test_read_volume(tmp_path):
    path = _write(tmp_path / "v.nrrd", np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE))
    array, spacing, affine, meta = read_volume(path)
    assert array.shape == SHAPE and array.dtype == np.int32 and meta["format"] == "nrrd"
    np.testing.assert_allclose(affine, AFFINE, atol=1e-9)
    np.testing.assert_allclose(spacing, SPACING)
    np.save(tmp_path / "v.npy", array)
    _, spacing, affine, meta = read_volume(tmp_path / "v.npy", spacing=2)
    assert spacing == (2.0, 2.0, 2.0) and meta["format"] == "npy" and meta["header"] is None
    for name, message in (("v.mha", "unsupported format"), ("none.nii.gz", "file missing")):
        with pytest.raises(DataError, match=f"{tmp_path / name}: {message}"):
            read_volume(tmp_path / name)


def test_nrrd_vector_axis_becomes_channels_and_nan_images_are_refused(tmp_path):
    """A multi-component NRRD (Slicer puts the component axis first, with a
    'none' space direction) reads as channels last; NaN intensities are a
    problem named by file."""
    case = tmp_path / "c"
    case.mkdir()
    image = np.random.default_rng(0).random((2,) + SHAPE).astype(np.float32)
    lps = LPS @ AFFINE[:3]
    directions = np.vstack([np.full(3, np.nan), lps[:, :3].T])
    nrrd.write(str(case / "image.nrrd"), image, {
        "space": "left-posterior-superior", "space directions": directions,
        "space origin": lps[:, 3], "kinds": ["vector", "domain", "domain", "domain"]})
    _write(case / "annotation-a.nii.gz", np.ones(SHAPE, np.uint8))
    (loaded,) = load_folder(tmp_path)
    assert loaded.shape == SHAPE and loaded.channels == 2
    np.testing.assert_array_equal(loaded.image, np.moveaxis(image, 0, -1))
    np.testing.assert_allclose(loaded.affine, AFFINE, atol=1e-9)
    # Written like it, a 3D volume keeps the geometry and drops the vector axis.
    _, header = nrrd.read(write_volume(tmp_path / "r.nrrd", np.ones(SHAPE, np.uint8), like=loaded))
    assert header["kinds"] == ["domain"] * 3
    np.testing.assert_array_equal(header["space directions"], lps[:, :3].T)
    image[1, 3, 4, 5] = np.nan
    nrrd.write(str(case / "image.nrrd"), image, {
        "space": "left-posterior-superior", "space directions": directions,
        "space origin": lps[:, 3], "kinds": ["vector", "domain", "domain", "domain"]})
    _expect_problems(tmp_path, f"{case / 'image.nrrd'}: image holds NaN or infinite values")


def _nifti_with_sform(path, array, sform):
    """A NIfTI whose only geometry is `sform` (qform unset), as written by a
    tool that stores whatever matrix it has."""
    image = nib.Nifti1Image(array, None)
    image.header.set_sform(sform, code=1)
    image.header.set_qform(None, code=0)
    nib.save(image, str(path))
    return path


def _bad_affines():
    nan = AFFINE.copy()
    nan[1, 3] = np.nan
    zero = AFFINE.copy()
    zero[:3, 1] = 0.0  # a zero-length axis
    flat = AFFINE.copy()
    flat[:3, 2] = flat[:3, 0]  # two axes along one direction: no volume
    return {"nan": nan, "zero column": zero, "parallel columns": flat}


@pytest.mark.parametrize("kind", ["nan", "zero column", "parallel columns"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_non_finite_or_singular_affine_is_a_problem(tmp_path, kind, ext):
    """NaN compares False with any tolerance and a singular affine maps the
    volume onto a plane: both must fail validation, not slip through."""
    affine = _bad_affines()[kind]
    case = tmp_path / "c"
    case.mkdir()
    image = case / f"image{ext}"
    if ext == ".nii.gz":
        _nifti_with_sform(image, np.zeros(SHAPE, np.int16), affine)
        _nifti_with_sform(case / "annotation-a.nii.gz", np.zeros(SHAPE, np.uint8), affine)
    else:
        _write(image, np.zeros(SHAPE, np.int16), affine)
        _write(case / "annotation-a.nrrd", np.zeros(SHAPE, np.uint8), affine)
    what = "non-finite affine" if kind == "nan" else "singular affine"
    error = _expect_problems(tmp_path, f"{image}: {what}", "Expected a finite, invertible")
    assert len(error.problems) == 2  # the annotation's line too, not a comparison with NaN
    assert error.problems[1].startswith(f"{case / 'annotation-a'}{ext}: {what}")
    with pytest.raises(DataError, match=f"{image}: {what}"):
        read_volume(image)


def test_nrrd_nan_space_origin_is_a_problem(tmp_path):
    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), np.zeros(SHAPE, np.int16), {
        "space": "left-posterior-superior", "space directions": np.eye(3),
        "space origin": np.array([0.0, np.nan, 1.0])})
    with pytest.raises(DataError, match=f"{path}: non-finite affine"):
        read_volume(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".npy"])
def test_zero_size_volume_is_a_problem(tmp_path, ext):
    case = tmp_path / "c"
    case.mkdir()
    empty = (17, 0, 13)
    image = _write(case / f"image{ext}", np.zeros(empty, np.int16))
    annotation = _write(case / f"annotation-a{ext}", np.zeros(empty, np.uint8))
    error = _expect_problems(
        tmp_path, f"{image}: empty volume: shape (17, 0, 13). Expected at least one voxel "
        "along each axis", f"{annotation}: empty volume: shape (17, 0, 13)")
    assert len(error.problems) == 2
    no_channels = _write(tmp_path / "c4.npy", np.zeros(SHAPE + (0,), np.float32))
    with pytest.raises(DataError, match=r"c4.npy: empty volume: shape \(17, 21, 13, 0\)"):
        read_volume(no_channels)


@pytest.mark.parametrize("with_directions", [False, True], ids=["spacings", "directions"])
@pytest.mark.parametrize("kind", ["vector", "list", "RGB-color"])
def test_channel_first_nrrd_found_by_kinds(tmp_path, kind, with_directions):
    """pynrrd keeps the file's axis order; the channel axis is the one whose
    `kinds` entry is not spatial, wherever it is, with or without a world
    space."""
    case = tmp_path / "c"
    case.mkdir()
    image = np.random.default_rng(3).random((2,) + SHAPE).astype(np.float32)
    kinds = [kind, "domain", "domain", "domain"]
    if with_directions:
        lps = LPS @ AFFINE[:3]
        header = {"space": "left-posterior-superior", "kinds": kinds,
                  "space directions": np.vstack([np.full(3, np.nan), lps[:, :3].T]),
                  "space origin": lps[:, 3]}
        want_affine = AFFINE
    else:
        header = {"kinds": kinds, "spacings": np.array([np.nan, *SPACING])}
        want_affine = np.diag([*SPACING, 1.0])
    nrrd.write(str(case / "image.nrrd"), image, header)
    _write(case / "annotation-a.nrrd", np.ones(SHAPE, np.uint8), want_affine)
    (loaded,) = load_folder(tmp_path)
    assert loaded.shape == SHAPE and loaded.channels == 2
    np.testing.assert_array_equal(loaded.image, np.moveaxis(image, 0, -1))
    np.testing.assert_allclose(loaded.affine, want_affine, atol=1e-9)
    np.testing.assert_allclose(loaded.spacing, SPACING, rtol=1e-9)
    back, spacing, _, _ = read_volume(case / "image.nrrd")
    assert back.shape == SHAPE + (2,)
    # Written like it: the spatial axes' fields only.
    out = write_volume(tmp_path / "r.nrrd", np.ones(SHAPE, np.uint8), like=loaded)
    _, written = nrrd.read(out)
    assert written["kinds"] == ["domain"] * 3
    if not with_directions:
        np.testing.assert_array_equal(written["spacings"], SPACING)
    np.testing.assert_allclose(read_volume(out)[2], want_affine, atol=1e-9)


def _dtype_cases():
    return {
        "int64": np.arange(np.prod(SHAPE), dtype=np.int64).reshape(SHAPE) - 40000,
        "bool": (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3 == 0),
        "uint8": (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 256).astype(np.uint8),
        "float32": np.linspace(-1e3, 1e3, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE),
    }


@pytest.mark.parametrize("ref_ext", [".npy", ".nii.gz", ".nrrd"])
@pytest.mark.parametrize("out_ext", [".npy", ".nii.gz", ".nrrd"])
def test_write_volume_round_trips_every_dtype(tmp_path, ref_ext, out_ext):
    ref = _write(tmp_path / f"ref{ref_ext}", np.zeros(SHAPE, np.int16))
    for name, array in _dtype_cases().items():
        path = write_volume(tmp_path / f"{name}{out_ext}", array, like=ref)
        back = read_volume(path)[0]
        np.testing.assert_array_equal(back, array, err_msg=f"{name} -> {path}")
        want = {"bool": np.uint8, "int64": np.int32 if out_ext == ".nii.gz" else np.int64}
        assert back.dtype == want.get(name, array.dtype), (name, path, back.dtype)


def test_write_volume_keeps_values_or_refuses(tmp_path):
    ref = _write(tmp_path / "ref.nii.gz", np.zeros(SHAPE, np.int16))
    wide = np.full(SHAPE, 2**40, np.int64)
    wide[0, 0, 0] = -(2**40)
    for ext in (".nii.gz", ".nrrd"):
        np.testing.assert_array_equal(read_volume(write_volume(
            tmp_path / f"wide{ext}", wide, like=ref))[0], wide)
        half = np.full(SHAPE, 0.5, np.float16)
        back = read_volume(write_volume(tmp_path / f"half{ext}", half, like=ref))[0]
        assert back.dtype == np.float32 and np.all(back == 0.5)
    for array, received in ((np.zeros(SHAPE, np.complex64), "complex64"),
                            (np.full(SHAPE, "a"), "<U1")):
        with pytest.raises(ValueError, match=f"o.nrrd: cannot write voxels of type {received}"):
            write_volume(tmp_path / "o.nrrd", array, like=ref)
    if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:
        fine = np.full(SHAPE, 1, np.longdouble) + np.finfo(np.longdouble).eps
        with pytest.raises(ValueError, match="o.nrrd: .* not representable"):
            write_volume(tmp_path / "o.nrrd", fine, like=ref)
    assert not (tmp_path / "o.nrrd").exists()


def test_sidecar_files_are_ignored_other_volumes_are_problems(tmp_path):
    """BIDS-style metadata beside a volume is no volume; a volume in a
    format not read is reported rather than silently skipped."""
    _case(tmp_path, "c")
    for name in ("image.json", "annotation-a.json", "annotation-r1.json", "image_0000.json",
                 "image.txt", "annotation-b.md", "image.png"):
        (tmp_path / "c" / name).write_text("{}")
    assert load_folder(tmp_path)[0].raters == ("a", "b", "c")
    others = ("annotation-d.mha", "annotation-e.mhd", "annotation-f.nii.bz2",
              "annotation-g.dcm", "annotation-h.nhdr", "annotation-i.npy.gz")
    for name in others:
        (tmp_path / "c" / name).write_bytes(b"")
    error = _expect_problems(tmp_path, *(f"{tmp_path / 'c' / n}: unsupported format"
                                         for n in others))
    assert len(error.problems) == len(others)
