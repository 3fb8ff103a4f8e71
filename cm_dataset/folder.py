"""Bring-your-own multi-annotator data: a folder of cases, read and validated.

Layout (SPEC.md Sec. 11), one sub-folder per case:

    DIR/<case>/image.nii.gz                (or channels: image_0000.nii.gz, image_0001.nii.gz, ...)
    DIR/<case>/annotation-<rater>.nii.gz   (binary, one per rater; rater ids shared across cases)

Every file may be `.nii`, `.nii.gz` (read with nibabel), `.nrrd` (pynrrd) or
`.npy` (NumPy; it carries no geometry, so its spacing comes from the
`spacing=` argument, default 1 mm). Cases may differ in size, spacing and
number of raters.

**Other files.** Names starting with a dot are ignored, and so is every
file whose stem is not `image`, `image_NNNN` or `annotation-<rater>`. A
file with one of those stems counts only when its ending is that of a
volume: a supported one, or another volume format (`.mha`, `.mhd`, `.nhdr`,
`.raw`, `.dcm`, `.img`/`.hdr`, `.mgz`, `.tif`, `.h5`, `.npz`, ...; the
supported formats compressed otherwise, such as `.nii.bz2` or `.npy.gz`),
which is reported as an unsupported format rather than skipped, so that no
image or rater goes missing unnoticed. Any other ending, such as the
BIDS-style sidecars `image.json` and `annotation-r1.json`, is metadata
beside a volume and is ignored.

**Axes and geometry.** Arrays keep the files' voxel index order `(i, j, k)`
(nibabel's and pynrrd's; SimpleITK's `GetArrayFromImage` gives `(k, j, i)`)
with channels last, and nothing is resampled or reoriented. Each file's
`affine` maps `(i, j, k, 1)` to world millimetres in RAS+ (nibabel's
convention): for NIfTI it is nibabel's (the sform when set, else the qform);
for NRRD it is built from `space directions` and `space origin`, flipped
from LPS or LAS to RAS when `space` says so (other spaces are taken as they
are); for `.npy` it is `diag(spacing)` at the origin. `spacing` is the length
of each column of the affine. An NRRD file's spatial axes are those whose
`kinds` are `domain` or `space` (when three are), else those with a `space
direction`, else its first three; the one other axis (`vector`, `list`,
`RGB-color`, ..., often the first) holds the channels and is moved last.

**Validation before anything is returned.** `load_folder` reads every file
and collects every problem of the folder, one line per file, into a single
`DataError`: unreadable or unsupported files, not a 3D volume, an empty
volume (a size of 0), a non-finite or singular affine (NaN, a zero-length
or degenerate axis), non-finite image values, an annotation that is not
binary (values 0 and 1 only), a case without an image or without an
annotation, channels or annotations whose shape or affine differ from the
case's image, no case at all. Affines
agree when every entry of their 3 x 4 part differs by at most
`AFFINE_TOLERANCE` (1e-3) times the larger voxel spacing of the two: a
thousandth of a voxel in position and direction, far above the float32
round-off of NIfTI headers and far below any real misregistration. A
`.npy` file has no affine of its own, so only its shape is compared.

**Memory.** Validation holds one file in memory at a time. With
`lazy=True` (and always in `iter_cases`) a `Case` keeps only paths and
geometry and reads its arrays when `case.image` or `case.annotations` is
first used; `case.release()` drops them again, so a data set larger than
memory can be walked case by case (each file is then read twice: once to
validate, once to use).

Reading and writing leave the user's files alone: `write_volume` writes only
the path it is given, through a temporary file in the same folder.
"""

import contextlib
import dataclasses
import os
import re
import tempfile

import numpy as np

__all__ = [
    "AFFINE_TOLERANCE",
    "EXTENSIONS",
    "Case",
    "DataError",
    "load_folder",
    "iter_cases",
    "raters",
    "read_volume",
    "write_volume",
    "summary",
]

