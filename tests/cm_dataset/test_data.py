"""CMData, save and load: round trip, original file names, validation."""

import hashlib
import os

import numpy as np
import pytest

from cm_dataset import LABELS, CMData, load
from cm_dataset.data import file_names


def _tiny(n_bones=2, n_surgeons=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 14, (n_bones * n_surgeons, size, size, size)).astype(np.int8)
    y = rng.integers(0, 2, x.shape).astype(np.int8)
    return x, y


def _snapshot(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        st = os.stat(p)
        with open(p, "rb") as f:
            out[name] = (st.st_mtime_ns, st.st_size, hashlib.sha256(f.read()).hexdigest())
    return out


def test_labels_table():
    assert len(LABELS) == 14
    assert LABELS[0] == "air" and LABELS[1] == "bone"
    for name in ("incus", "facial nerve", "sigmoid sinus", "dura"):
        assert name in LABELS


def test_round_trip(tmp_path):
    x, y = _tiny()
    data = CMData(x, y, n_bones=2, n_surgeons=3)
    paths = data.save(tmp_path)
    assert [p.name for p in paths] == ["x2_3.npy", "y2_3.npy"]
    assert sorted(os.listdir(tmp_path)) == ["x2_3.npy", "y2_3.npy"]  # no temp leftovers
    back = load(tmp_path)
    assert (back.n_bones, back.n_surgeons, back.size) == (2, 3, 4)
    np.testing.assert_array_equal(back.x, x)
    np.testing.assert_array_equal(back.y, y)
    assert back.x.dtype == np.int8 and back.y.dtype == np.int8


def test_original_file_names_load_unchanged(tmp_path):
    assert file_names(9, 7) == ("x9_7.npy", "y9_7.npy")
    x, y = _tiny(9, 7, 2)
    # Written with plain NumPy, as the original data is.
    np.save(tmp_path / "x9_7.npy", x)
    np.save(tmp_path / "y9_7.npy", y)
    d = load(str(tmp_path))
    assert (d.n_bones, d.n_surgeons) == (9, 7)
    # Index convention bone * n_surgeons + surgeon.
    np.testing.assert_array_equal(d.annotations(4), y[28:35])
    assert d.index(bone=4, surgeon=2) == 30
    np.testing.assert_array_equal(d.bone_input(4), x[28])


def _write(folder, x, y, x_name="x2_3.npy", y_name="y2_3.npy"):
    if x is not None:
        np.save(folder / x_name, x)
    if y is not None:
        np.save(folder / y_name, y)


@pytest.mark.parametrize(
    "case, bad_file, words",
    [
        ("missing_y", "y2_3.npy", "file missing"),
        ("unreadable_x", "x2_3.npy", "unreadable"),
        ("x_3d", "x2_3.npy", "wrong shape"),
        ("x_count", "x2_3.npy", "wrong shape"),
        ("y_float", "y2_3.npy", "wrong dtype"),
        ("x_label_14", "x2_3.npy", "label out of range"),
        ("x_negative", "x2_3.npy", "label out of range"),
        ("y_nonbinary", "y2_3.npy", "not binary"),
        ("shapes_differ", "y2_3.npy", "shapes differ"),
    ],
)
def test_validation_names_file_and_leaves_folder_untouched(tmp_path, case, bad_file, words):
    x, y = _tiny()
    if case == "missing_y":
        y = None
    elif case == "x_3d":
        x = x[0]
    elif case == "x_count":
        x = x[:5]
    elif case == "y_float":
        y = y.astype(np.float32)
    elif case == "x_label_14":
        x[1, 2, 3, 0] = 14
    elif case == "x_negative":
        x[0, 0, 0, 0] = -1
    elif case == "y_nonbinary":
        y[3, 1, 1, 1] = 2
    elif case == "shapes_differ":
        y = y[:, :3, :3, :3]
    _write(tmp_path, x, y)
    if case == "unreadable_x":
        (tmp_path / "x2_3.npy").write_bytes(b"not a numpy file")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        load(tmp_path)
    message = str(err.value)
    assert str(tmp_path / bad_file) in message, message
    assert words in message, message
    assert _snapshot(tmp_path) == before


def test_no_input_file(tmp_path):
    with pytest.raises(ValueError, match="x9_7.npy"):
        load(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        load(tmp_path / "nowhere")


def test_ambiguous_folder_and_explicit_counts(tmp_path):
    x, y = _tiny()
    _write(tmp_path, x, y)
    _write(tmp_path, x, y, "x3_2.npy", "y3_2.npy")
    with pytest.raises(ValueError, match="several input files"):
        load(tmp_path)
    assert load(tmp_path, n_bones=3, n_surgeons=2).n_bones == 3
    assert load(tmp_path, n_surgeons=3).n_bones == 2


def test_cmdata_validation():
    x, y = _tiny()
    with pytest.raises(ValueError, match="x: wrong shape"):
        CMData(x, y, n_bones=3, n_surgeons=3)
    with pytest.raises(ValueError, match="`n_bones`"):
        CMData(x, y, n_bones=0, n_surgeons=3)
    with pytest.raises(ValueError, match="y: not binary"):
        CMData(x, y * 3, n_bones=2, n_surgeons=3)
    d = CMData(x, y.astype(bool), n_bones=2, n_surgeons=3)
    assert d.y.dtype == np.int8 and len(d) == 6
    with pytest.raises(ValueError, match="`surgeon`"):
        d.index(0, 3)
    with pytest.raises(ValueError, match="`bone`"):
        d.index(-1, 0)


@pytest.fixture
def no_writes(monkeypatch):
    """Fail any attempt to create, open for writing, rename or delete a file
    under a watched folder (the tests run as root, where a read-only mode
    alone stops nothing)."""
    import builtins

    watched = []

    def inside(path):
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return any(p == w or p.startswith(w + os.sep) for w in watched)

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            raise AssertionError(f"write attempt: open({file!r}, {mode!r})")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        if inside(path) and flags & writing:
            raise AssertionError(f"write attempt: os.open({path!r})")
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for name in ("replace", "rename", "remove", "unlink", "mkdir", "rmdir"):
        real = getattr(os, name)

        def guarded(*args, _real=real, _name=name, **kwargs):
            if any(inside(a) for a in args if isinstance(a, (str, os.PathLike))):
                raise AssertionError(f"write attempt: os.{_name}{args!r}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, guarded)
    return lambda folder: watched.append(os.path.realpath(folder))


@pytest.mark.parametrize("valid", [True, False])
def test_load_never_writes_even_to_a_read_only_folder(tmp_path, no_writes, valid):
    x, y = _tiny()
    if not valid:
        y[0, 0, 0, 0] = 5
    _write(tmp_path, x, y)
    before = _snapshot(tmp_path), os.stat(tmp_path).st_mtime_ns
    os.chmod(tmp_path, 0o555)
    try:
        no_writes(tmp_path)
        if valid:
            d = load(tmp_path)
            np.testing.assert_array_equal(d.x, x)
        else:
            with pytest.raises(ValueError, match="not binary"):
                load(tmp_path)
    finally:
        os.chmod(tmp_path, 0o755)
    assert (_snapshot(tmp_path), os.stat(tmp_path).st_mtime_ns) == before


def test_write_guard_can_fail(tmp_path, no_writes):
    """The guard of the previous test does catch a write (it can fail)."""
    no_writes(tmp_path)
    x, y = _tiny()
    with pytest.raises(AssertionError, match="write attempt"):
        CMData(x, y, n_bones=2, n_surgeons=3).save(tmp_path)
