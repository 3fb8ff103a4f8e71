"""The one input encoder of CM label volumes: `encode_input`, the table the
`tf.data` pipeline gathers, `make_arrays` and `cmseg predict` all give the
original code's float32 numbers, bit for bit."""

import numpy as np
import pytest
from _references import np_encode_input

from cm_dataset import CMData, encode_input, input_table, make_arrays, make_dataset
from cmseg.predict import encode

ENCODINGS = ("scaled", "onehot")


@pytest.fixture(scope="module")
def data():
    """2 bones x 2 surgeons at 4^3 holding every label 0..13."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 14, size=(4, 4, 4, 4)).astype(np.int8)
    x[:, 0, 0, :] = [0, 13, 6, 7]  # both ends and the middle of the range, in every volume
    y = (rng.random(x.shape) < 0.3).astype(np.int8)
    return CMData(x, y, n_bones=2, n_surgeons=2)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_path_gives_the_original_numbers(data, encoding):
    # Experiment 1, fold 1, "test": bone 0 with each of its two surgeries.
    x = data.x[[0, 1]]
    want = np_encode_input(x, encoding)
    assert want.dtype == np.float32 and set(np.unique(x)) >= {0, 6, 7, 13}
    np.testing.assert_array_equal(encode_input(x, encoding), want)
    np.testing.assert_array_equal(encode(x, encoding), want)
    arrays, _ = make_arrays(data, 1, 1, subset="test", input_encoding=encoding)
    np.testing.assert_array_equal(arrays, want)
    ds = make_dataset(data, 1, 1, subset="test", batch_size=2, augment=None, input_encoding=encoding)
    (batch, _), = [(bx.numpy(), by.numpy()) for bx, by in ds]
    np.testing.assert_array_equal(batch, want)
    for got in (encode_input(x, encoding), arrays, batch):
        assert got.dtype == np.float32


def test_table_rows_are_the_encoded_labels():
    labels = np.arange(14)
    for encoding in ENCODINGS:
        np.testing.assert_array_equal(input_table(encoding), np_encode_input(labels, encoding))
    assert input_table("scaled")[0, 0] == -1.0 and input_table("scaled")[13, 0] == 1.0
    # Integer-valued floats and bools are labels too.
    np.testing.assert_array_equal(encode_input(labels.astype(np.float64)), input_table("scaled"))
    np.testing.assert_array_equal(encode_input(np.array([True, False]), "onehot"), np.eye(14)[[1, 0]])


@pytest.mark.parametrize(
    "x, encoding, match",
    [
        (np.array([0, 1]), "raw", r"`encoding`.*Received: encoding='raw'"),
        (np.array([0, 14]), "scaled", r"`x`.*0\.\.13.*from 0 to 14"),
        (np.array([-1, 3]), "onehot", r"`x`.*0\.\.13.*from -1 to 3"),
        (np.array([0.5, 2.0]), "scaled", r"`x`.*non-integer values of dtype float64"),
        (np.array([np.nan]), "scaled", r"`x`.*non-integer"),
    ],
)
def test_bad_inputs_raise(x, encoding, match):
    with pytest.raises(ValueError, match=match):
        encode_input(x, encoding)
    with pytest.raises(ValueError, match=match):
        encode(x, encoding)