#: Affines agree within this fraction of the larger voxel spacing (per entry).
AFFINE_TOLERANCE = 1e-3
# An affine whose |det| / (product of its spacings) is at most this maps the
# volume onto (nearly) a plane: float round-off, not a real grid.
_SINGULAR = 1e-6
#: File name endings read, longest first (".nii.gz" before ".gz"-less ".nii").
EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".npy")
_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".npy": "npy"}
_NAMES = {"nifti": "NIfTI", "nrrd": "NRRD", "npy": "a NumPy .npy array"}
_EXPECTED_FILES = (
    "DIR/<case>/image.nii.gz (or image_0000.nii.gz, image_0001.nii.gz, ... for channels) and "
    "DIR/<case>/annotation-<rater>.nii.gz, each .nii, .nii.gz, .nrrd or .npy"
)
_CHANNEL = re.compile(r"^image_(\d{4})$")
# Volume formats not read here (and the read ones compressed another way): a
# case file named like ours in one of them is reported, so that a converted
# data set does not silently lose an image or a rater. Other endings (.json,
# .txt, ...) are metadata beside a volume and are ignored.
_OTHER_VOLUMES = ("nii", "nrrd", "npy", "nhdr", "mha", "mhd", "raw", "dcm", "dicom", "ima",
                  "img", "hdr", "mgh", "mgz", "gipl", "vtk", "vti", "npz", "h5", "hdf5", "zarr",
                  "tif", "tiff")
_VOLUME_LIKE = re.compile(r"\.(?:" + "|".join(_OTHER_VOLUMES) + r")(?:\.(?:gz|bz2|xz|zst|lzma))?$")
# NRRD world spaces whose axes are flipped against RAS, and how.
_NRRD_TO_RAS = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}
# NRRD `kinds` of spatial axes; any other kind ("vector", "list", "RGB-color",
# "time", ...) is the channel axis, wherever the writer put it.
_NRRD_SPATIAL_KINDS = ("domain", "space")
# Per-axis NRRD fields: they must follow the axes kept when writing a 3D volume.
_NRRD_PER_AXIS = ("space directions", "kinds", "spacings", "thicknesses", "axis mins",
                  "axis maxs", "centerings", "labels", "units")
# NRRD fields that describe the stored data, not the geometry; pynrrd sets
# them from the array written (a detached data file would point elsewhere).
_NRRD_DATA_FIELDS = ("type", "dimension", "sizes", "endian", "data file", "line skip",
                     "byte skip", "min", "max", "old min", "old max")


class DataError(ValueError):
    """An unusable data file or folder. The message has one line per
    problem, each naming the file, what is wrong and what was expected;
    `problems` holds those lines. (`cmseg` turns it into exit status 2.)"""

    def __init__(self, problems, heading=None):
        self.problems = list(problems)
        if heading is None and len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "\n".join([heading or f"{len(self.problems)} problems:"]
                                + [f"  {p}" for p in self.problems])
        super().__init__(message)


def _format_of(path):
    name = os.path.basename(os.fspath(path)).lower()
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return _FORMATS[ext], ext
    return None, None


def _need(module, purpose):
    """Import an optional reader; a missing one names the install that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        distribution = {"nrrd": "pynrrd"}.get(module, module)
        # No cmseg here (layering): its entry point rewrites this into the
        # extra of the backend in use.
        raise ModuleNotFoundError(
            f"No module named {module!r} ({purpose}). Install it with: pip install "
            f"{distribution} (every backend extra of keras-seglosses brings it)",
            name=module,
        ) from None


def _check_spacing(spacing):
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = np.atleast_1d(np.asarray(spacing, dtype=float)).ravel()
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3 or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ValueError(
            "Invalid value for argument `spacing`. Expected one positive number or three "
            f"(mm per voxel along each axis). Received: spacing={spacing!r}"
        )
    return tuple(float(v) for v in values)


def _spacing_of(affine):
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _nrrd_spatial_axes(header, ndim, directions):
    """Indices of an NRRD file's spatial axes, in file order."""
    kinds = header.get("kinds")
    if kinds is not None and len(kinds) == ndim:
        by_kind = [a for a in range(ndim) if str(kinds[a]).lower() in _NRRD_SPATIAL_KINDS]
        if len(by_kind) == 3:
            return by_kind
    if directions is not None:
        return [a for a in range(ndim) if np.all(np.isfinite(directions[a]))]
    return list(range(min(ndim, 3)))


def _nrrd_affine(header):
    """RAS affine of an NRRD header and the indices of its spatial axes."""
    ndim = int(header.get("dimension", len(header.get("sizes", ()))))
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=float)
    spatial = _nrrd_spatial_axes(header, ndim, directions)
    if directions is not None:
        # A NaN left in a spatial axis's direction is reported by _affine_problem.
        linear = directions[spatial].T if len(spatial) == 3 else np.eye(3)
    else:
        # No world space: the spatial axes at their `spacings` (or 1 mm).
        spacings = np.asarray(header.get("spacings", [1.0] * ndim), dtype=float)
        spacings = spacings[spatial] if len(spacings) == ndim else np.ones(len(spatial))
        spacings = np.where(np.isfinite(spacings), spacings, 1.0)
        linear = np.diag(spacings) if len(spacings) == 3 else np.eye(3)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    if origin.shape != (3,):
        origin = np.zeros(3)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    flip = _NRRD_TO_RAS.get(str(header.get("space", "")).lower())
    if flip is not None:
        affine = np.diag([*flip, 1.0]) @ affine
    return affine, spatial


