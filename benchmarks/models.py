"""Training throughput and peak memory of the four models3d architectures.

At the RPDL paper's settings (64^3 input, 4 base filters, depth 5, one
sigmoid channel), batch 2, RPDL loss, Adam: samples per second of a training
step (median of a few steps after a compiling warm-up) and the process's peak
resident memory, once per backend in a fresh process. Baseline, measured in
the same process: a single Conv3D layer (1 -> 1 channel, 3x3x3) with the same
input, loss and optimizer, i.e. the per-step overhead floor of the backend.

    python benchmarks/models.py            # runs the workers, writes BENCHMARKS.md
    python benchmarks/models.py --worker   # one backend (KERAS_BACKEND), JSON out
    python benchmarks/models.py --readme   # parameter table of README.md
"""

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    machine,
    median_time,
    peak_rss_mib,
    run_per_backend,
    write_section,
)

BATCH = 2
SHAPE = (64, 64, 64, 1)
STEPS = 2
NAMES = ("unet", "vnet", "isensee2017", "myronenko2018")


def worker():
    import keras
    import numpy as np

    import keras_seglosses
    import models3d

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(BATCH, *SHAPE)).astype("float32")
    labels = (x > 0.5).astype("float32")
    y = keras_seglosses.pack_targets(labels, 2 * labels - 1)

    def measure(model):
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=keras_seglosses.RewardPenaltyDice(),
        )
        before = peak_rss_mib()
        seconds = median_time(
            lambda: model.train_on_batch(x, y), repeats=STEPS, warmup=1
        )
        return {
            "samples_per_s": BATCH / seconds,
            "step_ms": 1000 * seconds,
            "peak_rss_mib": peak_rss_mib(),
            "rss_growth_mib": peak_rss_mib() - before,
            "params": model.count_params(),
        }

    inputs = keras.Input(SHAPE)
    baseline = keras.Model(
        inputs,
        keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid")(inputs),
        name="baseline",
    )
    results = {"baseline": measure(baseline)}
    for name in NAMES:
        results[name] = measure(models3d.get(name))
    print(json.dumps(results))


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
    outputs = run_per_backend(Path(__file__).resolve())
    lines = [
        "Training step at the RPDL paper's settings (64^3 x 1 input, "
        f"n_base_filters=4, depth=5), batch {BATCH}, RPDL + Adam; median of "
        f"{STEPS} steps after a compiling warm-up, one fresh process per "
        "backend (Keras' default compilation: XLA where supported on "
        "TensorFlow, jit on JAX, eager torch). Peak RSS is the process's "
        "maximum so far, so it accumulates in row order; `+MiB` is the "
        "growth while that row ran. Baseline: one Conv3D(1, 3x3x3) layer, "
        "same input, loss and optimizer.",
        "",
        f"Machine: {machine()}. **The CPU was shared with other jobs while "
        "measuring**: compare rows within one backend rather than absolute "
        "numbers.",
        "",
        "| backend | model | params | samples/s | ms/step | peak RSS MiB | +MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend, out in outputs.items():
        results = json.loads(out.strip().splitlines()[-1])
        for name, r in results.items():
            lines.append(
                f"| {backend} | {name} | {r['params']:,} | "
                f"{r['samples_per_s']:.2f} | {r['step_ms']:.0f} | "
                f"{r['peak_rss_mib']:.0f} | {r['rss_growth_mib']:.0f} |"
            )
    lines += ["", "Command: `python benchmarks/models.py`"]
    write_section("models", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    elif "--readme" in sys.argv:
        readme_table()
    else:
        main()
