"""Input pipeline throughput and memory: `cm_dataset.make_dataset` against the
original code's approach, for one Experiment-1 training fold.

Ours: the tf.data pipeline with a random exact symmetry per sample, batches
of 16, x (scaled) + packed targets (labels and RPMap), everything decoded to
float32 as `model.fit` receives it.

The original's approach: before training, materialize every mirrored and
rotated copy of every training pair in memory, 8 mirrorings x 27 rotation
triples (90, 180, 270 degrees in each axis plane) = 216 variants per pair
with `scipy.ndimage.rotate` (56 pairs -> 12,096 variants per fold). It is
timed on a small slice of variants in the same run and extrapolated; its
memory is the arrays it would hold.

Timings on a shared machine are noisy, so every figure of ours comes with
a copy of the same batch with NumPy measured in the same process right after
it (the ratio is what carries over between machines) and with the CPU time
the pipeline spent per sample (all threads), which load on other cores
barely changes.

    .venv/bin/python benchmarks/pipeline.py               # writes BENCHMARKS.md
    .venv/bin/python benchmarks/pipeline.py --print-only  # same run, prints only
    .venv/bin/python benchmarks/pipeline.py --quick       # fewer batches, prints only
"""

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks._common import (  # noqa: E402
    add_output_flags,
    machine,
    median_time,
    peak_rss_mib,
    write_section,
)

BATCH = 16
PAIRS = 56  # one Experiment-1 fold: 8 training bones x 7 surgeons
VARIANTS = PAIRS * 216


def current_rss_mib():
    """Resident memory of this process now, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ours(data, batches, repeats):
    """Wall and CPU rates (samples/s) of the pipeline, each repeat followed
    by the NumPy copy of the same batch (`copy_rate`), so the ratio of the
    two is measured under the same load."""
    import tensorflow as tf

    from cm_dataset import make_dataset

    ds = make_dataset(data, 1, 1, batch_size=BATCH, augment="random", validation_fraction=0.0)
    ds = ds.repeat()
    last = []

    def run(n):
        it = iter(ds)
        for _ in range(3):  # untimed: start the threads, fill the buffers
            next(it)
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            x, y = next(it)
        # The last batch's values must exist, not just be scheduled.
        float(tf.reduce_sum(x[0, 0, 0, 0]) + tf.reduce_sum(y[0, 0, 0, 0]))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        # Stop the background threads, so that they neither compete with the
        # copy measured next nor do work the CPU figure does not count.
        del it
        last[:] = [x, y]
        return n * BATCH / wall, n * BATCH / cpu

    run(2)  # warm-up: tracing, XLA compilation
    walls, cpus, copies = [], [], []
    for _ in range(repeats):
        wall, cpu = run(batches)
        walls.append(wall)
        cpus.append(cpu)
        copies.append(copy_rate(*last))
    x, y = last
    return {
        "rate": statistics.median(walls),
        "cpu_rate": statistics.median(cpus),
        "copy": statistics.median(copies),
        "ratio": statistics.median(w / c for w, c in zip(walls, copies)),
        "x_shape": tuple(x.shape),
        "y_shape": tuple(y.shape),
    }


def original_slice(data, n_variants):
    """Seconds per variant of the original's materialization, as its code
    did it: the int8 input and target of a pair, mirrored, rotated with
    `scipy.ndimage.rotate` (linear interpolation, `reshape=True`,
    `mode="nearest"`) by 90, 180 or 270 degrees in the planes (0, 1), (0, 2)
    and (1, 2) in turn, then converted to float32 (`x / 6.5 - 1`, target /
    6). Mirroring uses NumPy slicing here (the original looped over voxels
    in Python, far slower), so the figure flatters the original."""
    from scipy import ndimage

    x, y = data.x[0], data.y[0]
    combos = list(itertools.product(itertools.product((90, 180, 270), repeat=3), range(8)))
    step = max(1, len(combos) // n_variants)
    chosen = combos[::step][:n_variants]

    def run():
        out = []
        for angles, m in chosen:
            flip = tuple(slice(None, None, -1) if m >> i & 1 else slice(None) for i in range(3))
            pair = []
            for v in (x[flip], y[flip]):
                for angle, axes in zip(angles, ((0, 1), (0, 2), (1, 2))):
                    v = ndimage.rotate(v, angle, axes=axes, reshape=True, order=1, mode="nearest")
                pair.append(v)
            out.append((pair[0] / 6.5 - 1).astype(np.float32))
            out.append((pair[1] / 6).astype(np.float32))
        return out

    return median_time(run, repeats=3, warmup=0) / len(chosen)


def copy_rate(x, y):
    """Samples/s of merely copying one output batch once with NumPy (into
    preallocated arrays): a memory-bandwidth yardstick of this machine at
    that moment, for any pipeline that writes float32 batches."""
    a = np.asarray(x), np.asarray(y)
    b = np.empty_like(a[0]), np.empty_like(a[1])

    def run():
        np.copyto(b[0], a[0])
        np.copyto(b[1], a[1])

    return a[0].shape[0] / median_time(run, repeats=5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_flags(parser, "fewer batches")
    args = parser.parse_args()
    batches, repeats, n_slice = (8, 3, 4) if args.quick else (30, 5, 8)

    from cm_dataset import generate

    t0 = time.perf_counter()
    data = generate()
    gen_s = time.perf_counter() - t0
    base_rss = current_rss_mib()  # TensorFlow, Keras and the 9 x 7 data loaded
    r = ours(data, batches, repeats)
    peak = peak_rss_mib()
    per_variant = original_slice(data, n_slice)
    load = os.getloadavg()[0]
    xs, ys = r["x_shape"], r["y_shape"]

    # The original held, per variant, the float32 input and its single
    # encoded target that `fit` received, plus the int8 arrays it rotated.
    voxels = int(np.prod(xs[1:]))
    variant_mib = voxels * (4 + 4 + 1 + 1) / 2**20
    orig_s = per_variant * VARIANTS
    orig_gib = VARIANTS * variant_mib / 1024
    orig_rate = 1.0 / per_variant
    ours_row = (
        f"| `make_dataset(augment=\"random\")` (on the fly, exact) | **{r['rate']:.0f}** "
        f"({r['ratio']:.2f} x the NumPy copy; {r['cpu_rate']:.0f} per CPU-second) "
        f"| {VARIANTS / r['rate']:.0f} s (streamed) "
        f"| **{peak:.0f} MiB** peak RSS of the whole process ({base_rss:.0f} MiB before the "
        "pipeline: TensorFlow, Keras and the data) |"
    )
    orig_row = (
        f"| original: materialize with `scipy.ndimage.rotate` | {orig_rate:.1f} "
        f"| {orig_s / 60:.1f} min ({per_variant:.3f} s per variant) | {orig_gib:.1f} GiB held |"
    )
    md = f"""