@dataclasses.dataclass
class _Probe:
    """What a file's header says: enough to validate geometry and to write
    volumes like it, without its voxels."""

    path: str
    format: str
    shape: tuple          # spatial (i, j, k)
    channels: int
    affine: np.ndarray
    header: object        # nibabel header, NRRD header dict, or None (.npy)
    proxy: object = None  # nibabel image (its data read on demand)
    channel_axis: object = None
    spatial_axes: tuple = (0, 1, 2)
    ndim: int = 3


def _shape_problem(path, shape, annotation):
    extra = "" if annotation else " (an image may add a channel axis: (X, Y, Z, C))"
    return (f"{path}: not a 3D volume: shape {tuple(shape)}. Expected (X, Y, Z){extra}.")


def _spatial_layout(path, shape, annotation, spatial=None):
    """(spatial axes, channel axis or None) of an array shape; trailing
    singleton axes beyond three are dropped (NIfTI writers leave them)."""
    shape = tuple(int(s) for s in shape)
    if spatial is None:
        spatial = [0, 1, 2] if len(shape) >= 3 else list(range(len(shape)))
    others = [a for a in range(len(shape)) if a not in spatial and shape[a] != 1]
    if len(spatial) != 3 or len(others) > (0 if annotation else 1):
        raise DataError([_shape_problem(path, shape, annotation)])
    return tuple(spatial), (others[0] if others else None)


def _affine_problem(path, affine):
    """A line if `affine` cannot place voxels in the world, else None. (Its
    comparisons with other affines would pass NaN, which compares False.)"""
    linear = np.asarray(affine, dtype=float)[:3]
    expected = ("Expected a finite, invertible voxel-to-world matrix (a positive spacing along "
                "each axis, no two axes parallel).")
    rows = "; ".join(_fmt(row) for row in linear)
    if not np.all(np.isfinite(linear)):
        return f"{path}: non-finite affine (rows {rows}). {expected}"
    spacing = _spacing_of(affine)
    # |det| over the product of the column lengths: 1 for orthogonal axes,
    # 0 for a flat or degenerate grid, whatever the voxel size.
    volume = abs(float(np.linalg.det(linear[:, :3])))
    if min(spacing) <= 0 or volume <= _SINGULAR * float(np.prod(spacing)):
        return (f"{path}: singular affine (spacing {_fmt(spacing)} mm, determinant "
                f"{volume:.3g}; rows {rows}). {expected}")
    return None


def _probe(path, spacing=(1.0, 1.0, 1.0), annotation=False):
    """Read a file's header (no voxels). Raises DataError naming the file."""
    path = os.fspath(path)
    fmt, ext = _format_of(path)
    if fmt is None:
        raise DataError([f"{path}: unsupported format. Expected a file ending in "
                         f"{', '.join(EXTENSIONS)}."])
    if not os.path.isfile(path):
        raise DataError([f"{path}: file missing. Expected a {ext} file there."])
    spatial = None
    try:
        if fmt == "nifti":
            nib = _need("nibabel", "reading NIfTI files")
            image = nib.load(path)
            shape, header, proxy = image.shape, image.header, image
            affine = np.asarray(image.affine, float)
        elif fmt == "nrrd":
            nrrd = _need("nrrd", "reading NRRD files")
            header = nrrd.read_header(path)
            shape = tuple(int(s) for s in header["sizes"])
            affine, spatial = _nrrd_affine(header)
            proxy = None
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, header, proxy = array.shape, None, None
            affine = np.diag([*spacing, 1.0])
            del array
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader failure is reported alike
        raise DataError([f"{path}: unreadable as {_NAMES[fmt]} ({type(e).__name__}: {e})."]
                        ) from None
    if 0 in tuple(int(s) for s in shape):
        raise DataError([f"{path}: empty volume: shape {tuple(int(s) for s in shape)}. Expected "
                         "at least one voxel along each axis."])
    spatial, channel_axis = _spatial_layout(path, shape, annotation, spatial)
    problem = _affine_problem(path, affine)
    if problem:
        raise DataError([problem])
    return _Probe(
        path=path, format=fmt, shape=tuple(int(shape[a]) for a in spatial),
        channels=1 if channel_axis is None else int(shape[channel_axis]),
        affine=affine, header=header, proxy=proxy, channel_axis=channel_axis,
        spatial_axes=spatial, ndim=len(shape),
    )


