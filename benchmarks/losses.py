"""Forward + backward time of every loss on a 16x64^3 batch, per backend.

Reference column: the "RPDL memory-traffic floor", the three reductions RPDL
needs (`sum y P M`, `sum y |M|`, `sum P |M|`) done in numpy on the same
float32 arrays in the same process. Every loss is reported as its median
time and its ratio to that floor. Each backend runs in a fresh process
(`_common.run_per_backend`); JAX and TensorFlow run the step compiled
(`jax.jit`, `tf.function(jit_compile=True)`), torch eagerly (as Keras' torch
trainer does by default). Losses that compute distance maps are in a
separate table (with the same losses reading precomputed, packed maps in the
main one).

    python benchmarks/losses.py                 # 16x64^3, writes BENCHMARKS.md
    python benchmarks/losses.py --print-only    # the same, prints only
    python benchmarks/losses.py --quick         # 2x32^3 smoke run, prints only
    python benchmarks/losses.py --only lovasz,topk --backends jax   # a subset

`--only` keeps the rows whose label contains one of the given words
(case-insensitive); any subset, another shape or `--quick` prints only.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    alternating_times,
    machine,
    median_time,
    parse_volume_args,
    run_per_backend,
    volume_parser,
    volume_worker_args,
    write_section,
)

SORT_ROW = "*sort with indices alone (Lovasz's lower bound)*"
REGION = [
    # (row label, constructor expression evaluated with keras_seglosses as ks)
    ("WeightedBinaryCrossentropy", "ks.WeightedBinaryCrossentropy(pos_weight=2.0)"),
    ("Dice", "ks.Dice()"),
    ("RewardPenaltyDice (RPDL)", "ks.RewardPenaltyDice()"),
    ("CrossEntropy", "ks.CrossEntropy()"),
    ("WeightedCrossEntropy", "ks.WeightedCrossEntropy([1.0, 2.0])"),
    ("TopK (k=10)", "ks.TopK()"),
    ("TopK (threshold=0.5)", "ks.TopK(threshold=0.5)"),
    ("Focal", "ks.Focal()"),
    ("SensitivitySpecificity", "ks.SensitivitySpecificity()"),
    ("Dice (squared)", "ks.Dice(squared=True)"),
    ("IoU", "ks.IoU()"),
    ("Lovasz", "ks.Lovasz()"),
    # not a loss: the one sort (with its permutation) that any exact Lovasz
    # needs, timed the same way, to show how much of Lovasz's time it is
    (SORT_ROW, "sort_reference"),
    ("Tversky", "ks.Tversky()"),
    ("FocalTversky", "ks.FocalTversky()"),
    ("AsymmetricSimilarity", "ks.AsymmetricSimilarity()"),
    ("GeneralizedDice", "ks.GeneralizedDice()"),
    ("PenaltyGeneralizedDice", "ks.PenaltyGeneralizedDice()"),
    ("DiceCE", "ks.DiceCE()"),
    ("DiceFocal", "ks.DiceFocal()"),
    ("DiceTopK", "ks.DiceTopK()"),
    ("ExpLog", "ks.ExpLog()"),
    ("Boundary (packed map)", "ks.Boundary()"),
    ("RegionWise (RRW, packed map)", "ks.RegionWise()"),
    ("RegionSpecificDice", "ks.RegionSpecificDice()"),
    ("AdaptiveRegionSpecificTversky", "ks.AdaptiveRegionSpecificTversky()"),
    # an ignore mask (slot after the labels, or after M) costs a few products
    ("Dice (ignore mask)", "ks.Dice(mask_index=0)"),
    ("CrossEntropy (ignore mask)", "ks.CrossEntropy(mask_index=0)"),
    ("RewardPenaltyDice (RPDL, ignore mask)", "ks.RewardPenaltyDice(mask_index=1)"),
]
DISTANCE = [
    ("DistancePenalizedCrossEntropy", "ks.DistancePenalizedCrossEntropy()"),
    ("Boundary", "ks.Boundary()"),
    ("HausdorffDT", "ks.HausdorffDT()"),
    ("HausdorffDT (packed d_G; d_S still computed)", "ks.HausdorffDT()"),
    ("DiceBoundary", "ks.DiceBoundary(alpha=0.5)"),
    ("DiceHD", "ks.DiceHD()"),
    ("RegionWise (RRW computed)", "ks.RegionWise()"),
    ("HausdorffDT (ignore mask)", "ks.HausdorffDT(mask_index=0)"),
]
# which packed map each row reads (None: labels only)
PACKED = {
    "RewardPenaltyDice (RPDL)": "rp",
    "Boundary (packed map)": "sdf",
    "HausdorffDT (packed d_G; d_S still computed)": "dist",
    "RegionWise (RRW, packed map)": "rrw",
    "Dice (ignore mask)": "mask",
    "CrossEntropy (ignore mask)": "mask",
    "RewardPenaltyDice (RPDL, ignore mask)": "rp+mask",
    "HausdorffDT (ignore mask)": "mask",
}


def make_data(batch, size, seed=0):
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (batch, size, size, size, 1)
    # smooth random blobs: realistic boundaries for the distance maps
    noise = ndimage.gaussian_filter(rng.normal(size=shape[:-1]), (0, 3, 3, 3))
    y = (noise > 0.05).astype("float32")[..., None]
    p = (1.0 / (1.0 + np.exp(-(noise * 8 + rng.normal(size=noise.shape))))).astype("float32")
    p = p[..., None]
    m = np.where(y > 0, rng.choice([0.5, 1.0], size=shape), -1.0).astype("float32")
    return y, p, m


def selected(rows, only):
    """The rows whose label contains one of the words of `only` (all if empty)."""
    if not only:
        return list(rows)
    words = [w.strip().lower() for w in only.split(",") if w.strip()]
    return [r for r in rows if any(w in r[0].lower() for w in words)]


def worker(batch, size, repeats, only=""):
    import keras
    import numpy as np

    import keras_seglosses as ks

    backend = keras.backend.backend()
    y, p, m = make_data(batch, size)
    absm = np.abs(m)

    def floor():
        return float(np.sum(y * p * m)), float(np.sum(y * absm)), float(np.sum(p * absm))

    floor_s = median_time(floor, repeats=repeats)
    errors = np.abs(y - p).reshape(batch, -1)
    argsort_s = median_time(lambda: np.argsort(-errors, axis=-1), repeats=repeats)

    from keras_seglosses.losses.boundary import signed_distance_map

    sdf = keras.ops.convert_to_numpy(signed_distance_map(y))
    # one sigmoid channel: the RRW map has two (background, foreground),
    # packed as two one-channel slots
    z = keras.ops.convert_to_numpy(ks.rrw_map(y))
    ignored = np.ones_like(y)
    ignored[:, : size // 4] = 0.0
    targets = {
        None: y,
        "rp": ks.pack_targets(y, m),
        "sdf": ks.pack_targets(y, sdf),
        "dist": ks.pack_targets(y, np.abs(sdf)),
        "rrw": ks.pack_targets(y, z[..., :1], z[..., 1:]),
        # the first quarter of every volume is not annotated
        "mask": ks.pack_targets(y, ignored),
        "rp+mask": ks.pack_targets(y, m, ignored),
    }

    def step_fn(loss):
        if backend == "jax":
            import jax

            grad = jax.jit(jax.value_and_grad(lambda yt, x: loss(yt, x), argnums=1))
            return lambda yt, x: jax.block_until_ready(grad(yt, x))
        if backend == "tensorflow":
            import tensorflow as tf

            @tf.function(jit_compile=True)
            def grad(yt, x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    value = loss(yt, x)
                return value, tape.gradient(value, x)

            def run(yt, x):
                value, g = grad(yt, x)
                return float(value), g

            return run
        def run(yt, x):
            x = x.detach().requires_grad_(True)
            value = loss(yt, x)
            value.backward()
            return float(value), x.grad

        return run

    def to_backend(a):
        return keras.ops.convert_to_tensor(a)

    def sort_reference(yt, x):
        # the permutation Lovasz computes (top-k over the bit patterns) and
        # one gather through it; weights keep the compiler from dropping it
        flat = keras.ops.reshape(x, (x.shape[0], -1))
        n = flat.shape[-1]
        _, order = keras.ops.top_k(keras.ops.view(keras.ops.stop_gradient(flat), "int32"), n)
        weights = keras.ops.linspace(1.0, 0.0, n)
        return keras.ops.sum(keras.ops.take_along_axis(flat, order, axis=-1) * weights)

    px = to_backend(p)
    results = {"backend": backend, "floor_ms": floor_s * 1e3,
               "numpy_argsort_ratio": argsort_s / floor_s, "rows": {}}
    for label, expr in selected(REGION + DISTANCE, only):
        loss = eval(expr, {"ks": ks, "sort_reference": sort_reference})
        yt = to_backend(targets[PACKED.get(label)])
        fn = step_fn(loss)
        t0 = time.perf_counter()
        fn(yt, px)  # compiles; also the warm-up run
        compile_s = time.perf_counter() - t0
        t = alternating_times({"floor": floor, "loss": lambda: fn(yt, px)}, repeats)
        ms, floor_ms = t["loss"] * 1e3, t["floor"] * 1e3
        results["rows"][label] = {"ms": ms, "ratio": ms / floor_ms, "compile_s": compile_s}
        print(f"# {backend} {label}: {ms:.1f} ms, {ms / floor_ms:.1f}x floor", file=sys.stderr,
              flush=True)
    print(json.dumps(results))


def table(results, rows, backends):
    rows = [r for r in rows if r[0] in results[backends[0]]["rows"]]
    if not rows:
        return ""
    head = "| loss | " + " | ".join(f"{b} ms (x floor)" for b in backends) + " |"
    lines = [head, "|---|" + "---|" * len(backends)]
    floors = " | ".join(f"{results[b]['floor_ms']:.1f} (1.0)" for b in backends)
    lines.append(f"| *RPDL memory-traffic floor (numpy)* | {floors} |")
    for label, _ in rows:
        cells = []
        for b in backends:
            row = results[b]["rows"][label]
            cells.append(f"{row['ms']:.1f} ({row['ratio']:.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = volume_parser(__doc__, batch=16, repeats=5)
    parser.add_argument("--only", default="",
                        help="comma-separated words: run only the rows whose label "
                        "contains one of them (prints only)")
    args = parse_volume_args(parser)
    if args.worker:
        worker(args.batch, args.size, args.repeats, args.only)
        return
    if not selected(REGION + DISTANCE, args.only):
        parser.error(f"--only {args.only!r} matches no row")
    backends = args.backends
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    results = run_per_backend(__file__, backends, volume_worker_args(args) + ["--only", args.only])
    total = time.perf_counter() - t0
    # the load this run adds itself is about one core; more means other jobs
    load = max(load_before, os.getloadavg()[0])
    shared = os.cpu_count() or 1
    shape = f"{args.batch}x{args.size}^3x1"
    full = args.full and not args.only
    command = "python benchmarks/losses.py" + (" --quick" if args.quick else "")
    distance_table = table(results, DISTANCE, backends)
    md = "\n\n".join(part for part in [
        "## Losses: forward + backward time",
        f"Batch {shape} (binary, sigmoid probabilities), float32, median of "
        f"{args.repeats} runs after one warm-up (compiling) run; JAX and TensorFlow compiled "
        "(`jax.jit`, `tf.function(jit_compile=True)`), torch eager. The floor "
        "is the three reductions RPDL needs (`sum y P M`, `sum y|M|`, "
        "`sum P|M|`) in numpy on the same arrays, timed in the same process. "
        "Ratios are the loss's median time over the median of the floor timed "
        "alternately with it in the same process (the floor row is its median "
        "at the start).",
        f"Machine: {machine()}. Command: `{command}` "
        f"(total {total:.0f} s; 1-minute load average up to {load:.1f} on "
        f"{shared} cores; absolute times move with the load, ratios are measured "
        "within one process). The sort row is not a loss: it is the permutation "
        "an exact Lovasz extension needs, alone (XLA's CPU sort with indices is "
        "about 4x slower than its sort of values; numpy's `argsort` of the same "
        f"array took {results[backends[0]]['numpy_argsort_ratio']:.1f}x the floor).",
        table(results, REGION, backends),
        distance_table and "### Losses that compute distance maps (EDT inside the step)",
        distance_table,
    ] if part)
    print(md)
    if full and not args.print_only:
        write_section("losses", md)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
