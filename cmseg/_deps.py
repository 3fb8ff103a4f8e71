"""Optional dependencies of the command line and the extra that brings each.

`pip install "keras-seglosses[tensorflow]"` (or `[jax]`, `[torch]`) installs
the backend and everything `cmseg` needs on top of the library: TensorFlow
for the `tf.data` pipeline of `cm_dataset` (on every backend), matplotlib
for the figures of `evaluate` and `predict`, nibabel and pynrrd for NIfTI
and NRRD files (`predict --input`, `check-data`, `cm_dataset.folder`). Where one of them is missing,
`cmseg` says which extra to install (exit status 2), never a bare
`ModuleNotFoundError` traceback.

`main` is the console entry point `cmseg`: `cmseg.cli.main`, with a missing
optional dependency turned into one error line.
"""

import importlib.util
import os
import sys

from cmseg._io import UsageError

__all__ = ["MissingDependency", "available", "install_hint", "require", "report_missing", "main"]

DISTRIBUTION = "keras-seglosses"
BACKENDS = ("tensorflow", "jax", "torch")
# Top-level module -> the extras that bring it. TensorFlow, matplotlib,
# nibabel and pynrrd (module `nrrd`) come with every backend extra.
EXTRAS = {
    "tensorflow": BACKENDS,
    "matplotlib": BACKENDS,
    "nibabel": BACKENDS,
    "nrrd": BACKENDS,
    "jax": ("jax",),
    "jaxlib": ("jax",),
    "torch": ("torch",),
}


def _extra_for(module):
    extras = EXTRAS[module]
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return backend if backend in extras else extras[0]


def install_hint(module):
    """`pip install "keras-seglosses[EXTRA]"` for a missing top-level module
    (the extra of the `KERAS_BACKEND` in use where that one brings it)."""
    module = module.partition(".")[0]
    extra = _extra_for(module)
    hint = f'pip install "{DISTRIBUTION}[{extra}]"'
    others = [e for e in EXTRAS[module] if e != extra]
    if others:
        hint += " (or " + ", ".join(f"[{e}]" for e in others) + ": every backend extra brings it)"
    return hint


class MissingDependency(UsageError, ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra
    that brings it. A `UsageError` (so `cmseg` exits 2 with the message) and a
    `ModuleNotFoundError` (so `except ImportError` still catches it)."""

    def __init__(self, module, purpose=None):
        self.name = module
        what = f"No module named {module!r}"
        if purpose:
            what += f" ({purpose})"
        super().__init__(f"{what}. Install it with: {install_hint(module)}")


def available(module):
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # imported, with no __spec__: present
        return True
    except ImportError:  # a parent package is missing
        return False


def require(module, purpose=None):
    """Raise `MissingDependency` (naming the extra) unless `module` is
    importable. Cheap: nothing is imported."""
    if not available(module):
        raise MissingDependency(module, purpose)


def report_missing(error, prog="cmseg"):
    """Print a `ModuleNotFoundError` of an optional dependency as one error
    line naming the extra; return 2 (the exit status), or None (printing
    nothing) when the missing module is not one of ours."""
    module = (getattr(error, "name", None) or "").partition(".")[0]
    if module not in EXTRAS:
        return None
    message = str(error)
    if f'pip install "{DISTRIBUTION}[' not in message:
        message = str(MissingDependency(module))
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    """The `cmseg` command: `cmseg.cli.main(argv)`, printing a missing optional
    dependency as an error line (exit status 2) instead of a traceback."""
    try:
        from cmseg.cli import main as cli_main

        return cli_main(argv)
    except ModuleNotFoundError as e:
        status = report_missing(e)
        if status is None:
            raise
        return status
