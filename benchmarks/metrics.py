"""HD95 + NSD on 8 volumes of 64^3 (smooth random blobs): keras_seglosses on
TensorFlow, JAX and torch against MONAI in the same run.

    .venv/bin/python benchmarks/metrics.py       # writes BENCHMARKS.md "metrics"

Each backend runs in a fresh process (`--worker`); TensorFlow and JAX time
the compiled functions (XLA / jax.jit, as inside `fit`), torch runs eagerly.
Median of 3 timed runs after one warm-up (compilation excluded).
"""

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._common import machine, median_time, run_per_backend, write_section  # noqa: E402

SHAPE = (8, 64, 64, 64)


def volumes():
    from scipy import ndimage

    rng = np.random.default_rng(0)

    def blobs():
        x = ndimage.gaussian_filter(rng.standard_normal(SHAPE), (0, 4, 4, 4))
        return x > 0.0

    return blobs(), blobs()


def worker():
    import keras
    from keras import ops

    from keras_seglosses.metrics import functional

    gt, pr = volumes()
    y = ops.convert_to_tensor(gt[..., None].astype("float32"))
    p = ops.convert_to_tensor(pr[..., None].astype("float32"))

    def both(y, p):
        return functional.hd95(y, p), functional.nsd(y, p, tolerance=1.0)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        fn = jax.jit(both)
    elif backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(both, jit_compile=True)
    else:
        fn = both
    t0 = time.perf_counter()
    [ops.convert_to_numpy(v) for v in fn(y, p)]
    first = time.perf_counter() - t0
    t = median_time(lambda: [ops.convert_to_numpy(v) for v in fn(y, p)], repeats=3, warmup=0)
    hd = ops.convert_to_numpy(fn(y, p)[0]).ravel()

    # MONAI in the same process (its CPU path: scipy / KD-tree, one volume at a time).
    import torch
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    yt = torch.tensor(gt[:, None].astype("float32"))
    pt = torch.tensor(pr[:, None].astype("float32"))

    def monai():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (
                HausdorffDistanceMetric(percentile=95)(pt, yt),
                SurfaceDiceMetric([1.0])(pt, yt),
            )

    tm = median_time(monai, repeats=3, warmup=1)
    err = float(np.max(np.abs(hd - monai()[0].numpy().ravel()) / monai()[0].numpy().ravel()))
    print(f"{backend}\t{t:.3f}\t{first:.1f}\t{tm:.3f}\t{err:.1e}")


def main():
    out = run_per_backend(Path(__file__))
    rows = [
        "| backend | keras_seglosses HD95+NSD (s) | first call incl. compile (s) | MONAI (s) | ratio | max rel. diff HD95 vs MONAI |",
        "|---|---|---|---|---|---|",
    ]
    for backend, text in out.items():
        b, t, first, tm, err = text.strip().splitlines()[-1].split("\t")
        rows.append(f"| {b} | {t} | {first} | {tm} | {float(t) / float(tm):.2f} | {err} |")
    md = (
        f"HD95 (`convention=\"max\"`) + NSD (`tolerance=1`, voxel) on 8 volumes of 64^3 "
        f"(smooth random blobs), median of 3 runs; MONAI 1.x `HausdorffDistanceMetric` + "
        f"`SurfaceDiceMetric` in the same process. Machine: {machine()} (shared with other jobs).\n"
        f"TensorFlow and JAX timed compiled (XLA / jax.jit), torch eager.\n\n"
        f"Command: `.venv/bin/python benchmarks/metrics.py`\n\n" + "\n".join(rows)
    )
    write_section("metrics", md)
    print(md)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        main()