def _read_voxels(probe):
    """The voxels of a probed file, `(*spatial)` or `(*spatial, C)`, in
    the stored dtype (NIfTI scaling applied). Raises DataError."""
    try:
        if probe.format == "nifti":
            array = np.asanyarray(probe.proxy.dataobj)
        elif probe.format == "nrrd":
            nrrd = _need("nrrd", "reading NRRD files")
            array, _ = nrrd.read(probe.path)
        else:
            array = np.load(probe.path, allow_pickle=False)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt payload
        raise DataError([f"{probe.path}: unreadable as {_NAMES[probe.format]} "
                         f"({type(e).__name__}: {e})."]) from None
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise DataError([f"{probe.path}: unsupported voxel type {array.dtype}. Expected "
                         "integer, boolean or floating-point voxels."])
    channel = [] if probe.channel_axis is None else [probe.channel_axis]
    keep = list(probe.spatial_axes) + channel
    if keep != list(range(array.ndim)):
        # Channels last; the axes left out are singletons (see _spatial_layout).
        dropped = [a for a in range(array.ndim) if a not in keep]
        array = np.transpose(array, keep + dropped).reshape(tuple(array.shape[a] for a in keep))
    return np.ascontiguousarray(array)


def _binary_problem(path, array):
    if array.dtype == bool:
        return None
    if array.dtype.kind in "iu":
        if array.size == 0 or (array.min() >= 0 and array.max() <= 1):
            return None
    elif np.all((array == 0) | (array == 1)):
        return None
    values = np.unique(array)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return (f"{path}: annotation not binary: values {shown} ({len(values)} distinct). "
            "Expected 0 and 1 only (one binary mask per rater).")


def _as_image(probe, array):
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise DataError([f"{probe.path}: image holds NaN or infinite values. "
                         "Expected finite intensities."])
    array = array.astype(np.float32, copy=False)
    return array if probe.channel_axis is not None else array[..., None]


def _as_annotation(probe, array):
    problem = _binary_problem(probe.path, array)
    if problem:
        raise DataError([problem])
    return array.astype(np.uint8, copy=False)


def _affine_difference(a, b):
    """Largest 3 x 4 entry difference, in units of the larger voxel spacing."""
    scale = max(max(_spacing_of(a)), max(_spacing_of(b)))
    return float(np.abs(np.asarray(a)[:3] - np.asarray(b)[:3]).max() / scale)


def _fmt(values, digits=4):
    return "(" + ", ".join(f"{v:.{digits}g}" for v in values) + ")"


def _geometry_problem(probe, grid, geometry):
    """A line if `probe` is not on the voxel grid of `grid` (shape) and
    `geometry` (affine: the case's first file that has one), else None."""
    if probe.shape != grid.shape:
        return (f"{probe.path}: shape {probe.shape} differs from {grid.shape} of "
                f"{os.path.basename(grid.path)}. Expected the voxel grid of the case's image.")
    if probe is geometry or "npy" in (probe.format, geometry.format):
        return None  # a .npy file has no geometry of its own
    difference = _affine_difference(probe.affine, geometry.affine)
    if difference > AFFINE_TOLERANCE:
        return (f"{probe.path}: affine differs from that of {os.path.basename(geometry.path)} "
                f"by {difference:.3g} voxels (spacing {_fmt(_spacing_of(probe.affine))} vs "
                f"{_fmt(_spacing_of(geometry.affine))} mm, origin "
                f"{_fmt(probe.affine[:3, 3])} vs {_fmt(geometry.affine[:3, 3])} mm). "
                f"Expected the same voxel-to-world mapping (within {AFFINE_TOLERANCE:g} of a "
                "voxel).")
    return None


def _geometry_source(image_probes, annotation_probes):
    """The first file of a case that carries geometry: its image, unless
    that is a .npy file beside files that have an affine."""
    probes = list(image_probes) + list(annotation_probes)
    return next((p for p in probes if p.format != "npy"), probes[0])


def _natural_key(text):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


