#!/usr/bin/env python3
"""`make check-install`: every backend extra runs the whole command line from
a fresh environment, as the README's install section says.

1. Builds the sdist and, from it, the wheel (`python -m build`), checks their
   metadata (`twine check --strict`), that the sdist holds what a build needs
   and that the wheel installs only the project's own import names.
2. For each extra (`tensorflow`, `jax`, `torch`): a fresh venv; in it the
   README's `pip install` line, with the built wheel in place of the checkout
   (run in the unpacked sdist, so `-c constraints.txt` is the shipped file);
   then, under that `KERAS_BACKEND`, from an empty folder outside the checkout:
   `cmseg synth` (16^3), a one-step `cmseg train`, `cmseg evaluate`,
   `cmseg predict` and the README's quick start (the first python block under
   its "Quick start" heading, extracted, not copied).

A step fails on a non-zero exit status, a traceback in its output or a missing
output file; the check stops there, prints the tail of the step's log and
keeps that venv (under `build/check-install/`) for a look.

    python tools/check_install.py [--extras tensorflow,jax,torch] [--keep] [--keep-going]
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("tensorflow", "jax", "torch")
IMPORT_NAMES = {"keras_seglosses", "models3d", "cm_dataset", "cmseg"}
SDIST_FILES = ("README.md", "LICENSE", "CHANGELOG.md", "constraints.txt", "setup.cfg",
               "pyproject.toml", "MANIFEST.in", "PKG-INFO")
# The README markers: the install section and the quick start headings.
INSTALL_HEADING = "## Install"
QUICK_START_HEADING = "## Quick start"
TRACEBACK = "Traceback (most recent call last)"

_T0 = time.monotonic()


def say(msg):
    print(f"[check-install {time.monotonic() - _T0:6.0f}s] {msg}", flush=True)


class Failed(Exception):
    pass


def section(readme, heading):
    """The README text from the line starting with `heading` to the next
    `## ` heading."""
    lines = readme.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(heading):
            rest = []
            for line2 in lines[i + 1:]:
                if line2.startswith("## "):
                    break
                rest.append(line2)
            return "".join(rest)
    raise Failed(f"README.md: no section starting with {heading!r}")


def first_block(text, lang, where):
    m = re.search(r"^```%s\n(.*?)^```" % lang, text, re.S | re.M)
    if not m:
        raise Failed(f"README.md: no ```{lang} block in {where!r}")
    return m.group(1)


def install_command(readme):
    """The README's `pip install ... ".[EXTRA]"` line, as a list of tokens with
    the `.[EXTRA]` token's index."""
    block = first_block(section(readme, INSTALL_HEADING), "sh", INSTALL_HEADING)
    for line in block.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens[:2] == ["pip", "install"]:
            for i, tok in enumerate(tokens):
                if re.fullmatch(r"\.\[[\w,-]+\]", tok):
                    return tokens, i
    raise Failed(f"README.md: no `pip install ... \".[EXTRA]\"` line in the first sh block "
                 f"of {INSTALL_HEADING!r}")


def run(cmd, log, cwd, env=None, expect=(), timeout=1800):
    """Run `cmd`, output to `log`; fail on exit status, traceback, missing file."""
    t = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ (cd {cwd} && {shlex.join(map(str, cmd))})\n")
        f.flush()
        try:
            rc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    out = Path(log).read_text(errors="replace")
    problems = []
    if rc != 0:
        problems.append(f"exit status {rc}")
    if TRACEBACK in out:
        problems.append("a traceback in its output")
    missing = [str(p) for p in expect if not (Path(cwd) / p).is_file()]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if problems:
        tail = "\n".join(out.splitlines()[-40:])
        raise Failed(f"{shlex.join(map(str, cmd))}: {'; '.join(problems)}\n--- {log} (tail)\n{tail}")
    return time.monotonic() - t


def build(work):
    dist = work / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT], work / "build.log", cwd=work)
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise Failed(f"expected one sdist and one wheel in {dist}, got {sorted(dist.iterdir())}")
    run([sys.executable, "-m", "twine", "check", "--strict", *sdists, *wheels],
        work / "twine.log", cwd=work)
    sdist, wheel = sdists[0], wheels[0]
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        missing = [f for f in SDIST_FILES if f"{top}/{f}" not in names]
        if missing:
            raise Failed(f"{sdist.name} lacks {', '.join(missing)}")
        tar.extractall(work, filter="data")
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
    own = {t for t in tops if not t.endswith(".dist-info")}
    if own != IMPORT_NAMES:
        raise Failed(f"{wheel.name} installs the top-level names {sorted(own)}, "
                     f"expected {sorted(IMPORT_NAMES)}")
    licenses = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("/LICENSE")]
    if not licenses:
        raise Failed(f"{wheel.name} holds no LICENSE")
    return sdist, wheel, work / top


