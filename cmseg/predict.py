"""`cmseg predict`: surgical regions for new bones from a trained model.

The model is a `.keras` file (from `cmseg train`, or any model saved by
Keras 3) or a Keras 2 `.h5` file of the original RPDL code, whose weights
are loaded into the matching `models3d` architecture with
`models3d.load_original_weights`. The input holds one or more label volumes
(anatomical labels 0..13), encoded as the model expects: one channel
`x / 6.5 - 1` (the original's scaling) or 14 one-hot channels.

The input is a `.npy` file (one volume or a stack) or one volume in NIfTI
(`.nii`, `.nii.gz`) or NRRD (`.nrrd`), read with `cm_dataset.folder.read_volume`
in its stored voxel order (nothing is reoriented or resampled, so the volume
must lie as the model's training data did). The outputs are written in the
input's format, on its voxel grid with its affine and header:
`region.nii.gz` / `probability.nii.gz` for NIfTI, `region.nrrd` /
`probability.nrrd` for NRRD, `region.npy` / `probability.npy` for `.npy`.

Volumes of another size than the model's input are predicted by sliding
windows (`cmseg.inference.sliding_window`: overlap 0.5, Gaussian
weighting); `tta` averages over exact symmetries (`"flips"`, or `"all"` 48),
and `keep_largest` / `min_size` remove stray islands from the region.
"""

import os

import numpy as np

from cmseg import _io
from cmseg._deps import require
from cmseg._io import UsageError

require("matplotlib", "cmseg predict draws slices.png with it")

__all__ = ["encode", "load_volumes", "load_input", "load_image", "load_model", "predict",
           "probabilities", "regions", "plot_slices", "full_resolution", "output_names",
           "run_preprocessing"]

N_LABELS = 14
# Input ending -> (region, probability) file names: outputs keep the input's format.
_OUTPUTS = {
    "nifti": ("region.nii.gz", "probability.nii.gz"),
    "nrrd": ("region.nrrd", "probability.nrrd"),
    "npy": ("region.npy", "probability.npy"),
}
_INPUT_FORMATS = ".npy, .nii, .nii.gz or .nrrd"


def encode(x, encoding="scaled"):
    """Network input from label volumes `(N, *spatial)`, encoded as for
    training (`cm_dataset.encode_input`, which see).

    Args:
        x: integer labels 0..13, `(N, *spatial)`.
        encoding: `"scaled"` (`x / 6.5 - 1`, one channel, the original
            code's input) or `"onehot"` (14 channels). Defaults to
            `"scaled"`.

    Returns:
        float32 array `(N, *spatial, 1 or 14)`.
    """
    # Imported here: `cm_dataset` brings Keras, which `cmseg` loads only
    # for the commands that need it.
    from cm_dataset.encoding import encode_input

    return encode_input(x, encoding)


def _check_labels(x, path):
    """int8 labels from an array read off `path`, or UsageError naming it."""
    if x.dtype != bool and not np.issubdtype(x.dtype, np.integer):
        if not np.issubdtype(x.dtype, np.floating) or not np.all(np.round(x) == x):
            raise UsageError(
                f"--input {path}: wrong dtype. Expected integer anatomical labels "
                f"0..{N_LABELS - 1}. Received: dtype {x.dtype}."
            )
    lo, hi = float(x.min()), float(x.max())
    if not (0 <= lo and hi <= N_LABELS - 1):  # NaN fails too
        raise UsageError(
            f"--input {path}: label out of range. Expected anatomical labels "
            f"0..{N_LABELS - 1}. Received values from {lo:g} to {hi:g}."
        )
    return x.astype(np.int8)


def _input_format(path):
    name = os.path.basename(path).lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        return "nrrd"
    return None


