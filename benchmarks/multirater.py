"""STAPLE speed: `keras_seglosses.multirater.staple` against SimpleITK's
`STAPLEImageFilter` on the same annotation sets (numpy only, no backend).

    python benchmarks/multirater.py [--size 64] [--raters 7] [--repeats 5] [--print-only]

Each repeat times both on the same set in turn (`alternating_times`), so
their ratio sees one load; writes the "multirater" section of BENCHMARKS.md.
"""

import argparse

import numpy as np

from _common import add_output_flags, alternating_times, machine, write_section


def raters(size, k, seed=0):
    """K noisy copies of one blob: each rater grows or shrinks it a little
    and flips a few voxels near its edge (STAPLE's iteration count depends
    on the disagreement, so a realistic set matters)."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3).astype(np.float32) - size / 2
    r = np.sqrt((grid**2).sum(0))
    out = []
    for _ in range(k):
        radius = size / 4 * rng.uniform(0.85, 1.15)
        noise = rng.normal(0, size / 40, r.shape)
        out.append((r + noise < radius).astype(np.uint8))
    return np.stack(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--raters", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    add_output_flags(parser, "32^3")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 32, 2
    import SimpleITK as sitk

    from keras_seglosses.multirater import staple

    ann = raters(args.size, args.raters)
    images = [sitk.GetImageFromArray(a) for a in ann]

    def ours():
        return staple(ann)

    def theirs():
        f = sitk.STAPLEImageFilter()
        f.SetForegroundValue(1)
        return f.Execute(images)

    times = alternating_times({"ours": ours, "simpleitk": theirs}, args.repeats)
    fit = ours()
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1)
    w = sitk.GetArrayFromImage(f.Execute(images))
    diff = float(np.abs(fit.probability - w).max())
    table = (
        "## STAPLE (`multirater.staple`) against SimpleITK's `STAPLEImageFilter`\n\n"
        f"Machine: {machine()}. Command: `python benchmarks/multirater.py`. "
        f"{args.raters} raters of {args.size}^3 (noisy copies of one blob), median of "
        f"{args.repeats} runs timed alternately; both run to their default convergence "
        f"({fit.iterations} iterations here, SimpleITK reports {f.GetElapsedIterations()}).\n\n"
        "| | time (s) | ratio to SimpleITK |\n|---|---|---|\n"
        f"| SimpleITK `STAPLEImageFilter` | {times['simpleitk']:.3f} | 1.00 |\n"
        f"| `multirater.staple` (float64) | {times['ours']:.3f} | "
        f"{times['ours'] / times['simpleitk']:.2f} |\n\n"
        f"Largest difference of the posterior maps: {diff:.1e}.\n"
    )
    print(table)
    if not (args.quick or args.print_only):
        write_section("multirater", table)


if __name__ == "__main__":
    main()