def check_extra(extra, work, wheel, srcdir, readme, keep):
    venv, home = work / f"venv-{extra}", work / f"run-{extra}"
    logs = work / "logs"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    times = {}
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = venv / "bin" / "python"
    tokens, i = install_command(readme)
    tokens = [str(py), "-m", *tokens[:i], f"{wheel}[{extra}]", *tokens[i + 1:]]
    say(f"{extra}: {shlex.join(tokens[2:])}  (in {srcdir.name}/)")
    run(tokens, logs / f"{extra}-install.log", cwd=srcdir)
    run([py, "-m", "pip", "check"], logs / f"{extra}-pip-check.log", cwd=srcdir)
    times["install"] = time.monotonic() - t

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(KERAS_BACKEND=extra, VIRTUAL_ENV=str(venv), PYTHONNOUSERSITE="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    cmseg = venv / "bin" / "cmseg"
    run_dir = "runs/unet-rpdl/fold-1"
    (home / "quickstart.py").write_text(
        first_block(section(readme, QUICK_START_HEADING), "python", QUICK_START_HEADING))
    steps = [
        ("imports", [py, "-c", "import importlib.metadata as md, os, keras, keras_seglosses, "
                     "models3d, cm_dataset, cmseg; v = md.version('keras-seglosses'); "
                     "assert v == keras_seglosses.__version__, (v, keras_seglosses.__version__); "
                     "assert keras.backend.backend() == os.environ['KERAS_BACKEND']; "
                     "assert all('site-packages' in m.__file__ for m in "
                     "(keras_seglosses, models3d, cm_dataset, cmseg)); "
                     "print('keras-seglosses', v, 'on', keras.backend.backend())"], ()),
        ("synth", [cmseg, "synth", "--out", "data", "--bones", "3", "--surgeons", "2",
                   "--size", "16"], ("data/x3_2.npy", "data/y3_2.npy")),
        ("train", [cmseg, "train", "--data", "data", "--experiment", "bone", "--fold", "1",
                   "--model", "unet", "--loss", "rpdl", "--epochs", "1", "--steps-per-epoch",
                   "1", "--validation-steps", "1", "--batch-size", "1", "--base-filters", "2",
                   "--depth", "2", "--out", run_dir],
         tuple(f"{run_dir}/{f}" for f in ("config.json", "history.csv", "model.keras",
                                          "state.json"))),
        ("evaluate", [cmseg, "evaluate", "--data", "data", "--runs", "runs/unet-rpdl",
                      "--out", "report"],
         tuple(f"report/{f}" for f in ("results.md", "results.csv", "cases.csv",
                                       "training_curves.png", "dice_boxplot.png"))),
        ("predict", [cmseg, "predict", "--model", f"{run_dir}/model.keras", "--input",
                     "data/x3_2.npy", "--out", "predict"],
         tuple(f"predict/{f}" for f in ("probability.npy", "region.npy", "slices.png"))),
        ("quick start", [py, "quickstart.py"], ("model.keras",)),
    ]
    for name, cmd, expect in steps:
        times[name] = run(cmd, logs / f"{extra}-{name.replace(' ', '-')}.log", cwd=home,
                          env=env, expect=expect)
    say(f"{extra}: passed (" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + ")")
    if not keep:
        shutil.rmtree(venv, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default=",".join(EXTRAS),
                        help="comma-separated extras to check. Default: %(default)s")
    parser.add_argument("--work", default=str(ROOT / "build" / "check-install"),
                        help="scratch folder, emptied first. Default: %(default)s")
    parser.add_argument("--keep", action="store_true", help="keep the venvs")
    parser.add_argument("--keep-going", action="store_true",
                        help="check the other extras after one fails")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        parser.error(f"unknown extras {unknown}; choose from {', '.join(EXTRAS)}")
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    try:
        sdist, wheel, srcdir = build(work)
        say(f"built {sdist.name} and {wheel.name}; twine check passed")
        readme = (srcdir / "README.md").read_text()
    except Failed as e:
        say(f"FAILED: {e}")
        return 1
    failed = []
    for extra in extras:
        try:
            check_extra(extra, work, wheel, srcdir, readme, args.keep)
        except Failed as e:
            say(f"{extra}: FAILED: {e}")
            failed.append(extra)
            if not args.keep_going:
                break
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    say(f"all passed: {', '.join(extras)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
