"""The packages import under `python -OO`, which strips docstrings (so
`__doc__` is `None`) and asserts: code that builds on its own docstrings,
or validates with `assert`, breaks or goes silent there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keras_seglosses", "models3d", "cm_dataset", "cmseg")

# Every submodule too: `cmseg` and `cm_dataset` import most of theirs only
# when a command or function needs them.
WALK = f"""
import importlib, pkgutil
for name in {PACKAGES!r}:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)
"""


def _run_oo(code):
    # KERAS_BACKEND comes from the environment, so each backend run checks its own.
    return subprocess.run(
        [sys.executable, "-OO", "-c", code],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )


@pytest.mark.backends
def test_packages_import_with_docstrings_stripped():
    result = _run_oo(f"import {', '.join(PACKAGES)}")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.backends
def test_every_module_imports_with_docstrings_stripped():
    result = _run_oo(WALK)
    assert result.returncode == 0, result.stderr[-3000:]