def load_input(path):
    """Read and validate the label volumes of `--input`, with the geometry
    the outputs are written on.

    Args:
        path: a `.npy` file of shape `(D, H, W)` or `(N, D, H, W)`, or one
            volume `(D, H, W)` as `.nii`, `.nii.gz` or `.nrrd`.

    Returns:
        `(x, meta)`: int8 array `(N, D, H, W)` and, for NIfTI and NRRD, the
        `meta` of `cm_dataset.folder.read_volume` (`None` for `.npy`).

    Raises:
        UsageError: (a `ValueError`) naming the file and what is wrong.
    """
    if not os.path.isfile(path):
        raise UsageError(f"--input {path}: file missing. Expected a {_INPUT_FORMATS} file "
                         "of label volumes.")
    fmt = _input_format(path)
    if fmt is None:
        raise UsageError(f"--input {path}: unknown format. Expected a {_INPUT_FORMATS} file "
                         "of label volumes.")
    if fmt == "npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - every reader failure is reported alike
            raise UsageError(f"--input {path}: unreadable as a NumPy .npy array ({e}).") from None
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] == 0:
            raise UsageError(
                f"--input {path}: wrong shape. Expected one volume (D, H, W), e.g. (64, 64, 64), "
                f"or a stack (N, D, H, W) of anatomical label volumes. Received: shape {x.shape}."
            )
        return _check_labels(x, path), None
    # Imported here: `cm_dataset` brings Keras, loaded only when a command needs it.
    from cm_dataset.folder import DataError, read_volume

    try:
        x, _, _, meta = read_volume(path)
    except DataError as e:
        raise UsageError(f"--input {e}") from None
    if x.ndim != 3:
        raise UsageError(
            f"--input {path}: wrong shape. Expected one label volume (D, H, W). Received: "
            f"shape {x.shape} (a {fmt.upper()} file holds one volume; stack several in a .npy)."
        )
    return _check_labels(x, path)[None], meta


def load_volumes(path):
    """Read and validate label volumes (`load_input` without the geometry).

    Args:
        path: a `.npy` file of shape `(D, H, W)` or `(N, D, H, W)`, or one
            volume as `.nii`, `.nii.gz` or `.nrrd`.

    Returns:
        int8 array `(N, D, H, W)`.

    Raises:
        UsageError: (a `ValueError`) naming the file and what is wrong.
    """
    return load_input(path)[0]


def output_names(input_path):
    """`(region, probability)` file names for an input: its own format."""
    return _OUTPUTS[_input_format(input_path) or "npy"]


def _refuse_overwriting_input(input_path, out):
    """UsageError if an output file of `out` would replace `--input`."""
    if not (os.path.isfile(input_path) and os.path.isdir(out)):
        return  # a missing input is load_input's to report; a new folder holds nothing
    if not os.path.samefile(os.path.dirname(os.path.abspath(input_path)), out):
        return
    base = os.path.basename(input_path)
    for name in output_names(input_path):
        target = os.path.join(out, name)
        # Another case is the same file on a case-insensitive file system.
        if name == base or (name.lower() == base.lower() and os.path.exists(target)
                            and os.path.samefile(target, input_path)):
            raise UsageError(
                f"--out {out}: the output {target} would overwrite --input {input_path}. "
                "Expected an --out folder other than the input's, or an input named other "
                f"than {' or '.join(output_names(input_path))}.")


def full_resolution(model):
    """The model's full-resolution output alone: a deep-supervision model
    (`isensee2017(deep_supervision=True)`, outputs finest first) without its
    coarser outputs, any other model as it is."""
    import keras

    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[0], name=model.name)


def load_model(path, architecture="unet", size=64):
    """A model from a `.keras` file, or the original's `.h5` weights loaded
    into `models3d.get(architecture)` at `size`^3 with one input channel.

    Raises:
        UsageError: (a `ValueError`) naming the file: missing, of an unknown
            format, unreadable, or (`.h5`) not matching `architecture`.
    """
    import keras

    import keras_seglosses  # noqa: F401  (registered losses)
    import models3d

    if not os.path.isfile(path):
        raise UsageError(f"--model {path}: file missing.")
    if path.endswith(".keras"):
        try:
            return full_resolution(keras.models.load_model(path, compile=False))
        except Exception as e:  # noqa: BLE001 - every reader failure is reported alike
            raise UsageError(
                f"--model {path}: unreadable as a Keras model ({type(e).__name__}: {e})."
            ) from None
    if path.endswith((".h5", ".hdf5")):
        model = models3d.get(architecture, input_shape=(size, size, size, 1))
        try:
            models3d.load_original_weights(model, path)
        except ValueError as e:
            raise UsageError(
                f"--model {path}: not loadable as an original {architecture} model ({e}). "
                "Pass the file's architecture with --architecture."
            ) from None
        return model
    raise UsageError(
        f"--model {path}: unknown format. Expected a .keras model or an original "
        "Keras 2 .h5 weight file."
    )


