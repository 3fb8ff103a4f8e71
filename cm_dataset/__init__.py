"""The data package: the cortical-mastoidectomy (CM) data of the RPDL paper
(files, a calibrated synthetic stand-in, the leave-one-out splits, the
`tf.data` training pipeline) and any folder of multi-annotator cases in
NIfTI, NRRD or `.npy` (`cm_dataset.folder`), its splits by case or by
rater (`cm_dataset.splits.folder_split`) and its patch pipeline
(`cm_dataset.patches`).

TensorFlow is imported on the first call of `make_dataset`, so `import
cm_dataset` stays light.
"""

from cm_dataset import augment, encoding, folder, patches, pipeline, splits, synthetic
from cm_dataset.data import LABELS, N_LABELS, CMData, file_names, load
from cm_dataset.encoding import INPUT_ENCODINGS, encode_input, input_table
from cm_dataset.folder import (
    Case,
    DataError,
    iter_cases,
    load_folder,
    read_volume,
    write_volume,
)
from cm_dataset.patches import make_patch_dataset
from cm_dataset.pipeline import make_arrays, make_dataset
from cm_dataset.splits import (
    FolderSplit,
    Split,
    folder_split,
    get_split,
    leave_one_bone_out,
    leave_one_surgeon_out,
)
from cm_dataset.synthetic import calibration, generate

__all__ = [
    "CMData",
    "load",
    "file_names",
    "LABELS",
    "N_LABELS",
    "INPUT_ENCODINGS",
    "encode_input",
    "input_table",
    "generate",
    "calibration",
    "Split",
    "get_split",
    "leave_one_bone_out",
    "leave_one_surgeon_out",
    "make_dataset",
    "make_arrays",
    "make_patch_dataset",
    "FolderSplit",
    "folder_split",
    "Case",
    "DataError",
    "load_folder",
    "iter_cases",
    "read_volume",
    "write_volume",
    "augment",
    "encoding",
    "folder",
    "patches",
    "pipeline",
    "splits",
    "synthetic",
]

