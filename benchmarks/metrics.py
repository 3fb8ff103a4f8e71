"""HD95 + NSD on 8 volumes of 64^3 (smooth random blobs): keras_seglosses on
TensorFlow, JAX and torch against MONAI in the same process.

    python benchmarks/metrics.py                  # 8x64^3, writes BENCHMARKS.md "metrics"
    python benchmarks/metrics.py --print-only     # the same, prints only
    python benchmarks/metrics.py --quick          # 2x32^3 smoke run, prints only
    python benchmarks/metrics.py --backends jax   # a subset (prints only)

Each backend runs in a fresh process (`--worker`). HD95 (`convention="max"`,
MONAI's) and NSD (`tolerance=1`, voxel convention, MONAI's) are compiled as
two separate functions, as two Keras metrics are inside `fit` (XLA on
TensorFlow, `jax.jit`); torch runs eagerly. MONAI computes the same two
metrics on the CPU (scipy, one volume at a time). Each side is timed as the
median of `--repeats` runs after one warm-up (compiling) run, alternating
the two sides so that both see the same load; the ratio is ours over MONAI.
"""

import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._common import (  # noqa: E402
    alternating_times,
    machine,
    parse_volume_args,
    run_per_backend,
    volume_parser,
    volume_worker_args,
    write_section,
)


def volumes(batch, size):
    from scipy import ndimage

    rng = np.random.default_rng(0)
    shape = (batch, size, size, size)

    def blobs():
        x = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 4, 4, 4))
        return x > 0.0

    return blobs(), blobs()


def compiled(fn):
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def worker(batch, size, repeats):
    import keras
    import torch
    from keras import ops
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    from keras_seglosses.metrics import functional

    gt, pr = volumes(batch, size)
    y = ops.convert_to_tensor(gt[..., None].astype("float32"))
    p = ops.convert_to_tensor(pr[..., None].astype("float32"))
    hd95 = compiled(lambda a, b: functional.hd95(a, b))
    nsd = compiled(lambda a, b: functional.nsd(a, b, tolerance=1.0))

    def ours():
        return ops.convert_to_numpy(hd95(y, p)).ravel(), ops.convert_to_numpy(nsd(y, p)).ravel()

    yt = torch.tensor(gt[:, None].astype("float32"))
    pt = torch.tensor(pr[:, None].astype("float32"))

    def monai():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = HausdorffDistanceMetric(include_background=True, percentile=95)(pt, yt)
            sd = SurfaceDiceMetric([1.0], include_background=True)(pt, yt)
        return hd.numpy().ravel(), sd.numpy().ravel()

    t0 = time.perf_counter()
    got = ours()
    first = time.perf_counter() - t0
    want = monai()
    times = alternating_times({"ours": ours, "monai": monai}, repeats)
    t, tm = times["ours"], times["monai"]
    print(json.dumps({
        "backend": keras.backend.backend(),
        "ours": t,
        "first": first,
        "monai": tm,
        "hd_err": float(np.max(np.abs(got[0] - want[0]) / want[0])),
        "nsd_err": float(np.max(np.abs(got[1] - want[1]))),
    }))


def main():
    args = parse_volume_args(volume_parser(__doc__, batch=8))
    if args.worker:
        worker(args.batch, args.size, args.repeats)
        return
    backends = args.backends
    results = run_per_backend(Path(__file__), backends, volume_worker_args(args))
    rows = [
        "| backend | keras_seglosses HD95+NSD (s) | first call incl. compile (s) | MONAI (s) "
        "| ratio | max rel. diff HD95 | max abs. diff NSD |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in backends:
        r = results[b]
        rows.append(
            f"| {r['backend']} | {r['ours']:.3f} | {r['first']:.1f} | {r['monai']:.3f} "
            f"| {r['ours'] / r['monai']:.2f} | {r['hd_err']:.1e} | {r['nsd_err']:.1e} |"
        )
    md = (
        f"HD95 (`convention=\"max\"`) + NSD (`tolerance=1`, voxel) on {args.batch} volumes "
        f"of {args.size}^3 (smooth random blobs), median of {args.repeats} runs after a "
        f"warm-up, alternating with MONAI `HausdorffDistanceMetric` + `SurfaceDiceMetric` "
        f"in the same process (ratio: ours / MONAI). Machine: {machine()} (1-minute "
        f"load average {os.getloadavg()[0]:.1f} at the end of the run). TensorFlow and JAX compiled (XLA / jax.jit, one function per "
        f"metric as in `fit`), torch eager.\n\n"
        f"Command: `python benchmarks/metrics.py`\n\n" + "\n".join(rows)
    )
    print(md)
    if args.full and not args.print_only:
        write_section("metrics", md)


if __name__ == "__main__":
    main()
