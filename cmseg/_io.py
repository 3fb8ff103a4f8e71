"""Crash-safe file writing and the progress line shared by the commands.

Every file a command produces is first written to a temporary name in the
same directory and then moved over the final name with `os.replace`, which
is atomic on POSIX and Windows: a reader (or a resumed run) sees either the
old file or the new one, never a half-written one.
"""

import contextlib
import csv
import glob
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

__all__ = [
    "UsageError",
    "atomic_path",
    "stale_temporaries",
    "write_text",
    "write_json",
    "read_json",
    "write_csv",
    "read_csv",
    "save_npy",
    "copy_file",
    "Progress",
]


def _file_mode():
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates files readable by the owner only; results are shared files.
_MODE = _file_mode()


class UsageError(ValueError):
    """A bad command-line value or unusable input file; `cmseg` exits with
    status 2 and prints the message (no traceback)."""


def _temporary_parts(path):
    directory = os.path.dirname(os.path.abspath(path))
    stem, dot, suffix = os.path.basename(path).partition(".")
    return directory, f".{stem}.", f".tmp{dot}{suffix}"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success move it over `path`.

    The temporary name keeps the suffix of `path` because some writers
    (`model.save`, `np.save`, matplotlib) pick the format from it. On an
    exception the temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    directory, prefix, suffix = _temporary_parts(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def stale_temporaries(path):
    """Temporary files `atomic_path(path)` left behind by a killed process
    (`path` may be a glob pattern such as `epoch-*.keras`)."""
    directory, prefix, suffix = _temporary_parts(os.fspath(path))
    return sorted(glob.glob(os.path.join(directory, f"{prefix}*{suffix}")))


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path, rows, fieldnames=None):
    """Write a list of dicts as CSV (columns: `fieldnames`, else the keys of
    the first row followed by any new keys of later rows)."""
    if fieldnames is None:
        fieldnames = []
        for row in rows:
            fieldnames += [k for k in row if k not in fieldnames]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path):
    """Rows of a CSV file as dicts of strings."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def save_npy(path, array):
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def copy_file(src, dst):
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


class Progress:
    """A one-line progress indicator on stderr: `label  3/18  17%  0:12`.

    Redrawn in place on a terminal; elsewhere (logs, pipes) printed only at
    every tenth of the work so log files stay short.
    """

    def __init__(self, total, label, stream=None):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.done = 0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_tenth = -1

    def update(self, n=1, note=""):
        self.done = min(self.done + n, self.total)
        tenth = 10 * self.done // self.total
        if not self._tty and tenth == self._last_tenth and self.done < self.total:
            return
        self._last_tenth = tenth
        elapsed = int(time.monotonic() - self.start)
        line = (
            f"{self.label} {self.done}/{self.total} "
            f"{100 * self.done // self.total:3d}% {elapsed // 60}:{elapsed % 60:02d}"
            + (f" {note}" if note else "")
        )
        if self._tty:
            end = "\n" if self.done == self.total else ""
            self.stream.write("\r" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
