"""The report of `cmseg study`: `study.md`, `study.csv` and the figures.

Every finished run is evaluated with the paper's protocol
(`cmseg.evaluate.fold_cases`: Dice, RPD, HD95 and NSD per prediction and
surgeon, GED, Hungarian IoU, QUBIQ and the STAPLE-consensus Dice per
input); its cases are cached in `STUDYDIR/evaluation/` and reused while
the run's `model.keras` is unchanged. A run's score is the mean of its
cases; tables give mean ± std over the (fold, seed) runs of a loss, the
per-fold means over seeds, the case-level numbers laid out as the paper's
Tables III/IV beside the paper's U-Net values, and the paired differences
RPDL - other (`cmseg.stats.compare`: Wilcoxon signed-rank test, bootstrap
95 % interval). Figures:

    study_folds.png     per-fold Dice by loss (each seed a dot, the mean a line)
    study_examples.png  as the paper's Fig. 4: three held-out bones, the
                        surgeons' overlap count and each loss's prediction
    study_curves.png    training and validation loss of every run (convergence)
"""

import math
import os

import numpy as np

from cmseg import _io, stats
from cmseg._deps import require
from cmseg.evaluate import METRICS, available_metrics, fold_cases

require("matplotlib", "cmseg study draws study_folds.png, study_examples.png and "
        "study_curves.png with it")

__all__ = ["PAPER_UNET", "PAPER_BASELINE", "evaluate_runs", "run_scores", "write_report"]

#: U-Net rows of the paper [000, Tables I, III, IV]: (experiment, metric) ->
#: loss -> (mean, std) over all cases. Cells the seed's text does not hold
#: legibly (Table III's DL RPD, Table IV's WCEL RPD) are absent.
PAPER_UNET = {
    ("bone", "dice"): {"wcel": (0.556, 0.088), "dl": (0.603, 0.076), "rpdl": (0.653, 0.083)},
    ("bone", "rpd"): {"wcel": (0.612, 0.064), "rpdl": (0.735, 0.063)},
    ("surgeon", "dice"): {"wcel": (0.618, 0.109), "dl": (0.798, 0.089),
                          "rpdl": (0.781, 0.104)},
    ("surgeon", "rpd"): {"dl": (0.884, 0.068), "rpdl": (0.878, 0.078)},
}
#: U-Net Dice per held-out bone [000, Table I]: loss -> 9 means.
PAPER_UNET_BONES = {
    "wcel": (0.480, 0.597, 0.482, 0.658, 0.620, 0.553, 0.561, 0.514, 0.544),
    "dl": (0.628, 0.523, 0.538, 0.609, 0.628, 0.613, 0.683, 0.568, 0.639),
    "rpdl": (0.696, 0.620, 0.684, 0.660, 0.683, 0.636, 0.662, 0.598, 0.636),
}
#: The surgeons' own agreement in Experiment 2 [000, Sec. VI-B].
PAPER_BASELINE = {"dice": (0.698, 0.088), "rpd": (0.780, 0.069)}

#: Columns of the main tables, and whether higher is better.
TABLE_METRICS = ("dice", "rpd", "hd95", "nsd", "ged", "qubiq")
LOWER_IS_BETTER = ("hd95", "ged")
#: The metrics whose paired differences are tested.
TESTED_METRICS = ("dice", "rpd", "hd95", "nsd", "ged", "qubiq")
REFERENCE_LOSS = "rpdl"
EXAMPLE_BONES = (1, 2, 3)


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _cached(path, newer_than):
    return os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(newer_than)


def _evaluate_one(study_dir, run, data, metrics, batch_size=4):
    from cmseg.evaluate import _predict_run

    rundir = os.path.join(study_dir, run.path)
    config = _io.read_json(os.path.join(rundir, "config.json"))
    bones = [run.fold - 1] if run.experiment == "bone" else list(range(data.n_bones))
    preds = _predict_run(rundir, config, data, bones, batch_size)
    cases, _ = fold_cases(data, run.experiment, run.fold, preds, metrics, baseline=False)
    return cases


def _baseline(study_dir, data, experiment, fold, metrics):
    """The held-out surgeon against the training surgeons (Experiment 2's
    baseline), which depends on the data only."""
    path = os.path.join(study_dir, "evaluation", f"baseline-surgeon-fold{fold}.csv")
    if os.path.isfile(path):
        return _io.read_csv(path)
    preds = {b: np.zeros(data.y.shape[1:], np.float32) for b in range(data.n_bones)}
    # fold_cases scores the baseline with the same maps and surgeons as the
    # runs; the zero predictions' cases are discarded.
    _, base = fold_cases(data, "surgeon", fold, preds, metrics, baseline=True)
    _io.write_csv(path, base)
    return _io.read_csv(path)