def plot_slices(x, region, path, max_rows=4):
    """Orthogonal slices (axial, coronal, sagittal) through the centre of the
    predicted region (the volume centre when empty): anatomy in grey, the
    region in red. One row per volume, at most `max_rows`; `x` holds label
    maps (integers, drawn on 0..13) or normalized images (their range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    red = matplotlib.colors.ListedColormap(["red"])
    n = min(len(x), max_rows)
    # label maps on their fixed 0..13 scale; normalized images on their own range
    labels = np.issubdtype(np.asarray(x).dtype, np.integer)
    low, high = (0, N_LABELS - 1) if labels else (float(np.min(x[:n])), float(np.max(x[:n])))
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        idx = np.argwhere(region[i])
        centre = idx.mean(axis=0).round().astype(int) if len(idx) else np.array(x[i].shape) // 2
        for a, (ax, title) in enumerate(zip(axes[i], ("axis 0", "axis 1", "axis 2"))):
            sl = [slice(None)] * 3
            sl[a] = int(centre[a])
            ax.imshow(np.take(x[i], centre[a], axis=a).T, cmap="gray", origin="lower",
                      vmin=low, vmax=high)
            mask = np.take(region[i], centre[a], axis=a).T
            ax.imshow(np.ma.masked_where(mask == 0, mask), cmap=red, alpha=0.5,
                      origin="lower", vmin=0, vmax=1)
            ax.set_title(f"volume {i}, {title} = {centre[a]}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with _io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def run_preprocessing(model_path):
    """The preprocessing a model was trained with, from its run's
    `config.json` (written by `cmseg train` beside `model.keras`): a dict
    with `intensity`, `window`, `input_encoding`, `channels`,
    `input_channels`, `patch_size` and `resample`; `None` for a model
    without a run (any `.keras` or `.h5` file elsewhere), or of the CM
    files (anatomical label maps, encoded as the model's input asks)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        return _io.read_json(path).get("preprocessing")
    except (ValueError, AttributeError) as e:
        raise UsageError(f"--model {model_path}: its run's {path} is unreadable ({e}).") \
            from None


def load_image(path, preprocessing, spacing=None):
    """Read one image and normalize it as the model's training did.

    Returns:
        `(x, meta, spacing)`: float32 `(1, X, Y, Z, C)` (C the model's input
        channels), the geometry to write the outputs on (`None` for
        `.npy`), and the voxel size.
    """
    from cm_dataset import patches
    from cm_dataset.folder import DataError, read_volume

    if not os.path.isfile(path):
        raise UsageError(f"--input {path}: file missing. Expected a {_INPUT_FORMATS} image.")
    try:
        x, spacing, _, meta = read_volume(path, spacing=spacing)
    except DataError as e:
        raise UsageError(f"--input {e}") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != preprocessing["channels"]:
        raise UsageError(
            f"--input {path}: wrong shape. Expected one volume (X, Y, Z) with "
            f"{preprocessing['channels']} channel(s) on the last axis, as the model's "
            f"training images. Received: shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise UsageError(f"--input {path}: non-finite voxel values (NaN or inf).")
    try:
        x = patches.normalize(x.astype(np.float32), preprocessing["intensity"],
                              window=preprocessing.get("window"),
                              input_encoding=preprocessing.get("input_encoding", "scaled"))
    except ValueError as e:
        raise UsageError(f"--input {path}: {e}") from None
    return x[None], (meta if meta["format"] != "npy" else None), spacing


def _resized(volume, shape, order):
    """`volume` `(*spatial)` or `(*spatial, C)` resized to `shape` as
    `cm_dataset.patches` resamples for training (scipy's zoom, corners
    aligned), so the model sees the grid it was trained on."""
    from scipy import ndimage

    spatial = volume.shape[:3]
    if tuple(spatial) == tuple(shape):
        return volume
    factors = [t / s for t, s in zip(shape, spatial)]
    if volume.ndim == 3:
        return ndimage.zoom(volume, factors, order=order)
    return np.stack([ndimage.zoom(volume[..., c], factors, order=order)
                     for c in range(volume.shape[-1])], axis=-1)


def pad_value(preprocessing, encoding="scaled"):
    """The model input of a voxel outside the image, per channel: what
    training padded small cases with (`cm_dataset.patches`): -1 (air) for
    CT, 0 for MR, the encoding of label 0 for label maps."""
    from cm_dataset.encoding import encode_input

    intensity = (preprocessing or {}).get("intensity", "labels")
    if intensity == "ct":
        return np.float32(-1.0)
    if intensity == "mr":
        return np.float32(0.0)
    encoding = (preprocessing or {}).get("input_encoding", encoding)
    return encode_input(np.zeros((1,), np.int8), encoding)[0]


def probabilities(model, volumes, spacing=None, *, tta="none", overlap=0.5, batch_size=2,
                  resample=None, encode=None, order=1, pad=0.0):
    """The model's foreground probability for each volume, on its own grid.

    Args:
        model: a Keras model `(n, *patch, C) -> (n, *patch, 1)`.
        volumes: float32 `(N, X, Y, Z, C)`, the model's inputs; or, with
            `encode`, what `encode` turns into them (e.g. label maps
            `(N, X, Y, Z)`).
        spacing: voxel size (for `tta="all"`, which permutes only axes of
            equal spacing). Defaults to isotropic.
        tta: `"none"`, `"flips"` or `"all"` (`cmseg.inference.symmetric_mean`).
        overlap: of the sliding windows when a volume is not the model's
            input size. Defaults to `0.5`.
        batch_size: windows per model call. Defaults to `2`.
        resample: int S: the model was trained on cases resized to S^3, so
            each volume is resized to S^3 (spline `order`, before `encode`:
            0 for label maps), predicted there, and its probability resized
            back (linear). Defaults to `None`.
        encode: callable applied to the (resized) volumes, or `None`.
        order: spline order of the resize to S^3. Defaults to `1`.
        pad: the input value (scalar or per channel) of voxels outside a
            volume smaller than the window (`pad_value`). Defaults to `0`.

    Returns:
        float32 `(N, X, Y, Z)`.
    """
    import keras

    from cmseg import inference

    spatial = tuple(volumes.shape[1:4])
    if resample:
        volumes = np.stack([_resized(v, (resample,) * 3, order) for v in volumes])
        spacing = tuple(s * n / resample for s, n in zip(spacing or (1.0,) * 3, spatial))
    encoded = volumes if encode is None else encode(volumes)
    shape = tuple(model.input_shape[1:])
    patch = tuple(s if s is not None else d for s, d in zip(shape[:-1], encoded.shape[1:-1]))

    def run(batch):
        n = len(batch)
        if n < batch_size:
            # every call the same shape, so the compiled step is never retraced
            fill = np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)
            batch = np.concatenate([batch, fill])
        # one compiled step per batch: `predict` would set up a whole
        # evaluation loop for each batch of windows
        return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)))[:n]

    def whole(volume):
        if volume.shape[:-1] == patch:
            return run(volume[None])[0]
        return inference.sliding_window(run, volume, patch, overlap=overlap,
                                        batch_size=batch_size, pad_value=pad)

    prob = np.stack([inference.symmetric_mean(whole, v, mode=tta, spacing=spacing)
                     for v in encoded])
    if resample:
        prob = np.stack([_resized(p, spatial, order=1) for p in prob])
    return prob[..., 0].astype(np.float32)


