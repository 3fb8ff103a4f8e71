"""Shared benchmark utilities: timing, peak memory, machine description, and
writing a section of BENCHMARKS.md between markers so that each script owns
its own section."""

import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def median_time(fn, repeats=5, warmup=1):
    """Median wall time in seconds of `fn()` over `repeats` runs after
    `warmup` untimed runs. `fn` must block until its result is ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mib():
    """Peak resident memory of this process so far, MiB (Linux: KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run_per_backend(script, backends=("tensorflow", "jax", "torch"), args=()):
    """Run `script` once per backend in a fresh process (a Keras backend is
    fixed at import), returning each process's stdout."""
    out = {}
    for b in backends:
        env = dict(os.environ, KERAS_BACKEND=b)
        res = subprocess.run(
            [sys.executable, str(script), "--worker", *args],
            env=env, capture_output=True, text=True, check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"{script} on {b} failed:\n{res.stderr[-4000:]}")
        out[b] = res.stdout
    return out


def write_section(name, markdown):
    """Replace (or append) the section `name` of BENCHMARKS.md, delimited by
    `<!-- BEGIN name -->` and `<!-- END name -->`."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