class Case:
    """One case of a folder: its image channels and one annotation per rater.

    Attributes:
        name: the case folder's name.
        directory: the case folder.
        image_files: tuple of paths, one per channel file (a single file may
            hold several channels on its last axis).
        annotation_files: dict rater -> path, raters in natural order.
        shape: spatial shape `(X, Y, Z)`.
        channels: number of image channels.
        affine: 4 x 4 voxel-to-world matrix, RAS+ millimetres (of the image;
            annotations agree within `AFFINE_TOLERANCE`).
        spacing: voxel size in mm along each axis, from `affine`.
        format: `"nifti"`, `"nrrd"` or `"npy"`, of the image (outputs are
            written in it, with `write_volume(path, array, like=case)`).
        header: the image file's header (nibabel header, NRRD header dict,
            or `None` for `.npy`).

    `image` (float32 `(X, Y, Z, channels)`) and `annotations` (dict rater ->
    uint8 `(X, Y, Z)`) are read on first use unless loaded already;
    `release()` drops them.
    """

    def __init__(self, name, directory, image_probes, annotation_probes):
        self.name = name
        self.directory = directory
        self._image_probes = tuple(image_probes)
        self._annotation_probes = dict(annotation_probes)
        first = self._image_probes[0]
        geometry = _geometry_source(self._image_probes, self._annotation_probes.values())
        self.image_files = tuple(p.path for p in self._image_probes)
        self.annotation_files = {r: p.path for r, p in self._annotation_probes.items()}
        self.shape = first.shape
        self.channels = sum(p.channels for p in self._image_probes)
        self.affine = np.array(geometry.affine)
        self.spacing = _spacing_of(self.affine)
        self.format = first.format
        # Outputs are written on the grid of the file that has the geometry.
        self._reference = first if first.format != "npy" else geometry
        self.header = self._reference.header
        self._image = None
        self._annotations = None

    @property
    def raters(self):
        """The case's rater ids, in natural order."""
        return tuple(self._annotation_probes)

    @property
    def image(self):
        """float32 `(X, Y, Z, channels)`, read on first use."""
        if self._image is None:
            parts = [_as_image(p, _read_voxels(p)) for p in self._image_probes]
            self._image = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        return self._image

    @property
    def annotations(self):
        """dict rater -> uint8 `(X, Y, Z)` of 0 and 1, read on first use."""
        if self._annotations is None:
            self._annotations = {r: _as_annotation(p, _read_voxels(p))
                                 for r, p in self._annotation_probes.items()}
        return self._annotations

    def annotation_stack(self, raters=None):
        """uint8 `(K, X, Y, Z)` of the given raters (default: all of the case)."""
        raters = self.raters if raters is None else tuple(raters)
        return np.stack([self.annotations[r] for r in raters])

    def release(self):
        """Drop the arrays read so far; they are read again when next used."""
        self._image = None
        self._annotations = None

    @property
    def loaded(self):
        return self._image is not None and self._annotations is not None

    def __repr__(self):
        return (f"Case({self.name!r}, shape={self.shape}, channels={self.channels}, "
                f"spacing={_fmt(self.spacing)}, raters={list(self.raters)})")


def _scan_case(case_dir):
    """(image paths, {rater: path}, problems) from a case folder's names."""
    problems = []
    single, channels, annotations = [], {}, {}
    for entry in sorted(os.listdir(case_dir)):
        if entry.startswith("."):
            continue
        path = os.path.join(case_dir, entry)
        fmt, ext = _format_of(entry)
        stem = entry[: -len(ext)] if ext else entry.partition(".")[0]
        is_ours = stem == "image" or _CHANNEL.match(stem) or stem.startswith("annotation-")
        if not is_ours or (fmt is None and not _VOLUME_LIKE.search(entry.lower())):
            continue
        if fmt is None:
            problems.append(f"{path}: unsupported format. Expected a file ending in "
                            f"{', '.join(EXTENSIONS)}.")
            continue
        if not os.path.isfile(path):
            problems.append(f"{path}: not a file. Expected a {_NAMES[fmt]} file.")
            continue
        if stem == "image":
            single.append(path)
        elif _CHANNEL.match(stem):
            channels.setdefault(int(_CHANNEL.match(stem).group(1)), []).append(path)
        else:
            rater = stem[len("annotation-"):]
            if not rater:
                problems.append(f"{path}: no rater id. Expected annotation-<rater>{ext}.")
                continue
            annotations.setdefault(rater, []).append(path)
    for rater, paths in annotations.items():
        if len(paths) > 1:
            problems.append(f"{case_dir}: rater {rater!r} has {len(paths)} annotation files "
                            f"({', '.join(map(os.path.basename, paths))}). Expected one.")
    for index, paths in channels.items():
        if len(paths) > 1:
            problems.append(f"{case_dir}: channel {index:04d} has {len(paths)} files "
                            f"({', '.join(map(os.path.basename, paths))}). Expected one.")
    images = []
    if single and channels:
        problems.append(f"{case_dir}: both image.* and image_NNNN.* files. Expected either "
                        "one image file or numbered channel files, not both.")
    elif len(single) > 1:
        problems.append(f"{case_dir}: {len(single)} image files "
                        f"({', '.join(map(os.path.basename, single))}). Expected one.")
    elif single:
        images = single
    elif channels:
        numbers = sorted(channels)
        if numbers != list(range(len(numbers))):
            problems.append(f"{case_dir}: channel files numbered "
                            f"{', '.join(f'{n:04d}' for n in numbers)}. Expected consecutive "
                            "numbers from image_0000.")
        else:
            images = [channels[n][0] for n in numbers]
    else:
        problems.append(f"{case_dir}: no image. Expected image.nii.gz (or .nii, .nrrd, .npy), "
                        "or image_0000.nii.gz, image_0001.nii.gz, ... for several channels.")
    if not annotations:
        problems.append(f"{case_dir}: no annotation. Expected at least one "
                        "annotation-<rater>.nii.gz (or .nii, .nrrd, .npy), binary.")
    ordered = {r: annotations[r][0] for r in sorted(annotations, key=_natural_key)}
    return images, ordered, problems


