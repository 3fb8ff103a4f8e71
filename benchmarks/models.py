"""Training throughput and peak memory of the four models3d architectures.

At the RPDL paper's settings (64^3 input, 4 base filters, depth 5, one
sigmoid channel), batch 2, RPDL loss, Adam: samples per second of a training
step (`train_on_batch`, median of `--steps` steps after one compiling
warm-up step) and the peak resident memory of a fresh process that builds
and trains only that model, per backend. Baseline: a single Conv3D layer
(1 -> 1 channel, 3x3x3) with the same input, loss and optimizer, i.e. the
per-step floor of the backend; "+MiB" is a model's peak RSS above the
baseline process's (framework and compiler overhead removed).

Compilation is Keras' default (`jit_compile="auto"`): jit on JAX, eager
torch, and on TensorFlow a `tf.function` graph *without* XLA, because Keras
turns XLA off for TensorFlow on CPU-only machines. The `tensorflow-xla` row
forces `jit_compile=True`: XLA's CPU Conv3D is over ten times slower than the
oneDNN kernels TensorFlow's graph mode uses, which is what separates JAX
(always XLA) from TensorFlow here; it is not in the model definitions.

    python benchmarks/models.py               # writes BENCHMARKS.md, section `models`
    python benchmarks/models.py --print-only  # the same, prints only
    python benchmarks/models.py --quick       # 32^3, 1 step, prints only
    python benchmarks/models.py --only unet --backends jax,tensorflow-xla
    python benchmarks/models.py --readme      # parameter table of README.md

Any subset, another size or `--quick` prints only.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    add_output_flags,
    machine,
    median_time,
    peak_rss_mib,
    run_per_backend,
    write_section,
)

BATCH = 2
SIZE = 64
STEPS = 3
NAMES = ("unet", "vnet", "isensee2017", "myronenko2018")
BACKENDS = ("tensorflow", "tensorflow-xla", "jax", "torch")


def worker(name, size, steps, jit_compile):
    """Train `name` (or the one-layer baseline) for `steps` + 1 steps in this
    process and print one JSON line."""
    import keras
    import numpy as np

    import keras_seglosses
    import models3d

    shape = (size, size, size, 1)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(BATCH, *shape)).astype("float32")
    labels = (x > 0.5).astype("float32")
    y = keras_seglosses.pack_targets(labels, 2 * labels - 1)
    if name == "baseline":
        inputs = keras.Input(shape)
        model = keras.Model(
            inputs,
            keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid")(inputs),
            name="baseline",
        )
    else:
        model = models3d.get(name, input_shape=shape)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras_seglosses.RewardPenaltyDice(),
        jit_compile=True if jit_compile else "auto",
    )
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # compiles
    first = time.perf_counter() - t0
    seconds = median_time(lambda: model.train_on_batch(x, y), repeats=steps, warmup=0)
    print(json.dumps({
        "samples_per_s": BATCH / seconds,
        "step_ms": 1000 * seconds,
        "first_step_s": first,
        "peak_rss_mib": peak_rss_mib(),
        "params": model.count_params(),
        "jit_compile": bool(model.jit_compile),
    }))


def run(backend, name, size, steps):
    keras_backend = "tensorflow" if backend == "tensorflow-xla" else backend
    args = ["--model", name, "--size", str(size), "--steps", str(steps)]
    if backend == "tensorflow-xla":
        args.append("--jit-compile")
    return run_per_backend(Path(__file__).resolve(), (keras_backend,), args)[keras_backend]


README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- models3d table -->", "<!-- /models3d table -->"


def readme_table():
    """Rewrite the parameter table inside README's models3d block (between
    its own sub-markers, so nothing else in the README changes)."""
    import keras

    import models3d

    def row(call, model):
        trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
        return (
            f"| `{call}` | {model.count_params():,} | {trainable:,} | "
            f"{len(model.layers)} |"
        )

    lines = [
        TABLE_BEGIN,
        "| architecture | parameters | trainable | layers |",
        "|---|---:|---:|---:|",
    ]
    for name in NAMES:
        lines.append(row(f'models3d.get("{name}")', models3d.get(name)))
    lines.append(
        row("models3d.myronenko2018(vae=False)", models3d.myronenko2018(vae=False))
    )
    lines.append(TABLE_END)
    text = README.read_text()
    pattern = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{README} has no {TABLE_BEGIN} ... {TABLE_END} markers")
    README.write_text(pattern.sub(lambda _: "\n".join(lines), text))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="baseline", help=argparse.SUPPRESS)
    parser.add_argument("--jit-compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=SIZE,
                        help="spatial size of the cubic input (divisible by 16)")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="timed steps after the compiling one")
    add_output_flags(parser, "32^3, 1 step")
    parser.add_argument("--only", default=",".join(NAMES),
                        help="comma-separated architectures (prints only)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated, from {','.join(BACKENDS)}")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite README.md's parameter table")
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.size, args.steps, args.jit_compile)
        return
    if args.readme:
        readme_table()
        return
    if args.quick:
        args.size, args.steps = 32, 1
    names = tuple(n for n in args.only.split(",") if n)
    backends = tuple(b for b in args.backends.split(",") if b)
    for value, allowed, flag in ((names, NAMES, "--only"), (backends, BACKENDS, "--backends")):
        unknown = sorted(set(value) - set(allowed))
        if unknown or not value:
            parser.error(f"{flag}: expected some of {','.join(allowed)}; received {unknown or value}")
    full = (args.size, args.steps, names, backends) == (SIZE, STEPS, NAMES, BACKENDS)

    t0 = time.perf_counter()
    lines = [
        "| backend | model | params | samples/s | ms/step | first step s "
        "| peak RSS MiB | +MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in backends:
        base = run(backend, "baseline", args.size, args.steps)
        for name in ("baseline", *names):
            r = base if name == "baseline" else run(backend, name, args.size, args.steps)
            extra = r["peak_rss_mib"] - base["peak_rss_mib"]
            lines.append(
                f"| {backend} | {name} | {r['params']:,} | "
                f"{r['samples_per_s']:.2f} | {r['step_ms']:.0f} | "
                f"{r['first_step_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                f"{'' if name == 'baseline' else f'{extra:.0f}'} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    command = "python benchmarks/models.py" + (" --quick" if args.quick else "")
    md = "\n\n".join([
        f"Training step at the RPDL paper's settings ({args.size}^3 x 1 input, "
        f"n_base_filters=4, depth=5), batch {BATCH}, RPDL + Adam; median of "
        f"{args.steps} `train_on_batch` steps after a compiling first step, "
        "one fresh process per backend and model, so that the peak RSS is "
        "that model's; `+MiB` is the peak above the baseline process of the "
        "same backend (one Conv3D(1, 3x3x3) layer, same input, loss and "
        "optimizer). Keras' default compilation: jit on JAX, eager torch, "
        "TensorFlow graph mode without XLA (Keras disables XLA for "
        "TensorFlow on CPU-only machines); `tensorflow-xla` forces "
        "`jit_compile=True`. XLA's CPU Conv3D is over ten times slower than "
        "TensorFlow's oneDNN kernels, which is what makes JAX slower here.",
        f"Machine: {machine()}. Command: `{command}` (total {total:.0f} s).",
        "\n".join(lines),
    ])
    if full and not args.print_only:
        write_section("models", md)
    print("\n" + md)


if __name__ == "__main__":
    main()
