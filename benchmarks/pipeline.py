"""Input pipeline throughput and memory: `cm_dataset.make_dataset` against the
original code's approach, for one Experiment-1 training fold.

Ours: the tf.data pipeline with a random exact symmetry per sample, batches
of 16, x (scaled) + packed targets (labels and RPMap), everything decoded to
float32 as `model.fit` receives it.

The original's approach: before training, materialize every mirrored and
rotated copy of every training pair in memory, 8 mirrorings x 27 rotation
triples = 216 variants per pair with `scipy.ndimage.rotate` (56 pairs ->
12,096 variants per fold). It is timed on a small slice of variants in the
same run and extrapolated; its memory is the arrays it would hold.

    .venv/bin/python benchmarks/pipeline.py            # writes BENCHMARKS.md
    .venv/bin/python benchmarks/pipeline.py --quick    # fewer batches, no write
"""

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks._common import machine, median_time, peak_rss_mib, write_section  # noqa: E402

BATCH = 16
PAIRS = 56  # one Experiment-1 fold: 8 training bones x 7 surgeons
VARIANTS = PAIRS * 216


def ours(data, batches, repeats):
    import tensorflow as tf

    from cm_dataset import make_dataset

    ds = make_dataset(data, 1, 1, batch_size=BATCH, augment="random", validation_fraction=0.0)
    it = iter(ds.repeat())

    def run():
        for _ in range(batches):
            x, y = next(it)
        # The last batch's values must exist, not just be scheduled.
        float(tf.reduce_sum(x[0, 0, 0, 0]) + tf.reduce_sum(y[0, 0, 0, 0]))

    t = median_time(run, repeats=repeats, warmup=1)
    x, y = next(it)
    return batches * BATCH / t, tuple(x.shape), tuple(y.shape)


def original_slice(data, n_variants):
    """Seconds per variant of the original's materialization (x and its
    target, each flipped and rotated about the three axes)."""
    from scipy import ndimage

    x = data.x[0].astype(np.float32)
    y = data.y[0].astype(np.float32)
    mirrorings = itertools.product((0, 1), repeat=3)
    combos = list(itertools.product(mirrorings, itertools.product(range(3), repeat=3)))
    step = max(1, len(combos) // n_variants)
    chosen = combos[::step][:n_variants]

    def run():
        out = []
        for flips, angles in chosen:
            sl = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
            pair = []
            for v in (x[sl], y[sl]):
                for angle, axes in zip(angles, ((1, 2), (0, 2), (0, 1))):
                    v = ndimage.rotate(v, 90 * angle, axes=axes, reshape=False, order=0)
                pair.append(v)
            out.append(pair)
        return out

    return median_time(run, repeats=3, warmup=0) / len(chosen)


def copy_ceiling(shape_x, shape_y):
    """Samples/s of merely copying one batch of outputs once with NumPy: the
    memory-bandwidth ceiling of this (shared) machine at the time."""
    a = np.ones(shape_x, np.float32), np.ones(shape_y, np.float32)
    b = np.empty_like(a[0]), np.empty_like(a[1])

    def run():
        np.copyto(b[0], a[0])
        np.copyto(b[1], a[1])

    return shape_x[0] / median_time(run, repeats=5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer batches, do not write BENCHMARKS.md"
    )
    args = parser.parse_args()
    batches, repeats, n_slice = (8, 2, 4) if args.quick else (30, 3, 8)

    from cm_dataset import generate

    t0 = time.perf_counter()
    data = generate()
    gen_s = time.perf_counter() - t0
    rate, xs, ys = ours(data, batches, repeats)
    peak = peak_rss_mib()
    per_variant = original_slice(data, n_slice)
    ceiling = copy_ceiling(xs, ys)
    load = os.getloadavg()[0]

    variant_mib = (np.prod(xs[1:]) + np.prod(ys[1:])) * 4 / 2**20
    orig_s = per_variant * VARIANTS
    orig_gib = VARIANTS * variant_mib / 1024
    orig_rate = 1.0 / per_variant
    ours_row = (
        f"| `make_dataset(augment=\"random\")` (on the fly, exact) | **{rate:.0f}** "
        f"| {VARIANTS / rate:.0f} s (streamed) | **{peak:.0f} MiB** peak RSS of the whole process |"
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
extrapolated, its memory being {variant_mib:.0f} MiB (x + packed targets,
float32) per variant.

| approach | augmented samples/s | time for one fold's 12,096 variants | memory |
|---|---|---|---|
{ours_row}
{orig_row}

Context: copying one output batch once with NumPy runs at {ceiling:.0f}
samples/s on this machine during the run (1-minute load average {load:.1f} on
{os.cpu_count()} cores, shared), an upper bound for any pipeline that writes
float32 batches. Generating the 9 x 7 synthetic data set took {gen_s:.1f} s.

Command: `.venv/bin/python benchmarks/pipeline.py` — {machine()}; median of
{repeats} runs of {batches} batches after a warm-up run.
"""
    print(md)
    if not args.quick:
        write_section("pipeline", md)


if __name__ == "__main__":
    main()
