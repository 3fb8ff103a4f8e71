"""The network input of CM label volumes: one encoder for the pipeline,
`make_arrays` and prediction, so a model sees the same numbers wherever its
input comes from.

The input volumes hold anatomical labels 0..13 (`cm_dataset.data.LABELS`).
Both encodings are a lookup in a 14-row table, so the array form
(`encode_input`) and the `tf.data` pipeline, which gathers the same table,
agree bit for bit.
"""

import numpy as np

from cm_dataset.data import N_LABELS

__all__ = ["INPUT_ENCODINGS", "input_table", "encode_input"]

INPUT_ENCODINGS = ("scaled", "onehot")


def _check_encoding(encoding):
    if encoding not in INPUT_ENCODINGS:
        raise ValueError(
            "Invalid value for argument `encoding`. Expected one of "
            f"{INPUT_ENCODINGS}. Received: encoding={encoding!r}"
        )
    return encoding


def input_table(encoding):
    """The encoded input of every label, row `k` for label `k`.

    `"scaled"`: `k / 6.5 - 1` in float32, labels 0..13 onto [-1, 1] (the
    original code's input); `"onehot"`: row `k` of the 14 x 14 identity.

    Args:
        encoding: `"scaled"` or `"onehot"`.

    Returns:
        float32 array of shape `(14, 1)` or `(14, 14)`.

    Example:

    >>> input_table("scaled")[[0, 13], 0].tolist()
    [-1.0, 1.0]
    >>> input_table("onehot").shape
    (14, 14)
    """
    if _check_encoding(encoding) == "scaled":
        labels = np.arange(N_LABELS, dtype=np.float32)
        return (labels / np.float32(6.5) - np.float32(1.0))[:, None]
    return np.eye(N_LABELS, dtype=np.float32)


def encode_input(x, encoding="scaled"):
    """Network input from label volumes.

    Each voxel's label `k` becomes row `k` of `input_table(encoding)`:
    `"scaled"` is `x / 6.5 - 1` in one channel, `"onehot"` 14 channels.

    Args:
        x: integer-valued array of labels 0..13, any shape (typically
            `(N, S, S, S)`).
        encoding: `"scaled"` or `"onehot"`. Defaults to `"scaled"`.

    Returns:
        float32 array of shape `x.shape + (1,)` or `x.shape + (14,)`.

    Raises:
        ValueError: for an unknown `encoding`, or labels that are not
            integers in 0..13.

    Example:

    >>> import numpy as np
    >>> encode_input(np.array([[0, 13]]))[..., 0].tolist()
    [[-1.0, 1.0]]
    >>> encode_input(np.array([[0, 13]]), "onehot").shape
    (1, 2, 14)
    """
    table = input_table(encoding)
    x = np.asarray(x)
    integral = x.dtype == bool or np.issubdtype(x.dtype, np.integer)
    if not integral and np.issubdtype(x.dtype, np.floating):
        integral = bool(np.all(np.round(x) == x))  # NaN fails too
    if not integral:
        raise ValueError(
            "Invalid value for argument `x`. Expected integer anatomical labels "
            f"0..{N_LABELS - 1}. Received: non-integer values of dtype {x.dtype}."
        )
    # Indexing would wrap a negative label round to the end of the table.
    if x.size and (x.min() < 0 or x.max() > N_LABELS - 1):
        raise ValueError(
            "Invalid value for argument `x`. Expected integer anatomical labels "
            f"0..{N_LABELS - 1}. Received: labels from {x.min():g} to {x.max():g}."
        )
    return table[x.astype(np.intp)]
