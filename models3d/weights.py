"""Loading the RPDL original's Keras 2 HDF5 files into the Keras 3 models."""

import collections
import json

import h5py
import numpy as np


def _decode(values):
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _attribute(group, name):
    """A list-of-strings attribute as Keras 2 wrote it: whole, or split into
    `name0`, `name1`, ... when it exceeded HDF5's 64 KiB header limit."""
    if name in group.attrs:
        return _decode(group.attrs[name])
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(_decode(group.attrs[f"{name}{chunk}"]))
        chunk += 1
    return values if chunk else None


def _layer_classes(f):
    """Counts of layer class names in a whole-model file's `model_config`
    (`None` for weights-only files, which carry no architecture)."""
    config = f.attrs.get("model_config")
    if config is None:
        return None
    if isinstance(config, bytes):
        config = config.decode("utf8")
    config = json.loads(config).get("config", {})
    # Keras 2 Sequential configs were a bare list of layers.
    layers = config if isinstance(config, list) else config.get("layers", [])
    return collections.Counter(
        layer["class_name"] for layer in layers
        if layer.get("class_name") != "InputLayer"
    )


def _read_keras2_file(path):
    path = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(
            f"Cannot read original weights from {path!r}: not a readable HDF5 "
            f"file ({e})."
        ) from None
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        layer_names = _attribute(group, "layer_names")
        if layer_names is None:
            raise ValueError(
                f"{path!r} is not a Keras 2 HDF5 weights file: it has no "
                "`layer_names` attribute (neither at the root nor in a "
                "`model_weights` group)."
            )
        layers = []
        for name in layer_names:
            weight_names = _attribute(group[name], "weight_names") or []
            if weight_names:
                layers.append(
                    (name, [np.asarray(group[name][w]) for w in weight_names])
                )
        return layers, _layer_classes(f)


def read_keras2_weights(path):
    """Read a Keras 2 HDF5 file (`model.save` or `model.save_weights`).

    Args:
        path: path of the `.h5` file.

    Returns:
        A list of `(layer_name, [arrays])`, one per layer with weights, in the
        file's (topological) order.

    Raises:
        ValueError: the file cannot be read or is not a Keras 2 HDF5 file.
    """
    return _read_keras2_file(path)[0]


def load_original_weights(model, path, check_structure=True):
    """Load weights saved by the RPDL original (Keras 2.2.4, HDF5) into `model`.

    The original saved whole models (`model_bone/unet_bone{k}_heatmapdice.h5`,
    `model_surgeon/unet_s{k}_dice.h5`, ...) whose layers carry Keras 2's
    default names (`conv3d_1`, `batch_normalization_1`, ...). As Keras 2's
    `load_weights` does by default, layers are matched by position: the
    file's layers that have weights, in saved (topological) order, against
    `model.layers` that have weights, in the same order.

    Weights alone cannot tell a U-net file from a V-net one (the residual
    additions have no weights), so for whole-model files the layer classes
    of the saved architecture (`model_config`) are compared with `model`'s
    first; weights-only files (`save_weights`) carry no architecture and get
    the weight checks only. Every check runs before anything is assigned,
    so on any error `model` is left unchanged.

    Args:
        model: a `keras.Model` of the same architecture and settings as the
            saved one (e.g. `models3d.basic_unet()` for the U-net files).
        path: path of the Keras 2 `.h5` file.
        check_structure: compare the layer classes of a whole-model file
            with `model`'s. Defaults to `True`.

    Returns:
        `model`, with the weights loaded.

    Raises:
        ValueError: the file is unreadable or not a Keras 2 file, its
            architecture has different layers (the message lists the layer
            classes whose counts differ), or the number of weighted layers,
            of weights in a layer, or a weight's shape differs (the message
            names both layers and both shapes).

    Example:

    ```python
    model = models3d.basic_unet()
    models3d.load_original_weights(model, "model_bone/unet_bone1_heatmapdice.h5")
    ```
    """
    saved, saved_classes = _read_keras2_file(path)
    where = f"Cannot load {str(path)!r} into model {model.name!r}"
    if check_structure and saved_classes is not None:
        classes = collections.Counter(
            type(layer).__name__ for layer in model.layers
            if type(layer).__name__ != "InputLayer"
        )
        if classes != saved_classes:
            differences = ", ".join(
                f"{name} (file {saved_classes[name]}, model {classes[name]})"
                for name in sorted(set(classes) | set(saved_classes))
                if classes[name] != saved_classes[name]
            )
            raise ValueError(
                f"{where}: the architectures differ in the number of layers "
                f"of class {differences}. Build the architecture the file was "
                "saved from (e.g. `vnet` rather than `basic_unet`), or pass "
                "`check_structure=False` to match weights only."
            )
    targets = [layer for layer in model.layers if layer.weights]
    if len(saved) != len(targets):
        raise ValueError(
            f"{where}: the file has {len(saved)} layers with weights, the "
            f"model has {len(targets)}. Build the model with the settings the "
            "file was trained with (input_shape, n_base_filters, depth, "
            "n_labels)."
        )
    for (saved_name, arrays), layer in zip(saved, targets):
        if len(arrays) != len(layer.weights):
            raise ValueError(
                f"{where}: layer {layer.name!r} has {len(layer.weights)} "
                f"weights but the file's layer {saved_name!r} has "
                f"{len(arrays)}."
            )
        for variable, array in zip(layer.weights, arrays):
            if tuple(variable.shape) != array.shape:
                raise ValueError(
                    f"{where}: shape mismatch for weight {variable.path!r} of "
                    f"layer {layer.name!r}: the model expects "
                    f"{tuple(variable.shape)}, the file's layer "
                    f"{saved_name!r} holds {array.shape}."
                )
    for (_, arrays), layer in zip(saved, targets):
        layer.set_weights(arrays)
    return model


__all__ = ["load_original_weights", "read_keras2_weights"]
