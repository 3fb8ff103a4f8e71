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


def worker(batch, size, repeats):
    import keras
    import torch
    from keras import ops
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    from keras_seglosses._jit import compile_function
    from keras_seglosses.metrics import functional

    gt, pr = volumes(batch, size)
    y_np, p_np = gt[..., None].astype("float32"), pr[..., None].astype("float32")
    y, p = ops.convert_to_tensor(y_np), ops.convert_to_tensor(p_np)
    hd95 = compile_function(lambda a, b: functional.hd95(a, b))
    nsd = compile_function(lambda a, b: functional.nsd(a, b, tolerance=1.0))

    def ours():
        return ops.convert_to_numpy(hd95(y, p)).ravel(), ops.convert_to_numpy(nsd(y, p)).ravel()

    def op_by_op():
        # the same call without the dispatch (0.2.0 before it): op by op
        return (ops.convert_to_numpy(functional.hd95.uncompiled(y_np, p_np)).ravel(),
                ops.convert_to_numpy(functional.nsd.uncompiled(y_np, p_np, tolerance=1.0)).ravel())

    def eager():
        # as `cmseg evaluate` and notebooks call them: NumPy in, outside `fit`
        return (ops.convert_to_numpy(functional.hd95(y_np, p_np)).ravel(),
                ops.convert_to_numpy(functional.nsd(y_np, p_np, tolerance=1.0)).ravel())

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
    got_eager = eager()
    assert np.allclose(got_eager[0], got[0]) and np.allclose(got_eager[1], got[1])
    times = alternating_times({"ours": ours, "eager": eager, "op_by_op": op_by_op,
                               "monai": monai}, repeats)
    t, tm = times["ours"], times["monai"]
    print(json.dumps({
        "backend": keras.backend.backend(),
        "ours": t,
        "eager": times["eager"],
        "op_by_op": times["op_by_op"],
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
        "| backend | keras_seglosses HD95+NSD in a compiled function (s) | first call incl. "
        "compile (s) | eager call on NumPy (s) | eager, op by op (s) | MONAI (s) "
        "| ratio compiled | ratio eager | ratio op by op | max rel. diff HD95 "
        "| max abs. diff NSD |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in backends:
        r = results[b]
        rows.append(
            f"| {r['backend']} | {r['ours']:.3f} | {r['first']:.1f} | {r['eager']:.3f} "
            f"| {r['op_by_op']:.3f} | {r['monai']:.3f} | {r['ours'] / r['monai']:.2f} "
            f"| {r['eager'] / r['monai']:.2f} | {r['op_by_op'] / r['monai']:.2f} "
            f"| {r['hd_err']:.1e} | {r['nsd_err']:.1e} |"
        )
    md = (
        f"HD95 (`convention=\"max\"`) + NSD (`tolerance=1`, voxel) on {args.batch} volumes "
        f"of {args.size}^3 (smooth random blobs), median of {args.repeats} runs after a "
        f"warm-up, alternating with MONAI `HausdorffDistanceMetric` + `SurfaceDiceMetric` "
        f"in the same process (ratio: ours / MONAI). Machine: {machine()} (1-minute "
        f"load average {os.getloadavg()[0]:.1f} at the end of the run). TensorFlow and JAX compiled (XLA / jax.jit, one function per "
        f"metric as in `fit`), torch eager. \"Eager call\": `functional.hd95` and "
        f"`functional.nsd` called on NumPy arrays outside any compiled function (as "
        f"`cmseg evaluate` does), which dispatch to their compiled form "
        f"(`keras_seglosses._jit`; the first such call compiles, not timed here); "
        f"\"op by op\": the same call without that dispatch, as before it.\n\n"
        f"Command: `python benchmarks/metrics.py`\n\n" + "\n".join(rows)
    )
    print(md)
    if args.full and not args.print_only:
        write_section("metrics", md)


if __name__ == "__main__":
    main()