def evaluate_runs(study_dir, runs, data, metrics=None):
    """Cases of every finished run (cached), and the surgeon baselines.

    Returns:
        (cases, baselines): dicts `run -> list of case dicts` (values as
        floats) and `fold -> list of baseline case dicts` (Experiment 2).
    """
    from cmseg.train import run_is_finished

    metrics = available_metrics() if metrics is None else metrics
    finished = [r for r in runs if run_is_finished(os.path.join(study_dir, r.path))]
    os.makedirs(os.path.join(study_dir, "evaluation"), exist_ok=True)
    progress = _io.Progress(len(finished), "study evaluate") if finished else None
    cases = {}
    for run in finished:
        path = os.path.join(study_dir, "evaluation", run.name + ".csv")
        model = os.path.join(study_dir, run.path, "model.keras")
        if not _cached(path, model):
            _io.write_csv(path, _evaluate_one(study_dir, run, data, metrics))
        cases[run] = _parse(_io.read_csv(path))
        progress.update(note=run.name)
    baselines = {}
    for fold in sorted({r.fold for r in finished if r.experiment == "surgeon"}):
        baselines[fold] = _parse(_baseline(study_dir, data, "surgeon", fold, metrics))
    return cases, baselines


def _parse(rows):
    return [{k: (v if k in ("row", "surgeon") else _float(v)) for k, v in row.items()}
            for row in rows]


def _score(rows, metric):
    values = [r[metric] for r in rows if metric in r and not math.isnan(r[metric])]
    return float(np.mean(values)) if values else math.nan


def run_scores(cases, metric):
    """`run -> mean of the run's cases` for one metric."""
    return {run: _score(rows, metric) for run, rows in cases.items()}


def _pm(mean, std, digits=3):
    if mean is None or math.isnan(mean):
        return ""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _by_loss(settings):
    return list(settings.losses) + list(settings.extra_losses)


def _history(study_dir, run):
    path = os.path.join(study_dir, run.path, "history.csv")
    return _io.read_csv(path) if os.path.isfile(path) else []


