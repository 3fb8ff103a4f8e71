"""Patch pipeline throughput and memory: `cm_dataset.patches.make_patch_dataset`
on a synthetic folder of CT cases streamed from disk.

The folder: 6 CT cases of 160 x 160 x 96 voxels at 0.4 x 0.4 x 1.0 mm (int16
HU, gzipped NIfTI as scanners' exports are), 3 raters each (smooth random
blobs, about 4 % of the voxels), written to a temporary directory. The
pipeline: training patches of 64^3, batches of 2, single-channel CT
normalization, targets label + RPMap (`"rpdl"`, `"each"`), one third
foreground patches, a random allowed symmetry per patch (16 of the 48 at
this spacing), every batch float32 as `model.fit` receives it.

Two configurations, each timed over whole epochs after a warm-up epoch,
median of the repeats:

* streaming: `cache_cases=4` (the default) for the 6 cases, so every epoch
  reads cases from disk (the chunked order reads each at most once per
  epoch); the rate includes those reads;
* cached: `cache_cases=6`, every case prepared once in the warm-up epoch:
  the rate of cutting patches alone.

Timings on a shared machine are noisy, so each rate comes with the CPU time
of all the process's threads per patch, which load on other cores barely
changes, and the cached configuration with the rate of the generator's own
share, cutting the same patches in NumPy without TensorFlow, measured in the
same process.

    .venv/bin/python benchmarks/patches.py               # writes BENCHMARKS.md
    .venv/bin/python benchmarks/patches.py --print-only  # same run, prints only
    .venv/bin/python benchmarks/patches.py --quick       # smaller, prints only
"""

import argparse
import importlib
import os
import statistics
import sys
import tempfile
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

PATCH, BATCH = 64, 2
SPACING = (0.4, 0.4, 1.0)
RATERS = ("r1", "r2", "r3")


def current_rss_mib():
    """Resident memory of this process now, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_folder(root, n_cases, shape, seed=0):
    """CT-like cases: soft tissue around a bone block with air cells, and
    three raters' overlapping blobs; gzipped NIfTI, int16 HU."""
    import nibabel as nib
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    for c in range(n_cases):
        noise = ndimage.gaussian_filter(rng.normal(size=shape), 4)
        hu = np.where(noise > 0, 1200.0, 40.0) + rng.normal(0, 30, shape)
        hu[noise > 0.15] = -900.0  # air cells inside the bone
        hu[:8] = -1000.0  # air beside the head
        base = ndimage.gaussian_filter(rng.normal(size=shape), 6)
        threshold = np.quantile(base, 0.96)
        case = Path(root) / f"case{c:02d}"
        case.mkdir()
        nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), case / "image.nii.gz")
        for j, rater in enumerate(RATERS):
            wobble = 0.3 * threshold * rng.normal(size=shape).clip(-1, 1) * (j + 1) / 3
            mask = (base + wobble > threshold).astype(np.uint8)
            nib.save(nib.Nifti1Image(mask, affine), case / f"annotation-{rater}.nii.gz")


def measure(cases, cache_cases, samples, repeats, numpy_too=False):
    """Wall and CPU rates (patches/s) of whole epochs after a warm-up epoch,
    and the case reads per epoch; with `numpy_too`, then the rate of the
    generator's share alone (after the dataset's epochs, so that its reads
    do not change the cache the dataset's epochs see)."""
    from cm_dataset.patches import PatchSampler

    raters = {c.name: RATERS for c in cases}
    sampler = PatchSampler(cases, raters, patch_size=PATCH, batch_size=BATCH, seed=0,
                           cache_cases=cache_cases, samples_per_epoch=samples)
    ds = sampler.dataset()

    def epoch():
        w0, c0, loads = time.perf_counter(), time.process_time(), sampler.loads
        n = 0
        for x, y in ds:
            n += int(x.shape[0])
        # the last batch's values must exist, not just be scheduled
        float(x[0, 0, 0, 0, 0]) + float(y[0, 0, 0, 0, 0])
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        return n / wall, n / cpu, sampler.loads - loads, (x, y)

    def numpy_epoch(e):
        # the generator thread's share: cutting crops and codes, no decode
        t0 = time.perf_counter()
        n = sum(x.shape[0] * x.shape[1] for x, _, _ in sampler._groups(e))
        return n / (time.perf_counter() - t0)

    epoch()  # warm-up: tracing, first reads
    walls, cpus, loads = [], [], []
    for _ in range(repeats):
        wall, cpu, read, last = epoch()
        walls.append(wall)
        cpus.append(cpu)
        loads.append(read)
    numpys = [numpy_epoch(1 + repeats + r) for r in range(repeats)] if numpy_too else [0.0]
    return {
        "rate": statistics.median(walls),
        "cpu_rate": statistics.median(cpus),
        "numpy": statistics.median(numpys),
        "loads": statistics.median(loads),
        "x_shape": tuple(last[0].shape),
        "y_shape": tuple(last[1].shape),
    }


