"""Pool the 36-epoch Experiment 1 runs of two study directories (seed 0 in
docs/study/e36/study.csv, seed 1 in docs/study/e36-exp1-seed1/study.csv) and
test RPDL - DL over the (fold, seed) pairs both hold, with cmseg.stats.

    python docs/study/e36-exp1-seed1/pool.py
"""

import csv
import os

from cmseg import stats

HERE = os.path.dirname(os.path.abspath(__file__))


def finished(path, seed):
    with open(path) as f:
        return [r for r in csv.DictReader(f)
                if r["experiment"] == "bone" and r["dice"] and r["seed"] == seed]


runs = {}
for r in (finished(os.path.join(HERE, "..", "e36", "study.csv"), "0")
          + finished(os.path.join(HERE, "study.csv"), "1")):
    runs[(r["fold"], r["seed"], r["loss"])] = r
keys = sorted({(f, s) for f, s, _ in runs if (f, s, "dl") in runs and (f, s, "rpdl") in runs})
for metric in ("dice", "rpd", "hd95", "nsd", "ged", "qubiq"):
    c = stats.compare({k: float(runs[k + ("rpdl",)][metric]) for k in keys},
                      {k: float(runs[k + ("dl",)][metric]) for k in keys})
    print(f"{metric}: {c['n']} pairs, RPDL - DL {c['mean']:+.4f} "
          f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], RPDL higher/lower {c['wins']}/"
          f"{c['losses']}, Wilcoxon p {c['p']:.3g}")