def _convergence(study_dir, runs):
    """Per run: epochs, best epoch, and the relative change of the
    validation loss over the last quarter of the epochs."""
    out = {}
    for run in runs:
        rows = _history(study_dir, run)
        if not rows:
            continue
        val = [_float(r.get("val_loss")) for r in rows]
        train = [_float(r.get("loss")) for r in rows]
        q = max(1, len(val) // 4)

        def change(series):
            ref = series[-q - 1] if len(series) > q else series[0]
            return (series[-1] - ref) / abs(ref) if ref else math.nan

        out[run] = {
            "epochs": len(rows),
            "best_epoch": int(np.nanargmin(val)) + 1,
            "final_val_loss": val[-1],
            "final_train_loss": train[-1],
            "val_change": change(val),
            "train_change": change(train),
        }
    return out


def _timing(study_dir, runs):
    """Training time per run from its files (config.json is written when
    training starts, state.json at its end) and the wall-clock span."""
    spans = []
    for run in runs:
        d = os.path.join(study_dir, run.path)
        c, s = os.path.join(d, "config.json"), os.path.join(d, "state.json")
        if os.path.isfile(c) and os.path.isfile(s):
            spans.append((os.path.getmtime(c), os.path.getmtime(s)))
    if not spans:
        return None
    per_run = [e - b for b, e in spans]
    return {"runs": len(spans), "median_s": float(np.median(per_run)),
            "total_s": float(np.sum(per_run)),
            "wall_s": max(e for _, e in spans) - min(b for b, _ in spans)}


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_p(p):
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


def _experiment_sections(settings, cases, baselines, model, exp):
    from cmseg.evaluate import EXPERIMENT_TITLES

    losses = _by_loss(settings)
    mine = {r: c for r, c in cases.items() if r.experiment == exp and r.model == model}
    metrics = [m for m in TABLE_METRICS if any(m in row for rows in mine.values()
                                               for row in rows)]
    parts = [f"## {EXPERIMENT_TITLES[exp]} ({model})"]
    if not mine:
        return parts + ["", "No finished runs yet."], []
    scores = {m: run_scores(mine, m) for m in metrics}
    base_rows = [row for fold_rows in baselines.values() for row in fold_rows]
    # Mean ± std over runs.
    rows = []
    for loss in losses:
        lr = [r for r in mine if r.loss == loss]
        if not lr:
            continue
        rows.append([loss, len(lr)] + [_pm(*stats.mean_std([scores[m][r] for r in lr]))
                                       for m in metrics])
    head = ["Loss", "runs"] + [METRICS[m] + (" ↓" if m in LOWER_IS_BETTER else "")
                               for m in metrics]
    parts += ["", "Mean ± std over the (fold, seed) runs; a run's score is the mean of its "
              "cases.", "", _table(head, rows)]
    # As the paper's Tables III / IV: all cases pooled.
    rows = []
    for loss in losses:
        lr = [r for r in mine if r.loss == loss]
        if not lr:
            continue
        row = [loss]
        for m in ("dice", "rpd"):
            values = [c[m] for r in lr for c in mine[r] if m in c and c.get("surgeon") != ""]
            paper = PAPER_UNET.get((exp, m), {}).get(loss)
            row += [_pm(*stats.mean_std(values)), _pm(*paper) if paper and model == "unet"
                    else ""]
        rows.append(row)
    if exp == "surgeon" and base_rows:
        row = ["surgeon baseline"]
        for m in ("dice", "rpd"):
            row += [_pm(*stats.mean_std([c[m] for c in base_rows if m in c
                                         and c.get("surgeon") != ""])),
                    _pm(*PAPER_BASELINE[m])]
        rows.append(row)
    parts += ["", "All cases pooled over folds and seeds, laid out as the paper's "
              f"Table {'III' if exp == 'bone' else 'IV'} (paper: U-Net, 64³, its own data).",
              "", _table(["Loss", "Dice (here)", "Dice (paper)", "RPD (here)", "RPD (paper)"],
                         rows)]
    # Per fold.
    folds = sorted({r.fold for r in mine})
    unit = "Bone" if exp == "bone" else "Surgeon"
    rows = []
    for fold in folds:
        row = [f"{unit} {fold}"]
        for loss in losses:
            vals = [scores["dice"][r] for r in mine if r.loss == loss and r.fold == fold]
            row.append(_pm(*stats.mean_std(vals)) + (f" (n={len(vals)})" if len(vals) > 1
                                                     else ""))
        if exp == "bone" and model == "unet":
            row += [f"{PAPER_UNET_BONES[lo][fold - 1]:.3f}" if fold <= 9 else ""
                    for lo in ("dl", "rpdl")]
        rows.append(row)
    head = [unit] + [f"{lo} Dice" for lo in losses]
    if exp == "bone" and model == "unet":
        head += ["paper dl", "paper rpdl"]
    parts += ["", "Dice per fold, mean ± std over seeds"
              + (" (paper: Table I, U-Net)" if exp == "bone" else "") + ".", "",
              _table(head, rows)]
    # Paired differences.
    comparisons = []
    rows = []
    if REFERENCE_LOSS in losses:
        for other in [lo for lo in losses if lo != REFERENCE_LOSS]:
            for m in [m for m in TESTED_METRICS if m in metrics]:
                a = {(r.fold, r.seed): scores[m][r] for r in mine if r.loss == REFERENCE_LOSS}
                b = {(r.fold, r.seed): scores[m][r] for r in mine if r.loss == other}
                c = stats.compare(a, b)
                if not c["n"]:
                    continue
                comparisons.append({"experiment": exp, "model": model, "metric": m,
                                    "comparison": f"{REFERENCE_LOSS} - {other}", **c})
                rows.append([f"{REFERENCE_LOSS} − {other}", METRICS[m]
                             + (" ↓" if m in LOWER_IS_BETTER else ""), c["n"],
                             f"{c['mean']:+.4f}", f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                             f"{c['wins']}/{c['losses']}", _fmt_p(c["p"])])
    if rows:
        parts += ["", "Paired differences over the (fold, seed) pairs both losses hold: mean, "
                  "bootstrap 95 % interval (10,000 resamples), pairs where RPDL scores "
                  "higher/lower, and the two-sided Wilcoxon signed-rank p-value "
                  "(`scipy.stats.wilcoxon`). ↓: lower is better, so a negative difference "
                  "favours RPDL.", "",
                  _table(["Difference", "Metric", "pairs", "mean", "95 % CI", "higher/lower",
                          "Wilcoxon p"], rows)]
    return parts, comparisons


def _convergence_section(settings, conv):
    losses = _by_loss(settings)
    rows = []
    for exp in settings.experiments:
        for loss in losses:
            c = [v for r, v in conv.items() if r.experiment == exp and r.loss == loss]
            if not c:
                continue
            change = np.asarray([v["val_change"] for v in c])
            train = np.asarray([v["train_change"] for v in c])
            rows.append([exp, loss, len(c), f"{np.median([v['best_epoch'] for v in c]):.0f} of "
                         f"{c[0]['epochs']}",
                         f"{np.median(train) * 100:+.1f} %",
                         f"{np.median(change) * 100:+.1f} %",
                         f"{np.mean(np.abs(change) < 0.05) * 100:.0f} %"])
    return ["## Convergence", "",
            "Per loss: the median epoch of the lowest validation loss, the median relative "
            "change of the training and of the validation loss over the last quarter of the "
            "epochs, and the share of runs whose validation loss moved by less than 5 % over "
            "that quarter (curves: study_curves.png).", "",
            _table(["Experiment", "Loss", "runs", "best epoch (median)",
                    "train loss change, last quarter", "val loss change, last quarter",
                    "runs within 5 %"], rows)]


def write_report(settings, study_dir, runs, data, command=""):
    """Evaluate the finished runs and write `study.md`, `study.csv` and the
    figures into `study_dir`. Returns the markdown text."""
    cases, baselines = evaluate_runs(study_dir, runs, data)
    conv = _convergence(study_dir, runs)
    timing = _timing(study_dir, runs)
    t = settings.train
    lines = [
        "# cmseg study", "",
        f"{len(cases)} of {len(runs)} runs finished"
        + (f"; training {timing['total_s'] / 3600:.2f} h of process time, median "
           f"{timing['median_s']:.0f} s per run, {timing['wall_s'] / 3600:.2f} h wall clock "
           "(from the runs' files)" if timing else "") + ".", "",
        "```", command, "```", "",
        f"Data: {settings.data} ({data.n_bones} bones x {data.n_surgeons} surgeons, "
        f"{data.size}³). Schedule: {t.get('epochs')} epochs x "
        f"{t.get('steps_per_epoch') or 'one pass'} steps, batch {t.get('batch_size')}, "
        f"Adam lr {t.get('lr')} ({t.get('lr_schedule')}), augmentation "
        f"{t.get('augment') or 'none'}, deterministic {t.get('deterministic')}.",
    ]
    comparisons = []
    for model in settings.models:
        for exp in settings.experiments:
            parts, comp = _experiment_sections(settings, cases, baselines, model, exp)
            lines += [""] + parts
            comparisons += comp
    if conv:
        lines += [""] + _convergence_section(settings, conv)
    lines += ["", "![per-fold Dice](study_folds.png)", "",
              "![examples](study_examples.png)", "", "![curves](study_curves.png)", ""]
    text = "\n".join(lines)
    rows = []
    metrics = [m for m in METRICS if any(m in c for rs in cases.values() for c in rs)]
    for run in runs:
        row = {"experiment": run.experiment, "fold": run.fold, "model": run.model,
               "loss": run.loss, "seed": run.seed, "finished": run in cases}
        if run in cases:
            row.update({m: _score(cases[run], m) for m in metrics})
        row.update(conv.get(run, {}))
        rows.append(row)
    _io.write_csv(os.path.join(study_dir, "study.csv"), rows)
    _io.write_csv(os.path.join(study_dir, "study_tests.csv"), comparisons)
    _io.write_text(os.path.join(study_dir, "study.md"), text)
    plot_folds(settings, cases, os.path.join(study_dir, "study_folds.png"), baselines)
    plot_curves(settings, study_dir, runs, os.path.join(study_dir, "study_curves.png"))
    plot_examples(settings, study_dir, cases, data, os.path.join(study_dir, "study_examples.png"))
    return text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _pyplot()
    fig.tight_layout()
    with _io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_folds(settings, cases, path, baselines=None):
    """Per-fold Dice by loss: one panel per (experiment, model), each seed
    a dot, the mean over seeds a line; in Experiment 2 the held-out
    surgeon's own agreement with the others (grey, dashed)."""
    plt = _pyplot()
    panels = [(e, m) for m in settings.models for e in settings.experiments]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    losses = _by_loss(settings)
    scores = run_scores(cases, "dice")
    for ax, (exp, model) in zip(axes[0], panels):
        for i, loss in enumerate(losses):
            mine = [r for r in cases if r.experiment == exp and r.model == model
                    and r.loss == loss]
            if not mine:
                continue
            offset = (i - (len(losses) - 1) / 2) * 0.12
            ax.scatter([r.fold + offset for r in mine], [scores[r] for r in mine], s=10,
                       color=f"C{i}", alpha=0.6)
            folds = sorted({r.fold for r in mine})
            means = [np.mean([scores[r] for r in mine if r.fold == f]) for f in folds]
            ax.plot([f + offset for f in folds], means, "-", color=f"C{i}", label=loss)
        if exp == "surgeon" and baselines:
            folds = sorted(baselines)
            ax.plot(folds, [np.mean([c["dice"] for c in baselines[f] if c.get("surgeon") != ""])
                            for f in folds], "--", color="0.5", label="surgeon baseline")
        ax.set_xlabel("held-out bone" if exp == "bone" else "held-out surgeon")
        ax.set_ylabel("Dice (mean of the run's cases)")
        ax.set_title(f"{exp} / {model}", fontsize=9)
        if ax.lines:
            ax.legend(fontsize=7)
    _save(fig, path)


def plot_curves(settings, study_dir, runs, path):
    """Training (solid) and validation (dashed) loss per epoch of every
    run, one panel per (experiment, loss)."""
    plt = _pyplot()
    losses = _by_loss(settings)
    exps = list(settings.experiments)
    fig, axes = plt.subplots(len(exps), len(losses), figsize=(3 * len(losses), 2.6 * len(exps)),
                             squeeze=False)
    for i, exp in enumerate(exps):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            for run in runs:
                if run.experiment != exp or run.loss != loss:
                    continue
                rows = _history(study_dir, run)
                if not rows:
                    continue
                ep = [int(r["epoch"]) for r in rows]
                ax.plot(ep, [_float(r["loss"]) for r in rows], "-", color="C0", lw=0.6,
                        alpha=0.5)
                ax.plot(ep, [_float(r["val_loss"]) for r in rows], "--", color="C1", lw=0.6,
                        alpha=0.5)
            ax.set_title(f"{exp} / {loss}", fontsize=8)
            ax.set_xlabel("epoch", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle("training (solid) and validation (dashed) loss of every run", fontsize=9)
    _save(fig, path)


def plot_examples(settings, study_dir, cases, data, path, bones=EXAMPLE_BONES):
    """As the paper's Fig. 4: for three held-out bones of Experiment 1, the
    input's labels, how many surgeons drilled each voxel, and each loss's
    prediction (the first seed), on the slice with the most drilled voxels."""
    from cmseg.evaluate import _predict_run

    plt = _pyplot()
    losses = _by_loss(settings)
    model = settings.models[0]
    seed = settings.seeds[0]
    bones = [b for b in bones if b <= data.n_bones]
    y = np.asarray(data.y).reshape(data.n_bones, data.n_surgeons, *data.y.shape[1:])
    cols = 2 + len(losses)
    fig, axes = plt.subplots(len(bones), cols, figsize=(2.2 * cols, 2.3 * len(bones)),
                             squeeze=False)
    for i, bone in enumerate(bones):
        count = y[bone - 1].sum(axis=0)
        z = int(np.argmax(count.reshape(count.shape[0], -1).sum(axis=1)))
        x = np.asarray(data.bone_input(bone - 1))
        axes[i][0].imshow(x[z], cmap="tab20", interpolation="nearest")
        axes[i][0].set_title(f"bone {bone}: labels" if i == 0 else f"bone {bone}", fontsize=7)
        axes[i][1].imshow(count[z], cmap="magma", vmin=0, vmax=data.n_surgeons,
                          interpolation="nearest")
        axes[i][1].set_title(f"surgeons (0-{data.n_surgeons})" if i == 0 else "", fontsize=7)
        for j, loss in enumerate(losses):
            ax = axes[i][2 + j]
            run = next((r for r in cases if r.experiment == "bone" and r.model == model
                        and r.loss == loss and r.fold == bone and r.seed in
                        (seed, *settings.extra_seeds)), None)
            if run is not None:
                rundir = os.path.join(study_dir, run.path)
                config = _io.read_json(os.path.join(rundir, "config.json"))
                prob = _predict_run(rundir, config, data, [bone - 1], 1)[bone - 1]
                ax.imshow(count[z] > 0, cmap="gray", vmin=0, vmax=2, interpolation="nearest")
                ax.contour(prob[z] > 0.5, levels=[0.5], colors="C3", linewidths=0.8)
                ax.imshow(np.ma.masked_less_equal(prob[z], 0.5), cmap="autumn", alpha=0.5,
                          vmin=0.5, vmax=1, interpolation="nearest")
            ax.set_title(loss if i == 0 else "", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    _save(fig, path)