def _validate_case(case_dir, spacing, keep):
    """A Case (arrays kept when `keep`) or None, and the problems found."""
    images, annotations, problems = _scan_case(case_dir)
    image_probes, annotation_probes = [], {}
    image_arrays, annotation_arrays = [], {}
    for path in images:
        try:
            probe = _probe(path, spacing)
            array = _as_image(probe, _read_voxels(probe))
        except DataError as e:
            problems += e.problems
            continue
        image_probes.append(probe)
        image_arrays.append(array if keep else None)
        del array
    for rater, path in annotations.items():
        try:
            probe = _probe(path, spacing, annotation=True)
            array = _as_annotation(probe, _read_voxels(probe))
        except DataError as e:
            problems += e.problems
            continue
        annotation_probes[rater] = probe
        annotation_arrays[rater] = array if keep else None
        del array
    if image_probes:
        grid = image_probes[0]
        geometry = _geometry_source(image_probes, annotation_probes.values())
        for probe in image_probes[1:] + list(annotation_probes.values()):
            problem = _geometry_problem(probe, grid, geometry)
            if problem:
                problems.append(problem)
    if problems or len(image_probes) != len(images) or not image_probes:
        return None, problems
    case = Case(os.path.basename(case_dir), case_dir, image_probes, annotation_probes)
    if keep:
        case._image = (image_arrays[0] if len(image_arrays) == 1
                       else np.concatenate(image_arrays, axis=-1))
        case._annotations = annotation_arrays
    return case, []


def load_folder(directory, spacing=None, lazy=False):
    """Read and validate a folder of multi-annotator cases.

    Every file is read (one at a time) and checked before anything is
    returned; all problems of the folder are reported together.

    Args:
        directory: str or path, `DIR` of the layout in the module docstring.
        spacing: voxel size in mm of `.npy` files (one number or three); the
            other formats carry their own. Defaults to `None` (1 mm).
        lazy: bool. `False` keeps every case's arrays in memory; `True` keeps
            paths and geometry only and reads a case's arrays when first used
            (see `iter_cases`). Defaults to `False`.

    Returns:
        list of `Case`, in natural order of the case names.

    Raises:
        DataError: (a `ValueError`) one line per problem, each naming the
            file (or case folder), the problem and what was expected.

    Example:

    >>> import tempfile, os, numpy as np
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "case1"))
    >>> np.save(os.path.join(d, "case1", "image.npy"), np.zeros((4, 5, 6), np.float32))
    >>> np.save(os.path.join(d, "case1", "annotation-a.npy"), np.ones((4, 5, 6), np.uint8))
    >>> cases = load_folder(d, spacing=(0.5, 0.5, 1.0))
    >>> cases[0]
    Case('case1', shape=(4, 5, 6), channels=1, spacing=(0.5, 0.5, 1), raters=['a'])
    >>> cases[0].image.shape, cases[0].annotations["a"].dtype
    ((4, 5, 6, 1), dtype('uint8'))
    """
    directory = os.fspath(directory)
    spacing = _check_spacing(spacing)
    if not os.path.isdir(directory):
        what = "not a directory" if os.path.exists(directory) else "no such directory"
        raise DataError([f"{directory}: {what}. Expected a folder of case folders: "
                         f"{_EXPECTED_FILES}."])
    case_dirs = sorted(
        (os.path.join(directory, e) for e in os.listdir(directory)
         if not e.startswith(".") and os.path.isdir(os.path.join(directory, e))),
        key=lambda p: _natural_key(os.path.basename(p)),
    )
    if not case_dirs:
        raise DataError([f"{directory}: no case folders. Expected {_EXPECTED_FILES}."])
    cases, problems = [], []
    for case_dir in case_dirs:
        case, found = _validate_case(case_dir, spacing, keep=not lazy)
        problems += found
        if case is not None:
            cases.append(case)
    if problems:
        raise DataError(problems, heading=f"{directory}: {len(problems)} problem"
                        f"{'s' if len(problems) > 1 else ''} in the data folder:")
    return cases


