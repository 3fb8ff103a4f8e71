"""What the installs promise, checked quickly (the fresh-venv builds are
`make check-install`): one version, the licence, extras that bring what the
command line needs, and missing optional dependencies reported with the
extra to install instead of a traceback."""

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import keras_seglosses
from cmseg import _deps

ROOT = Path(__file__).resolve().parents[1]
HINT = 'pip install "keras-seglosses['


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirements(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_version_has_one_source():
    cfg = _setup_cfg()
    assert cfg["metadata"]["version"].strip() == "attr: keras_seglosses.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", keras_seglosses.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    first = re.search(r"^## (\S+)", changelog, re.M)
    assert first and first.group(1) == keras_seglosses.__version__, (
        "the newest CHANGELOG.md entry must be the version keras_seglosses.__version__ reports"
    )


def test_license_matches_setup_cfg():
    meta = _setup_cfg()["metadata"]
    assert meta["license"].strip() == "MIT"
    assert "LICENSE" in meta["license_files"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in text


def test_sdist_holds_what_a_build_needs():
    manifest = (ROOT / "MANIFEST.in").read_text().split()
    for name in ("README.md", "LICENSE", "CHANGELOG.md", "constraints.txt"):
        assert name in manifest


def test_every_backend_extra_brings_the_command_line():
    cfg = _setup_cfg()
    extras = cfg["options.extras_require"]
    for backend in ("tensorflow", "jax", "torch"):
        names = {re.split(r"[\[<>=!~ ]", r)[0] for r in _requirements(extras[backend])}
        assert {"tensorflow-cpu", "matplotlib"} <= names, backend
    assert "torch==2.13.0" in _requirements(extras["torch"])
    # The library alone: keras and the scientific stack, no backend, no matplotlib.
    base = {re.split(r"[\[<>=!~ ]", r)[0] for r in _requirements(cfg["options"]["install_requires"])}
    assert base == {"keras", "numpy", "scipy", "h5py", "scikit-image"}
    scripts = _requirements(cfg["options.entry_points"]["console_scripts"])
    assert scripts == ["cmseg = cmseg._deps:main"]


def test_install_hint_names_the_backend_extra(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert _deps.install_hint("matplotlib").startswith('pip install "keras-seglosses[jax]"')
    assert _deps.install_hint("tensorflow.data").startswith('pip install "keras-seglosses[jax]"')
    assert _deps.install_hint("torch") == 'pip install "keras-seglosses[torch]"'
    e = _deps.MissingDependency("matplotlib", "for figures")
    assert isinstance(e, ModuleNotFoundError) and e.name == "matplotlib"
    assert str(e).startswith("No module named 'matplotlib' (for figures). Install it with: " + HINT)


def test_entry_point_reraises_unrelated_import_errors(monkeypatch):
    import cmseg.cli

    def broken(argv=None):
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")

    monkeypatch.setattr(cmseg.cli, "main", broken)
    with pytest.raises(ModuleNotFoundError, match="nonexistent"):
        _deps.main([])


# Run in a subprocess with some modules made unimportable (None in
# sys.modules); each call's exit status and stderr are reported as JSON.
_PROBE = r"""
import contextlib, io, json, sys, traceback
for name in sys.argv[1].split(","):
    sys.modules[name] = None
calls = json.loads(sys.argv[2])
results = []
for kind, arg in calls:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            if kind == "import":
                __import__(arg)
                rc = 0
            else:
                import importlib
                rc = importlib.import_module(kind).main(arg)
        except BaseException:
            traceback.print_exc()
            rc = "raised"
    results.append({"rc": rc, "stderr": err.getvalue()})
print("RESULTS" + json.dumps(results))
"""


def _probe(blocked, calls, backend):
    env = {**os.environ, "KERAS_BACKEND": backend}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(blocked), json.dumps(calls)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS")][-1]
    return json.loads(line[len("RESULTS"):])


def _assert_friendly(result, module):
    assert result["rc"] == 2, result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-2000:]
    assert f"No module named {module!r}" in result["stderr"]
    assert HINT in result["stderr"]


def test_missing_matplotlib_names_the_extra(tmp_path):
    missing = str(tmp_path / "missing")
    evaluate = ["evaluate", "--data", missing, "--runs", missing, "--out", str(tmp_path / "r")]
    predict = ["predict", "--model", str(tmp_path / "m.keras"), "--input", str(tmp_path / "x.npy"),
               "--out", str(tmp_path / "p")]
    results = _probe(
        ["matplotlib"],
        [["cmseg._deps", evaluate], ["cmseg._deps", predict], ["cmseg.cli", evaluate]],
        backend="tensorflow",
    )
    for result in results:
        _assert_friendly(result, "matplotlib")
    assert HINT + "tensorflow]" in results[0]["stderr"]


def test_missing_tensorflow_on_jax(tmp_path):
    from cm_dataset import synthetic

    data = str(tmp_path / "data")
    synthetic.generate(n_bones=3, n_surgeons=2, size=16).save(data)
    train = ["train", "--data", data, "--experiment", "bone", "--fold", "1", "--epochs", "1",
             "--steps-per-epoch", "1", "--validation-steps", "1", "--batch-size", "1",
             "--base-filters", "2", "--depth", "2", "--out", str(tmp_path / "run")]
    synth = ["synth", "--out", str(tmp_path / "synth"), "--size", "16"]
    lib, pipeline, cmd_train, cmd_synth = _probe(
        ["tensorflow"],
        [["import", "keras_seglosses"], ["import", "cm_dataset"], ["cmseg._deps", train],
         ["cmseg._deps", synth]],
        backend="jax",
    )
    # The library needs no TensorFlow; the data pipeline says which extra brings it.
    assert lib["rc"] == 0, lib["stderr"][-2000:]
    assert pipeline["rc"] == "raised"
    assert "ModuleNotFoundError: No module named 'tensorflow'" in pipeline["stderr"]
    assert HINT + "jax]" in pipeline["stderr"]
    for result in (cmd_train, cmd_synth):
        _assert_friendly(result, "tensorflow")
        assert HINT + "jax]" in result["stderr"]
    assert not (tmp_path / "run" / "model.keras").exists()