## Input pipeline (`cm_dataset.make_dataset`)

One Experiment-1 training fold (56 pairs), batches of {BATCH}, x `{xs[1:]}` and
packed targets `{ys[1:]}` (labels + RPMap), float32, a random exact symmetry
per sample. The original approach materializes all 8 mirrorings x 27 rotation
triples of every pair with `scipy.ndimage.rotate` before training
({VARIANTS:,} variants); it is timed here on {n_slice} variants of one pair and
extrapolated, its memory being {variant_mib:.1f} MiB per variant (float32 x and
its single encoded target, as `fit` received them, and the int8 copies it
rotated).

| approach | augmented samples/s | time for one fold's 12,096 variants | memory |
|---|---|---|---|
{ours_row}
{orig_row}

Context: right after each timed run, copying its last output batch once with
NumPy ran at {r['copy']:.0f} samples/s (median), the yardstick of the ratio
above: the pipeline reads one byte per voxel and writes the float32 batch, a
copy reads and writes the float32 batch. "Per CPU-second" divides the samples
by the CPU time of all the process's threads, which load on a shared machine
changes little (1-minute load average {load:.1f} on {os.cpu_count()} cores
during the run). Generating the 9 x 7 synthetic data set took {gen_s:.1f} s.

Command: `.venv/bin/python benchmarks/pipeline.py` — {machine()}; median of
{repeats} runs of {batches} batches after a warm-up run.
"""
    print(md)
    if not (args.quick or args.print_only):
        write_section("pipeline", md)


if __name__ == "__main__":
    main()