def prepare_time(cases):
    """Seconds to read and prepare one case (read, normalize, targets)."""
    from cm_dataset.patches import PatchSampler

    sampler = PatchSampler(cases[:1], {cases[0].name: RATERS}, patch_size=PATCH,
                           batch_size=BATCH, cache_cases=1)

    def run():
        sampler._cache.clear()
        sampler.prepared(0)

    return median_time(run, repeats=3, warmup=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_flags(parser, "3 cases of 96 x 96 x 48, 100 patches per epoch")
    args = parser.parse_args()
    if args.quick:
        n_cases, shape, samples, repeats = 3, (96, 96, 48), 100, 2
    else:
        n_cases, shape, samples, repeats = 6, (160, 160, 96), 1000, 3

    from cm_dataset.folder import load_folder

    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        write_folder(root, n_cases, shape)
        write_s = time.perf_counter() - t0
        cases = load_folder(root, lazy=True)
        importlib.import_module("tensorflow")  # its memory belongs to the baseline

        base_rss = current_rss_mib()
        streaming = measure(cases, 4, samples, repeats)
        peak_streaming = peak_rss_mib()
        cached = measure(cases, n_cases, samples, repeats, numpy_too=True)
        peak = peak_rss_mib()
        prepare_s = prepare_time(cases)
    load = os.getloadavg()[0]
    case_mib = np.prod(shape) * (4 + len(RATERS)) / 2**20

    def row(name, r, peak_mib):
        return (f"| {name} | **{r['rate']:.0f}** ({r['cpu_rate']:.0f} per CPU-second) "
                f"| {r['loads']:.0f} | {peak_mib:.0f} MiB |")
    voxels = " x ".join(map(str, shape))
    md = f"""
## Patch pipeline (`cm_dataset.patches.make_patch_dataset`)

{n_cases} CT cases of {voxels} voxels at {SPACING[0]} x {SPACING[1]} x {SPACING[2]} mm
(gzipped NIfTI, int16 HU), {len(RATERS)} raters each, streamed from disk: training
patches of {PATCH}^3 in batches of {BATCH}, x `{streaming['x_shape'][1:]}` (CT window
normalization) and y `{streaming['y_shape'][1:]}` (label + RPMap), float32, one third
centred on annotated voxels, a random allowed symmetry each (16 of 48 at this
spacing). Epochs of {samples} patches, median of {repeats} epochs after a warm-up epoch.

| configuration | patches/s | cases read per epoch | peak RSS (whole process) |
|---|---|---|---|
{row(f"streaming, `cache_cases=4` of {n_cases}", streaming, peak_streaming)}
{row(f"cached, `cache_cases={n_cases}`", cached, peak)}

A prepared case holds {case_mib:.0f} MiB (float32 image and one byte per rater and
voxel); reading and preparing one case took {prepare_s:.2f} s. The process held
{base_rss:.0f} MiB before the pipeline (TensorFlow, Keras); the peak after the
streaming run is bounded by the 4 cached cases, not by the data set. The
generator's own share, cutting the crops and target codes in NumPy without
TensorFlow, ran at {cached['numpy']:.0f} patches/s (cached, same process); the
dataset adds `from_generator`'s copy and the XLA decode of y, which runs in
TensorFlow's threads beside the generator. "Per CPU-second" divides the patches
by the CPU time of all the process's threads (1-minute load average {load:.1f} on
{os.cpu_count()} cores at the end). Writing the folder took {write_s:.1f} s.

Command: `.venv/bin/python benchmarks/patches.py` — {machine()}.
"""
    print(md)
    if not (args.quick or args.print_only):
        write_section("patches", md)


if __name__ == "__main__":
    main()
