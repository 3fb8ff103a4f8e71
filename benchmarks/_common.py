"""Shared benchmark utilities: the command line, timing, peak memory,
machine description, one process per backend, and writing a section of
BENCHMARKS.md between markers so that each script owns its own section."""

import argparse
import json
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


def add_output_flags(parser, quick_help):
    """`--quick` (a smaller run, `quick_help` says which) and `--print-only`:
    either prints the results and leaves BENCHMARKS.md alone."""
    parser.add_argument("--quick", action="store_true", help=f"{quick_help}, print only")
    parser.add_argument("--print-only", action="store_true",
                        help="print the results, do not write BENCHMARKS.md")


# `--quick` for the scripts that time a batch of `--size`^3 volumes
QUICK_BATCH, QUICK_SIZE, QUICK_REPEATS = 2, 32, 2


def volume_parser(doc, batch, size=64, repeats=3):
    """The command line of a script that times a batch of cubic volumes on
    each backend, each in a fresh `--worker` process (`run_per_backend`)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--repeats", type=int, default=repeats)
    add_output_flags(parser, f"{QUICK_BATCH}x{QUICK_SIZE}^3")
    parser.add_argument("--backends", default="tensorflow,jax,torch",
                        help="comma-separated Keras backends")
    return parser


def parse_volume_args(parser):
    """Parse `volume_parser`'s arguments; `--quick` sets the small run and
    `backends` becomes a tuple."""
    args = parser.parse_args()
    # only a run at the script's defaults writes BENCHMARKS.md
    args.full = not args.quick and all(
        getattr(args, key) == parser.get_default(key)
        for key in ("batch", "size", "repeats", "backends")
    )
    if args.quick:
        args.batch, args.size, args.repeats = QUICK_BATCH, QUICK_SIZE, QUICK_REPEATS
    args.backends = tuple(b for b in args.backends.split(",") if b)
    return args


def volume_worker_args(args):
    """The arguments a `--worker` process gets from `parse_volume_args`."""
    return ["--batch", str(args.batch), "--size", str(args.size), "--repeats", str(args.repeats)]


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


def alternating_times(fns, repeats):
    """Median wall time in seconds of each callable of `fns` (name -> fn),
    timed in turn `repeats` times so that all of them see the same load on a
    shared machine: their ratio is the robust number. Each `fn` must block
    until its result is ready."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


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
    """Run `script --worker *args` once per backend in a fresh process (a
    Keras backend is fixed at import); return, per backend, the JSON object
    the worker printed as its last line."""
    out = {}
    for b in backends:
        env = dict(os.environ, KERAS_BACKEND=b)
        res = subprocess.run(
            [sys.executable, str(script), "--worker", *args],
            env=env, capture_output=True, text=True, check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"{script} on {b} failed:\n{res.stderr[-4000:]}")
        out[b] = json.loads(res.stdout.strip().splitlines()[-1])
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
