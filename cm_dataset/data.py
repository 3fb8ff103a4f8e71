"""The CM arrays in memory (`CMData`) and on disk (`save`, `load`).

Layout, as the original `cm_data` folder [001]: two NumPy files

    x{n_bones}_{n_surgeons}.npy   anatomical labels 0..13 of the input bone
    y{n_bones}_{n_surgeons}.npy   the binary drilled region (the surgery)

each of shape `(n_bones * n_surgeons, S, S, S)` (S = 64 in the paper), int8,
volume `bone * n_surgeons + surgeon`. For the real data this gives the
original names `x9_7.npy` and `y9_7.npy` unchanged. All `n_surgeons` volumes
of one bone share the same input; the file repeats it, as the original does.
"""

import os
import re
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["CMData", "load", "LABELS", "N_LABELS", "file_names"]

#: Names of the 14 anatomical labels of `x` (index = label value). The
#: paper lists "the air, the bone, the incus, the facial nerve, the sigmoid
#: sinus, and the dura, etc." for categories 0..13 [000, Sec. IV]; the others
#: are the structures a cortical mastoidectomy works around. The synthetic
#: generator (`cm_dataset.synthetic`) draws every one of them.
LABELS = (
    "air",  # 0  outside the specimen
    "bone",  # 1  compact (cortical) bone
    "mastoid air cells",  # 2  pneumatized bone, the bulk of what is drilled
    "mastoid antrum",  # 3  the air space the mastoidectomy opens into
    "incus",  # 4
    "malleus",  # 5
    "facial nerve",  # 6  must not be touched
    "sigmoid sinus",  # 7  must not be touched (posterior limit)
    "dura",  # 8  middle-fossa dura / tegmen (superior limit)
    "external ear canal",  # 9  anterior limit
    "semicircular canals",  # 10
    "cochlea",  # 11
    "chorda tympani",  # 12
    "jugular bulb",  # 13
)
N_LABELS = len(LABELS)


def file_names(n_bones, n_surgeons):
    """File names of the x and y arrays for a data set of that size.

    Args:
        n_bones: int, number of bones (patients).
        n_surgeons: int, number of surgeons.

    Returns:
        `(x_name, y_name)`, e.g. `("x9_7.npy", "y9_7.npy")` for the paper's
        9 bones and 7 surgeons (the original file names).

    Example:

    >>> file_names(9, 7)
    ('x9_7.npy', 'y9_7.npy')
    """
    return f"x{n_bones}_{n_surgeons}.npy", f"y{n_bones}_{n_surgeons}.npy"


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a positive integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _validate(x, y, n_bones, n_surgeons, x_name="x", y_name="y"):
    """Shared checks of `CMData` and `load`; messages name the array (or the
    file it came from) and the problem. Returns int8 copies-or-views."""
    for arr, name in ((x, x_name), (y, y_name)):
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{name}: expected a NumPy array. Received: {type(arr).__name__}.")
        if arr.ndim != 4 or not (arr.shape[1] == arr.shape[2] == arr.shape[3]):
            raise ValueError(
                f"{name}: wrong shape. Expected (n_bones * n_surgeons, S, S, S) "
                f"(S = 64 in the CM data). Received: shape {arr.shape}."
            )
        if arr.shape[0] != n_bones * n_surgeons:
            raise ValueError(
                f"{name}: wrong shape. Expected {n_bones} bones x {n_surgeons} "
                f"surgeons = {n_bones * n_surgeons} volumes on axis 0. "
                f"Received: shape {arr.shape}."
            )
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{name}: wrong dtype. Expected an integer dtype (int8 in the CM "
                f"data). Received: dtype {arr.dtype}."
            )
    if x.shape != y.shape:
        raise ValueError(
            f"{x_name} and {y_name}: shapes differ. Expected identical shapes. "
            f"Received: {x.shape} and {y.shape}."
        )
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= N_LABELS:
        bad = int(np.count_nonzero((x < 0) | (x >= N_LABELS)))
        raise ValueError(
            f"{x_name}: label out of range. Expected anatomical labels 0..{N_LABELS - 1}. "
            f"Received values from {lo} to {hi} ({bad} voxel(s) outside the range)."
        )
    nonbinary = (y != 0) & (y != 1)
    if nonbinary.any():
        first = tuple(int(i) for i in np.argwhere(nonbinary)[0])
        raise ValueError(
            f"{y_name}: not binary. Expected the drilled region as 0/1. Received "
            f"{y[first]!r} at index {first} ({int(nonbinary.sum())} non-binary voxel(s))."
        )
    return x.astype(np.int8, copy=False), y.astype(np.int8, copy=False)