def regions(prob, threshold=0.5, *, keep_largest=False, min_size=0):
    """int8 regions `(N, *spatial)` of probabilities `(N, *spatial)`:
    `prob > threshold`, then the largest 26-connected component alone
    (`keep_largest`) and without components under `min_size` voxels."""
    from cmseg import inference

    region = np.asarray(prob) > threshold
    if keep_largest:
        region = np.stack([inference.keep_largest_component(r) for r in region])
    if min_size:
        region = np.stack([inference.remove_small_components(r, min_size) for r in region])
    return region.astype(np.int8)


def predict(model_path, input_path, out, architecture="unet", batch_size=2, threshold=0.5,
            tta="none", overlap=0.5, keep_largest=False, min_size=0, log=print, spacing=None):
    """Predict and write the region (binary at `threshold`), the
    probability (float32) and `slices.png` into `out`.

    The region and probability files take the input's format
    (`output_names`): for `.npy` input `region.npy` (int8) and
    `probability.npy`, stacked `(N, D, H, W)` as the input; for NIfTI
    `region.nii.gz` (uint8) and `probability.nii.gz`, for NRRD `region.nrrd`
    and `probability.nrrd`, each with the input's shape, affine and header
    (`cm_dataset.folder.write_volume`).

    Args:
        tta: `"none"`, `"flips"` (8 flips) or `"all"` (the 48 symmetries of
            the cube): the mean prediction over them. Defaults to `"none"`.
        overlap: window overlap when a volume is not the model's input
            size. Defaults to `0.5`.
        keep_largest: bool, keep the largest 26-connected component of
            each region. Defaults to `False`.
        min_size: int, remove components smaller than this many voxels
            (0: none). Defaults to `0`.
        spacing: voxel size of a `.npy` input (for `tta="all"`); the
            headers give it for NIfTI and NRRD. Defaults to the spacing the
            model's run recorded, else 1 mm.

    Returns:
        `(region, probability)` arrays of shape `(N, D, H, W)`.
    """
    from cmseg import inference

    if tta not in inference.TTA_MODES:
        raise UsageError(f"Invalid value for --tta. Expected one of "
                         f"{', '.join(inference.TTA_MODES)}. Received: --tta {tta}")
    _refuse_overwriting_input(input_path, out)
    preprocessing = run_preprocessing(model_path)
    if spacing is None and preprocessing and preprocessing.get("spacing"):
        spacing = tuple(preprocessing["spacing"])  # of the run's .npy cases
    images = bool(preprocessing and preprocessing["intensity"] != "labels")
    if images:
        encoded, meta, file_spacing = load_image(input_path, preprocessing, spacing)
        x = encoded[..., 0]  # for the slices figure
    else:
        x, meta = load_input(input_path)
        file_spacing = meta["spacing"] if meta is not None else None
    spacing = file_spacing or spacing
    spatial = x.shape[1:]
    size = (preprocessing or {}).get("resample")
    cubic = len(set(spatial)) == 1
    model = load_model(model_path, architecture, size=spatial[0] if cubic else 64)
    shape = tuple(model.input_shape[1:])
    encoding = "onehot" if shape[-1] == N_LABELS else "scaled"
    channels = encoded.shape[-1] if images else (N_LABELS if encoding == "onehot" else 1)
    if channels != shape[-1]:
        raise UsageError(f"--input {input_path}: {channels} input channel(s) after "
                         f"preprocessing; the model {model_path} takes {shape[-1]}.")
    # label maps are resized before they are encoded, nearest-neighbour, as training did
    volumes, order = (encoded, 1) if images else (x, 0)
    coder = None if images else (lambda v: encode(v, encoding))
    grid = (size,) * 3 if size else spatial  # what the model sees
    patch = tuple(s if s is not None else d for s, d in zip(shape[:-1], grid))
    windows = "" if grid == patch else f", sliding {patch} windows"
    prob = probabilities(model, volumes, spacing, tta=tta, overlap=overlap,
                         batch_size=batch_size, resample=size, encode=coder, order=order,
                         pad=pad_value(preprocessing, encoding))
    region = regions(prob, threshold, keep_largest=keep_largest, min_size=min_size)
    region_name, prob_name = output_names(input_path)
    os.makedirs(out, exist_ok=True)
    if meta is None:
        _io.save_npy(os.path.join(out, prob_name), prob)
        _io.save_npy(os.path.join(out, region_name), region)
    else:
        from cm_dataset.folder import write_volume

        write_volume(os.path.join(out, prob_name), prob[0], like=meta)
        write_volume(os.path.join(out, region_name), region[0].astype(np.uint8), like=meta)
    plot_slices(x, region, os.path.join(out, "slices.png"))
    fractions = ", ".join(f"{100 * r.mean():.2f}%" for r in region[:8])
    log(f"{out}: {len(x)} volume(s){windows}, tta {tta}, predicted region {fractions} of the "
        f"volume -> {region_name}, {prob_name}, slices.png")
    return region, prob
