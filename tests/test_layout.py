"""Project-wide checks: dependency direction (SPEC.md section 1) and the
docstring examples (SPEC.md section 9)."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND_IMPORT = re.compile(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", re.M)


def _sources(package):
    return sorted((ROOT / package).rglob("*.py"))


# The one module allowed to import a backend: compiling for eager callers.
DISPATCH = ROOT / "keras_seglosses" / "_jit.py"


@pytest.mark.parametrize("package", ["keras_seglosses", "models3d"])
def test_no_backend_imports(package):
    offenders = [str(p.relative_to(ROOT)) for p in _sources(package)
                 if p != DISPATCH and BACKEND_IMPORT.search(p.read_text())]
    assert not offenders, f"{package} must use keras.ops only; backend imports in {offenders}"


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("keras_seglosses", ("models3d", "cm_dataset", "cmseg")),
        ("models3d", ("keras_seglosses", "cm_dataset", "cmseg")),
        ("cm_dataset", ("models3d", "cmseg")),
    ],
)
def test_dependency_direction(package, forbidden):
    pattern = re.compile(r"^\s*(import|from)\s+(%s)\b" % "|".join(forbidden), re.M)
    offenders = [str(p.relative_to(ROOT)) for p in _sources(package) if pattern.search(p.read_text())]
    assert not offenders, f"{package} may not import {forbidden}: {offenders}"


def _modules(package):
    pkg = importlib.import_module(package)
    yield pkg.__name__
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        yield info.name


@pytest.mark.backends
@pytest.mark.parametrize("package", ["keras_seglosses", "models3d"])
def test_docstring_examples_run(package):
    failures, attempted = 0, 0
    for name in _modules(package):
        result = doctest.testmod(
            importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
        failures += result.failed
        attempted += result.attempted
    assert failures == 0, f"{failures} docstring example(s) failed in {package} (see output above)"
    if package == "keras_seglosses":
        assert attempted > 0