def iter_cases(directory, spacing=None):
    """Validate the whole folder (as `load_folder`), then yield its cases
    one at a time with their arrays read; each case's arrays are released
    when the next is requested, so at most one case is held in memory."""
    for case in load_folder(directory, spacing=spacing, lazy=True):
        case.image, case.annotations  # noqa: B018 - read now, while it is this case's turn
        yield case
        case.release()


def raters(cases):
    """All rater ids of `cases`, in natural order (`"2"` before `"10"`)."""
    found = {r for case in cases for r in case.raters}
    return tuple(sorted(found, key=_natural_key))


def summary(cases):
    """A plain-text table of the cases (shape, channels, spacing, format,
    raters) and a last line with the totals, as `cmseg check-data` prints."""
    rows = [("case", "shape", "channels", "spacing (mm)", "format", "raters")]
    for case in cases:
        rows.append((case.name, " x ".join(map(str, case.shape)), str(case.channels),
                     " x ".join(f"{s:.3g}" for s in case.spacing), case.format,
                     f"{len(case.raters)}: {', '.join(case.raters)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    everyone = raters(cases)
    lines.append(f"{len(cases)} case{'s' if len(cases) != 1 else ''}, {len(everyone)} "
                 f"rater{'s' if len(everyone) != 1 else ''} ({', '.join(everyone)})")
    return "\n".join(lines)


def read_volume(path, spacing=None):
    """Read one volume with its geometry.

    Args:
        path: a `.nii`, `.nii.gz`, `.nrrd` or `.npy` file.
        spacing: voxel size in mm of a `.npy` file (one number or three).
            Defaults to `None` (1 mm).

    Returns:
        `(array, spacing, affine, meta)`: the voxels in the stored dtype
        (NIfTI scaling applied), `(X, Y, Z)` or `(X, Y, Z, C)`; the spacing
        tuple in mm; the 4 x 4 RAS affine; a dict with `format` (`"nifti"`,
        `"nrrd"`, `"npy"`), `path`, `shape` (spatial), `spacing` and
        `header`, which `write_volume(..., like=meta)` uses.

    Raises:
        DataError: (a `ValueError`) naming the file: missing, unsupported,
            unreadable or not a 3D volume.
    """
    probe = _probe(path, _check_spacing(spacing))
    array = _read_voxels(probe)
    return array, _spacing_of(probe.affine), np.array(probe.affine), _meta(probe)


def _meta(probe):
    return {"format": probe.format, "path": probe.path, "shape": probe.shape,
            "spacing": _spacing_of(probe.affine), "header": probe.header, "_probe": probe}


def _reference(like):
    if isinstance(like, Case):
        return like._reference
    if isinstance(like, dict) and "_probe" in like:
        return like["_probe"]
    if isinstance(like, (str, os.PathLike)):
        return _probe(like)
    raise TypeError(
        "Invalid value for argument `like`. Expected a Case, the meta dict of read_volume "
        f"or the path of a reference file. Received: like={type(like).__name__}"
    )


def _file_mode():
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _atomic(path):
    # The temporary keeps the final name's ending: nibabel picks gzip from it.
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fmt, ext = _format_of(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{ext or ''}",
                               dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 would hide outputs from the group
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_volume(path, array, like):
    """Write a 3D volume on the voxel grid of a reference file.

    The format follows `path`'s ending. NIfTI keeps the reference's header
    (orientation codes, units, description) when the reference is NIfTI,
    with the voxel type set to `array`'s and intensity scaling and display
    range reset; NRRD keeps the reference's header (`space`, `space
    directions`, `space origin`, custom fields) when the reference is NRRD.
    Across formats the reference's RAS affine is written (NRRD in
    `right-anterior-superior` space). `.npy` is the plain array. The file
    is written to a temporary name beside `path` and renamed, so a reader
    never sees half of it; nothing else is touched.

    Args:
        path: output file (`.nii`, `.nii.gz`, `.nrrd` or `.npy`).
        array: `(X, Y, Z)`, the reference's spatial shape: integer, bool or
            floating-point voxels, written with their values unchanged in
            the nearest type the format stores: bool as uint8; in NIfTI,
            int64 and uint64 as int32 and uint32 where the values fit; in
            NIfTI and NRRD, float16 as float32 and wider floats as float64
            (a ValueError if that changes a value).
        like: a `Case` (its image file), the `meta` of `read_volume`, or the
            path of a reference file.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    fmt, _ = _format_of(path)
    if fmt is None:
        raise ValueError(f"{path}: unsupported output format. Expected a file ending in "
                         f"{', '.join(EXTENSIONS)}.")
    reference = _reference(like)
    array = np.asarray(array)
    if array.shape != reference.shape:
        raise ValueError(f"{path}: array of shape {array.shape} does not fit the reference "
                         f"{reference.path}, {reference.shape}. Expected its spatial shape.")
    array = _storable(path, fmt, array)
    with _atomic(path) as tmp:
        if fmt == "npy":
            np.save(tmp, array, allow_pickle=False)
        elif fmt == "nifti":
            _write_nifti(tmp, array, reference)
        else:
            _write_nrrd(tmp, array, reference)
    return path


def _storable(path, fmt, array):
    """`array` in a voxel type that `fmt` stores, with the same values;
    ValueError naming `path` where no such type holds them."""
    dtype = array.dtype
    if dtype == bool:
        return array.astype(np.uint8)
    if dtype.kind not in "iuf":
        # read_volume could not read such voxels back.
        raise ValueError(f"{path}: cannot write voxels of type {dtype}. Expected integer, "
                         "boolean or floating-point voxels.")
    if fmt == "npy":
        return array
    if dtype.kind in "iu":
        if fmt == "nifti" and dtype.itemsize == 8 and array.size:
            # nibabel refuses 64-bit integers unasked, as many NIfTI readers
            # cannot read them; 32 bits hold any label or count met in practice.
            narrow = np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
            limits = np.iinfo(narrow)
            if limits.min <= array.min() and array.max() <= limits.max:
                return array.astype(narrow)
        return array  # NRRD and NIfTI store every NumPy integer type
    if dtype.itemsize < 4:
        return array.astype(np.float32)  # exact: NIfTI and NRRD have no float16
    if dtype.itemsize > 8:
        wide = array.astype(np.float64)
        if not np.array_equal(wide.astype(dtype), array, equal_nan=True):
            raise ValueError(f"{path}: {dtype} voxels not representable in {_NAMES[fmt]}: "
                             "some values change in float64, its widest floating-point type. "
                             "Expected values that float64 holds exactly (or write .npy).")
        return wide
    return array


def _write_nifti(path, array, reference):
    nib = _need("nibabel", "writing NIfTI files")
    if reference.format == "nifti":
        header = reference.header.copy()
        # The reference's own affine: nibabel then leaves its sform and qform
        # (and their codes) exactly as they were.
        image = nib.Nifti1Image(array, reference.affine, header=header)
        image.header["cal_min"], image.header["cal_max"] = 0, 0
    else:
        # A header that already has the voxel type: without one, nibabel
        # refuses the 64-bit integers _storable leaves as they are.
        header = nib.Nifti1Header()
        header.set_data_dtype(array.dtype)
        image = nib.Nifti1Image(array, reference.affine, header=header)
        image.header.set_qform(reference.affine, code=1)
        image.header.set_sform(reference.affine, code=1)
    image.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, path)


def _write_nrrd(path, array, reference):
    nrrd = _need("nrrd", "writing NRRD files")
    if reference.format == "nrrd":
        header = {k: v for k, v in reference.header.items() if k not in _NRRD_DATA_FIELDS}
        axes = list(reference.spatial_axes)
        for key in _NRRD_PER_AXIS:
            if key in header and len(header[key]) == reference.ndim:
                values = header[key]
                header[key] = (np.asarray(values)[axes] if isinstance(values, np.ndarray)
                               else [values[a] for a in axes])
    else:
        header = {"space": "right-anterior-superior",
                  "space directions": reference.affine[:3, :3].T,
                  "space origin": reference.affine[:3, 3], "kinds": ["domain"] * 3}
    header.setdefault("encoding", "gzip")
    nrrd.write(path, array, header)
