"""`cmseg._io`: atomic writes leave the old file or the new one, never a
partial one; CSV/JSON round trips; the progress line."""

import io
import math
import os

import numpy as np
import pytest

from cmseg import _io


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "state.json"
    _io.write_json(path, {"epoch": 1})
    with pytest.raises(RuntimeError):
        with _io.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"epoch": 2, "trunc')
            raise RuntimeError("killed")
    assert _io.read_json(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["state.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_round_trips(tmp_path):
    _io.write_json(tmp_path / "a.json", {"best": -math.inf, "x": [1, 2.5]})
    assert _io.read_json(tmp_path / "a.json") == {"best": -math.inf, "x": [1, 2.5]}
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "val_loss": 0.3}]
    _io.write_csv(tmp_path / "h.csv", rows)
    assert _io.read_csv(tmp_path / "h.csv") == [
        {"epoch": "1", "loss": "0.5", "val_loss": ""},
        {"epoch": "2", "loss": "0.25", "val_loss": "0.3"},
    ]
    _io.save_npy(tmp_path / "r.npy", np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), np.arange(3))
    _io.copy_file(tmp_path / "r.npy", tmp_path / "c.npy")
    assert (tmp_path / "c.npy").read_bytes() == (tmp_path / "r.npy").read_bytes()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_progress_line_is_short_in_logs():
    stream = io.StringIO()
    p = _io.Progress(100, "evaluate", stream=stream)
    for _ in range(100):
        p.update(note="run")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # the first step, then every tenth
    assert lines[-1].startswith("evaluate 100/100 100%")