class CMData:
    """The cortical-mastoidectomy (CM) data set: inputs and surgeries.

    Volume `i = bone * n_surgeons + surgeon` pairs the input bone `x[i]`
    (anatomical labels 0..13, see `LABELS`) with the binary region `y[i]`
    that `surgeon` drilled in it [000, Sec. IV]. Bones and surgeons are
    0-based here; the leave-one-out folds of `cm_dataset.splits` are 1-based.

    Args:
        x: integer array `(n_bones * n_surgeons, S, S, S)`, labels 0..13.
        y: integer or bool array of the same shape, values 0/1.
        n_bones: int, number of bones. Defaults to `9`.
        n_surgeons: int, number of surgeons. Defaults to `7`.

    Attributes:
        x, y: the arrays as int8.
        n_bones, n_surgeons: ints.
        size: S, the cube's edge.

    Raises:
        ValueError: naming `x` or `y` and the problem (shape, dtype, label
            range, non-binary values).

    Example:

    >>> import numpy as np
    >>> x = np.ones((6, 4, 4, 4), np.int8); y = np.zeros((6, 4, 4, 4), np.int8)
    >>> d = CMData(x, y, n_bones=3, n_surgeons=2)
    >>> d.index(bone=2, surgeon=1), d.annotations(0).shape
    (5, (2, 4, 4, 4))
    """

    def __init__(self, x, y, n_bones=9, n_surgeons=7):
        self.n_bones = _check_count(n_bones, "n_bones")
        self.n_surgeons = _check_count(n_surgeons, "n_surgeons")
        self.x, self.y = _validate(x, y, self.n_bones, self.n_surgeons)

    @property
    def size(self):
        return int(self.x.shape[1])

    def __len__(self):
        return self.n_bones * self.n_surgeons

    def __repr__(self):
        return (
            f"CMData(n_bones={self.n_bones}, n_surgeons={self.n_surgeons}, "
            f"size={self.size})"
        )

    def index(self, bone, surgeon):
        """Flat index `bone * n_surgeons + surgeon` (both 0-based)."""
        if not 0 <= bone < self.n_bones:
            raise ValueError(
                f"Invalid value for argument `bone`. Expected 0 <= bone < {self.n_bones}. "
                f"Received: bone={bone!r}"
            )
        if not 0 <= surgeon < self.n_surgeons:
            raise ValueError(
                "Invalid value for argument `surgeon`. Expected 0 <= surgeon < "
                f"{self.n_surgeons}. Received: surgeon={surgeon!r}"
            )
        return bone * self.n_surgeons + surgeon

    def bone_input(self, bone):
        """The input volume `(S, S, S)` int8 of `bone` (its first copy)."""
        return self.x[self.index(bone, 0)]

    def annotations(self, bone, surgeons=None):
        """The surgeries on `bone`, `(len(surgeons), S, S, S)` int8.

        Args:
            bone: int, 0-based.
            surgeons: iterable of 0-based surgeons. Defaults to all of them.
        """
        if surgeons is None:
            surgeons = range(self.n_surgeons)
        return self.y[[self.index(bone, s) for s in surgeons]]

    def save(self, directory):
        """Write `x{n_bones}_{n_surgeons}.npy` and `y{...}.npy` into `directory`.

        The names of the real data, `x9_7.npy` and `y9_7.npy`, come out for
        9 bones and 7 surgeons, so `load` reads either. The directory is
        created if needed; each file is written to a temporary name first and
        renamed, so an interrupted save leaves no truncated file behind.

        Args:
            directory: str or path.

        Returns:
            `(x_path, y_path)` as `pathlib.Path`.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, arr in zip(file_names(self.n_bones, self.n_surgeons), (self.x, self.y)):
            fd, tmp = tempfile.mkstemp(suffix=".npy.part", dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                os.replace(tmp, directory / name)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            paths.append(directory / name)
        return tuple(paths)


_NAME = re.compile(r"^x(\d+)_(\d+)\.npy$")


def _read(path):
    if not path.is_file():
        raise ValueError(f"{path}: file missing. Expected a NumPy .npy file there.")
    try:
        return np.load(path, allow_pickle=False, mmap_mode=None)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported the same way
        raise ValueError(f"{path}: unreadable as a NumPy .npy array ({e}).") from e


def load(directory, n_bones=None, n_surgeons=None):
    """Read and validate a CM data folder (the original `cm_data` works as is).

    The counts come from the file name `x{n_bones}_{n_surgeons}.npy` unless
    given. Only reads: nothing is written to `directory`, whatever happens.

    Args:
        directory: str or path holding `x{B}_{S}.npy` and `y{B}_{S}.npy`.
        n_bones: int or `None` (from the file name). Defaults to `None`.
        n_surgeons: int or `None` (from the file name). Defaults to `None`.

    Returns:
        `CMData`.

    Raises:
        ValueError: naming the file and the problem: missing or unreadable
            file, wrong shape, wrong dtype, x labels outside 0..13, y not binary.

    Example:

    >>> import tempfile, numpy as np
    >>> d = CMData(np.ones((2, 4, 4, 4), np.int8), np.zeros((2, 4, 4, 4), np.int8), 1, 2)
    >>> folder = tempfile.mkdtemp(); _ = d.save(folder)
    >>> load(folder)
    CMData(n_bones=1, n_surgeons=2, size=4)
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory. Expected a folder with the CM .npy files.")
    if n_bones is None or n_surgeons is None:
        found = sorted(
            (int(m.group(1)), int(m.group(2)))
            for m in (_NAME.match(p.name) for p in directory.iterdir())
            if m
        )
        if n_bones is not None or n_surgeons is not None:
            found = [
                f
                for f in found
                if n_bones in (None, f[0]) and n_surgeons in (None, f[1])
            ]
        if not found:
            raise ValueError(
                f"{directory / 'x9_7.npy'}: file missing. Expected an input file "
                f"named x{{n_bones}}_{{n_surgeons}}.npy (x9_7.npy for the CM data) in {directory}."
            )
        if len(found) > 1:
            names = ", ".join(file_names(*f)[0] for f in found)
            raise ValueError(
                f"{directory}: several input files ({names}). Pass `n_bones` and "
                "`n_surgeons` to choose one."
            )
        n_bones, n_surgeons = found[0]
    n_bones = _check_count(n_bones, "n_bones")
    n_surgeons = _check_count(n_surgeons, "n_surgeons")
    x_path, y_path = (directory / n for n in file_names(n_bones, n_surgeons))
    x, y = _read(x_path), _read(y_path)
    x, y = _validate(x, y, n_bones, n_surgeons, x_name=str(x_path), y_name=str(y_path))
    data = CMData.__new__(CMData)
    data.n_bones, data.n_surgeons, data.x, data.y = n_bones, n_surgeons, x, y
    return data
