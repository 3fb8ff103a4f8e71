"""`cmseg evaluate`: the RPDL paper's evaluation protocol and its tables.

Protocol (SPEC.md section 8, [000, Sec. V, Eq. 5-6]). Predictions are
binarized at 0.5.

* Experiment 1 (leave one bone out): the held-out bone's prediction is
  compared with each of its surgeons' regions; RPD uses the reward-penalty
  map of those surgeons (penalty -1, normalized).
* Experiment 2 (leave one surgeon out): every bone's prediction is compared
  with the fold's training surgeons, the map built from those surgeons; the
  surgeon baseline compares the held-out surgeon with the same surgeons and
  the same map.

One case is one (prediction, surgeon) pair. Rows of the tables are the mean
+/- standard deviation (numpy's, `ddof=0`) of the cases of one bone
(Experiment 1) or one held-out surgeon (Experiment 2), and "Overall" over
all cases; columns are the (model, loss) pairs side by side, as Tables I-IV.
HD95 and NSD (in voxels, tolerance 1 voxel, on the CM files; in millimetres,
tolerance 1 mm, on a folder of cases, from each case's header spacing) come
from `keras_seglosses.metrics.functional` where that module provides them.

A folder of cases (`--experiment case` or `rater` runs) follows the same
protocol: a held-out case is scored against each of its raters ("case"),
or every case the held-out rater annotated is scored against its training
raters, the held-out rater's annotation being the rater baseline ("rater").
"""

import collections.abc
import math
import os
import sys

import numpy as np

from cmseg import _io, registry
from cmseg._deps import require
from cmseg._io import UsageError

require("matplotlib", "cmseg evaluate draws training_curves.png and dice_boxplot.png with it")

__all__ = [
    "METRICS",
    "available_metrics",
    "pair_scores",
    "fold_cases",
    "summarize",
    "to_markdown",
    "evaluate",
    "find_runs",
]

#: Metric key -> table title. The first four score one (prediction,
#: annotation) pair; the rest score one prediction against its input's
#: whole set of annotations (`INPUT_METRICS`, one case per input).
METRICS = {"dice": "Dice", "rpd": "RPD", "hd95": "HD95", "nsd": "NSD",
           "ged": "GED (d = 1 - IoU)", "hungarian_iou": "Hungarian-matched IoU",
           "qubiq": "QUBIQ score", "consensus_dice": "Dice against the STAPLE consensus"}
INPUT_METRICS = ("ged", "hungarian_iou", "qubiq", "consensus_dice")
BASELINE = ("surgeons", "baseline")
_SURFACE = ("hd95", "nsd")
#: The baseline row of an experiment's tables: the held-out annotator
#: scored as a prediction.
_BASELINE_ROWS = {"surgeon": "Surgeon baseline", "rater": "Rater baseline"}


_INPUT_FUNCTIONS = {
    "ged": "generalized_energy_distance", "hungarian_iou": "hungarian_iou",
    "qubiq": "qubiq_score", "consensus_dice": "consensus_dice",
}


def available_metrics():
    """The metrics this installation computes: Dice and RPD always, the
    others when `keras_seglosses.metrics.functional` provides them."""
    from keras_seglosses.metrics import functional

    return [m for m in METRICS if m in ("dice", "rpd")
            or hasattr(functional, _INPUT_FUNCTIONS.get(m, m))]


def input_scores(prediction, annotations, metrics):
    """Score one prediction against the whole set of its input's
    annotations, for the metrics of `INPUT_METRICS` in `metrics`.

    The model's single prediction is one sample: GED and Hungarian IoU take
    it binarized at 0.5 (`M = 1`), QUBIQ takes the probabilities, the
    consensus Dice compares the binarized prediction with the STAPLE
    consensus of the annotations at 0.5.

    Returns:
        dict metric -> float.
    """
    from keras_seglosses.metrics import functional

    prediction = np.asarray(prediction, np.float64)
    annotations = np.asarray(annotations, np.float64)
    sample = (prediction > 0.5)[None].astype(np.float64)
    compute = {
        "ged": lambda: functional.generalized_energy_distance(annotations, sample),
        "hungarian_iou": lambda: functional.hungarian_iou(annotations, sample),
        "qubiq": lambda: functional.qubiq_score(prediction, annotations),
        "consensus_dice": lambda: functional.consensus_dice(sample[0], annotations),
    }
    return {m: float(compute[m]()) for m in metrics if m in INPUT_METRICS}


def pair_scores(prediction, annotations, rpmap, metrics=None, spacing=None):
    """Score one prediction against several annotations of the same input.

    Args:
        prediction: array `(*spatial)`, probabilities or a binary mask
            (binarized at 0.5).
        annotations: array `(K, *spatial)`, the K surgeons' binary regions.
        rpmap: array `(*spatial)`, the reward-penalty map for RPD.
        metrics: list of metric keys. Defaults to `available_metrics()`.
        spacing: voxel size in mm per axis for HD95 and NSD (then in mm,
            NSD's tolerance 1 mm). Defaults to `None` (voxels).

    Returns:
        dict metric -> float64 array `(K,)`, one value per annotation.
    """
    from keras import ops

    from keras_seglosses import pack_targets
    from keras_seglosses.metrics import functional

    metrics = available_metrics() if metrics is None else metrics
    annotations = np.asarray(annotations, np.float32)
    k = annotations.shape[0]
    pred = np.broadcast_to(np.asarray(prediction, np.float32)[None, ..., None],
                           annotations.shape + (1,))
    labels = annotations[..., None]
    m = np.broadcast_to(np.asarray(rpmap, np.float32)[None, ..., None], labels.shape)
    packed = pack_targets(labels, m)
    functions = {"dice": functional.dice, "rpd": functional.reward_penalty_dice}
    out = {}
    for name in [m for m in metrics if m not in INPUT_METRICS]:
        fn = functions.get(name) or getattr(functional, name)
        y_true = packed if name == "rpd" else labels
        kwargs = {"spacing": spacing} if spacing is not None and name in _SURFACE else {}
        out[name] = np.asarray(ops.convert_to_numpy(fn(y_true, pred, **kwargs)),
                               np.float64).reshape(k)
    return out


def fold_cases(data, experiment, fold, predictions, metrics=None, baseline=True):
    """Cases of one fold, as dicts.

    Args:
        data: `cm_dataset.CMData` (or anything with `y`, `n_bones`,
            `n_surgeons` and the flat index `bone * n_surgeons + surgeon`).
        experiment: `"bone"` or `"surgeon"`.
        fold: int, 1-based.
        predictions: dict bone (0-based) -> prediction `(*spatial)`: the
            held-out bone for `"bone"`, every bone for `"surgeon"`.
        metrics: list of metric keys. Defaults to `available_metrics()`.
        baseline: bool, add the surgeon-baseline cases (Experiment 2 only).

    Returns:
        (cases, baseline_cases): lists of dicts with keys `fold`, `bone`,
        `surgeon` (1-based), `row` and one key per pair metric; with input
        metrics (`INPUT_METRICS`) also one dict per input, `surgeon` empty,
        holding those.
    """
    from cm_dataset import get_split
    from keras_seglosses import reward_penalty_map

    metrics = available_metrics() if metrics is None else metrics
    y = np.asarray(data.y).reshape(data.n_bones, data.n_surgeons, *data.y.shape[1:])
    if experiment not in registry.EXPERIMENTS:
        registry.valid_folds(experiment)  # raises, listing the experiments
    split = get_split(registry.EXPERIMENT_NUMBERS[experiment], fold, data.n_bones,
                      data.n_surgeons)
    held_out = split.held_out if experiment == "surgeon" else None
    plan = [(b, list(split.reference_surgeons[b]), held_out) for b in split.test_bones]
    row = f"{'Bone' if experiment == 'bone' else 'Surgeon'}{fold}"
    cases, base = [], []
    for bone, surgeons, held_out in plan:
        ann = y[bone, surgeons]
        rpmap = reward_penalty_map(ann)
        scored = [(predictions[bone], cases)]
        if baseline and held_out is not None:
            scored.append((y[bone, held_out], base))
        for pred, sink in scored:
            values = pair_scores(pred, ann, rpmap, metrics)
            per_input = input_scores(pred, ann, metrics)
            if per_input:
                sink.append({"fold": fold, "bone": bone + 1, "surgeon": "", "row": row,
                             **per_input})
            for i, s in enumerate(surgeons):
                sink.append(
                    {
                        "fold": fold,
                        "bone": bone + 1,
                        "surgeon": s + 1,
                        "row": row,
                        **{m: float(v[i]) for m, v in values.items()},
                    }
                )
    return cases, base


def folder_fold_cases(cases, split, predictions, metrics=None, baseline=True):
    """Cases of one fold of a folder of cases (`cm_dataset.splits.FolderSplit`).

    Each test case's prediction is scored against each of its reference
    raters, the reward-penalty map built from those raters, HD95 and NSD
    in millimetres (the case's spacing). For `experiment="rater"` the
    held-out rater's annotation is scored the same way as the inter-rater
    baseline.

    Args:
        cases: dict case name -> `cm_dataset.folder.Case`.
        split: `FolderSplit`.
        predictions: dict case name -> prediction `(X, Y, Z)`.
        metrics: list of metric keys. Defaults to `available_metrics()`.
        baseline: bool, add the rater-baseline cases ("rater" only).

    Returns:
        (cases, baseline_cases): lists of dicts with keys `fold`, `case`,
        `rater`, `row` (`"Case <name>"` or `"Rater <held-out id>"`) and one
        key per metric (input metrics in a dict with `rater` empty).
    """
    from keras_seglosses import reward_penalty_map

    metrics = available_metrics() if metrics is None else metrics
    held = dict(split.baseline) if baseline else {}
    out, base = [], []
    for name, refs in split.test:
        case = cases[name]
        ann = case.annotation_stack(refs).astype(np.float32)
        rpmap = reward_penalty_map(ann)
        row = f"Case {name}" if split.experiment == "case" else f"Rater {split.held_out}"
        scored = [(predictions[name], out)]
        if name in held:
            scored.append((case.annotations[held[name]], base))
        for pred, sink in scored:
            tag = {"fold": split.fold, "case": name, "row": row}
            per_input = input_scores(pred, ann, metrics)
            if per_input:
                sink.append({**tag, "rater": "", **per_input})
            values = pair_scores(pred, ann, rpmap, metrics, spacing=case.spacing)
            for i, r in enumerate(refs):
                sink.append({**tag, "rater": r, **{m: float(v[i]) for m, v in values.items()}})
        case.release()
    return out, base


def _column_order(columns):
    losses = list(registry.PAPER_LOSSES)

    def key(col):
        model, loss = col
        if col == BASELINE:
            return (len(registry.MODELS) + 1, 0, "")
        mi = registry.MODELS.index(model) if model in registry.MODELS else len(registry.MODELS)
        li = losses.index(loss) if loss in losses else len(losses)
        return (mi, li, loss)

    return sorted(columns, key=key)


def _row_order(row):
    if row == "Overall":
        return (2, 0, "")
    if row in _BASELINE_ROWS.values():
        return (3, 0, "")
    digits = "".join(c for c in row if c.isdigit())
    return (1 if row.startswith(("Surgeon", "Rater")) else 0, int(digits or 0), row)


def summarize(cases, metrics):
    """Mean and std per (experiment, metric, column, row).

    Args:
        cases: dicts with keys `experiment`, `model`, `loss`, `row` and the
            metrics. Baseline cases have model `"surgeons"`, loss
            `"baseline"`; they form the "Surgeon baseline" row of every
            column of their experiment.
        metrics: metric keys.

    Returns:
        list of dicts `experiment, metric, model, loss, row, mean, std, n`.
    """
    out = []
    experiments = sorted({c["experiment"] for c in cases})
    for exp in experiments:
        mine = [c for c in cases if c["experiment"] == exp]
        columns = _column_order({(c["model"], c["loss"]) for c in mine} - {BASELINE})
        baseline = [c for c in mine if (c["model"], c["loss"]) == BASELINE]
        for metric in metrics:
            for col in columns:
                group = [c for c in mine if (c["model"], c["loss"]) == col and metric in c]
                if not group:
                    continue
                rows = {}
                for c in group:
                    rows.setdefault(c["row"], []).append(c[metric])
                rows["Overall"] = [c[metric] for c in group]
                if baseline:
                    folds = {c["fold"] for c in group}
                    rows[_BASELINE_ROWS.get(exp, "Surgeon baseline")] = [
                        c[metric] for c in baseline if c["fold"] in folds and metric in c]
                for row in sorted(rows, key=_row_order):
                    values = np.asarray(rows[row], np.float64)
                    out.append(
                        {
                            "experiment": exp,
                            "metric": metric,
                            "model": col[0],
                            "loss": col[1],
                            "row": row,
                            "mean": float(values.mean()) if values.size else math.nan,
                            "std": float(values.std()) if values.size else math.nan,
                            "n": int(values.size),
                        }
                    )
    return out


EXPERIMENT_TITLES = {
    "bone": "Experiment 1: leave one bone out",
    "surgeon": "Experiment 2: leave one surgeon out",
    "case": "Held-out cases",
    "rater": "Leave one rater out",
}


def to_markdown(summary, digits=3):
    """Tables in the layout of the paper's Tables I-IV: one table per
    experiment and metric, rows per bone/surgeon and Overall, a column per
    (model, loss), cells `mean ± std`."""
    parts = []
    for exp in sorted({s["experiment"] for s in summary}):
        for metric in METRICS:
            cells = [s for s in summary if s["experiment"] == exp and s["metric"] == metric]
            if not cells:
                continue
            columns = _column_order({(s["model"], s["loss"]) for s in cells})
            rows = sorted({s["row"] for s in cells}, key=_row_order)
            table = {(s["row"], s["model"], s["loss"]): s for s in cells}
            lines = [
                f"### {EXPERIMENT_TITLES.get(exp, exp)}: {METRICS[metric]} ± std",
                "",
                "| Model | " + " | ".join(m for m, _ in columns) + " |",
                "|---|" + "---|" * len(columns),
                "| Training loss | " + " | ".join(loss for _, loss in columns) + " |",
            ]
            for row in rows:
                vals = []
                for model, loss in columns:
                    s = table.get((row, model, loss))
                    vals.append(
                        "" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
                    )
                lines.append(f"| {row} | " + " | ".join(vals) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def find_runs(paths):
    """Run directories from the paths given: a directory holding
    `config.json`, or a directory whose subdirectories do (`--fold all`).
    A run reached twice (e.g. by a glob and by name) counts once."""
    runs, seen = [], set()
    for path in paths:
        if os.path.isfile(os.path.join(path, "config.json")):
            found = [path]
        else:
            found = sorted(
                os.path.join(path, d)
                for d in (os.listdir(path) if os.path.isdir(path) else [])
                if os.path.isfile(os.path.join(path, d, "config.json"))
            )
        if not found:
            raise UsageError(
                f"Invalid value for --runs. Expected a run directory (with config.json) "
                f"or a directory of runs. Received: {path}"
            )
        for run in found:
            key = os.path.realpath(run)
            if key not in seen:
                seen.add(key)
                runs.append(run)
    return runs


def _read_config(rundir):
    path = os.path.join(rundir, "config.json")
    try:
        config = _io.read_json(path)
        exp = config["experiment"]
        int(config["fold"]), config["model"], config["loss"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"{path}: not a cmseg run configuration ({type(e).__name__}: {e})."
        ) from None
    known = registry.EXPERIMENTS + registry.FOLDER_EXPERIMENTS
    if exp not in known:
        raise UsageError(f"{path}: unknown experiment {exp!r}; expected one of "
                         f"{', '.join(known)}.")
    return config


def _read_run(rundir, data, config=None):
    """The run's config, checked against the data (usage errors name the run)."""
    config = _read_config(rundir) if config is None else config
    exp, fold = config["experiment"], int(config["fold"])
    if exp not in registry.EXPERIMENTS:
        raise UsageError(f"{rundir}: a run of experiment {exp!r} (a folder of cases); "
                         "--data holds the CM files. Pass the run's own --data.")
    folds = registry.valid_folds(exp, data.n_bones, data.n_surgeons)
    if fold not in folds:
        raise UsageError(
            f"{rundir}: fold {fold} of experiment {exp!r} does not exist in --data "
            f"({data.n_bones} bones x {data.n_surgeons} surgeons: folds "
            f"{folds[0]}-{folds[-1]}). Was the run trained on other data?"
        )
    if not os.path.isfile(os.path.join(rundir, "model.keras")):
        raise UsageError(f"{rundir}: no model.keras (the run has not completed an epoch).")
    return config


def _predict_run(rundir, config, data, bones, batch_size):
    import keras

    import keras_seglosses  # noqa: F401  (registered losses)
    import models3d  # noqa: F401  (registered layers)
    from cmseg.predict import encode, full_resolution

    path = os.path.join(rundir, "model.keras")
    try:
        model = full_resolution(keras.models.load_model(path, compile=False))
    except Exception as e:  # noqa: BLE001 - every reader failure is reported alike
        raise UsageError(
            f"{path}: unreadable as a Keras model ({type(e).__name__}: {e})."
        ) from None
    if tuple(model.input_shape[1:4]) != tuple(data.y.shape[1:]):
        raise UsageError(
            f"{path}: the model takes volumes of shape {tuple(model.input_shape[1:4])}, "
            f"--data holds {tuple(data.y.shape[1:])}. Was the run trained on other data?"
        )
    x = np.stack([data.bone_input(b) for b in bones])
    prob = model.predict(encode(x, config.get("input_encoding", "scaled")),
                         batch_size=batch_size, verbose=0)
    return {b: prob[i, ..., 0] for i, b in enumerate(bones)}


def plot_history(runs, path):
    """Training and validation loss per epoch, one panel per (model, loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for rundir, config in runs:
        hist = os.path.join(rundir, "history.csv")
        if os.path.isfile(hist):
            groups.setdefault((config["model"], config["loss"]), []).append(
                (config, _io.read_csv(hist))
            )
    cols = _column_order(groups) or [("", "")]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for i, (config, rows) in enumerate(groups.get(col, [])):
            epochs = [int(r["epoch"]) for r in rows]
            color = f"C{i % 10}"
            label = f"{config['experiment']} fold {config['fold']}"
            for key, style in (("loss", "-"), ("val_loss", "--")):
                if rows and key in rows[0]:
                    ax.plot(epochs, [float(r[key]) for r in rows], style, color=color,
                            label=f"{label} ({'train' if key == 'loss' else 'val'})")
        ax.set_title(f"{col[0]} / {col[1]}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    with _io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_boxes(cases, path, metric="dice"):
    """Box plots of the per-case metric by (model, loss), one panel per
    experiment (the surgeon baseline as its own box in Experiment 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = sorted({c["experiment"] for c in cases})
    fig, axes = plt.subplots(1, max(len(exps), 1), figsize=(5 * max(len(exps), 1), 3.6),
                             squeeze=False)
    for ax, exp in zip(axes[0], exps):
        mine = [c for c in cases if c["experiment"] == exp]
        cols = _column_order({(c["model"], c["loss"]) for c in mine})
        data = [[c[metric] for c in mine if (c["model"], c["loss"]) == col and metric in c]
                for col in cols]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(cols) + 1), [f"{m}\n{lo}" for m, lo in cols], fontsize=7)
        ax.set_title(EXPERIMENT_TITLES.get(exp, exp), fontsize=9)
        ax.set_ylabel(f"{METRICS[metric]} per case")
    fig.tight_layout()
    with _io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _note(message):
    print(f"note: {message}", file=sys.stderr, flush=True)


def _folder_predictions(rundir, config, cases, names, options):
    """Whole-case probabilities of a folder run's test cases, predicted as
    `cmseg predict` does (the run's preprocessing, sliding windows, TTA),
    post-processed as `options` asks."""
    from cmseg import predict as pr

    path = os.path.join(rundir, "model.keras")
    preprocessing = config.get("preprocessing")
    if not preprocessing:
        raise UsageError(f"{rundir}: config.json records no preprocessing (a run of an "
                         "older cmseg?). Train it again with this version.")
    model = pr.load_model(path)
    return _Predictions(names, lambda name: _predict_case(model, rundir, preprocessing,
                                                          cases[name], options))


class _Predictions(collections.abc.Mapping):
    """Case name -> post-processed prediction, computed when asked for and
    not kept: scoring holds one whole-case prediction at a time."""

    def __init__(self, names, compute):
        self._names, self._compute = list(names), compute

    def __getitem__(self, name):
        if name not in self._names:
            raise KeyError(name)
        return self._compute(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


def _predict_case(model, rundir, preprocessing, case, options):
    """One case predicted whole as `cmseg predict` does, post-processed."""
    from cm_dataset import patches
    from cmseg import predict as pr

    x = case.image
    if x.shape[-1] != preprocessing["channels"]:
        raise UsageError(f"{case.directory}: {x.shape[-1]} image channel(s); the run "
                         f"{rundir} was trained on {preprocessing['channels']}.")
    intensity = preprocessing["intensity"]
    encoding = preprocessing.get("input_encoding", "scaled")

    def normalize(v):
        return patches.normalize(v, intensity, window=preprocessing.get("window"),
                                 input_encoding=encoding)

    if intensity == "labels":
        # resized before encoding, nearest-neighbour, as training did
        volumes, coder, order = x[None], (lambda v: normalize(v[0])[None]), 0
    else:
        volumes, coder, order = normalize(x)[None], None, 1
    prob = pr.probabilities(model, volumes, case.spacing, tta=options["tta"],
                            overlap=options["overlap"], batch_size=options["batch_size"],
                            resample=preprocessing.get("resample"), encode=coder, order=order,
                            pad=pr.pad_value(preprocessing))
    case.release()
    return _postprocess(prob, options)[0]


def _postprocess(prob, options):
    """Probabilities as they are, or the post-processed region (binary)."""
    if not (options["keep_largest"] or options["min_size"]):
        return prob
    from cmseg.predict import regions

    return regions(prob, 0.5, keep_largest=options["keep_largest"],
                   min_size=options["min_size"]).astype(np.float32)


def _check_folder_run(rundir, config, cases):
    from cm_dataset import splits

    try:
        split = splits.folder_split(config["experiment"], int(config["fold"]), cases,
                                    folds=config.get("folds"),
                                    validation_fraction=config.get("validation_fraction", 0.1))
    except ValueError as e:
        raise UsageError(f"{rundir}: its fold does not exist in --data ({e}). Was the run "
                         "trained on other data?") from None
    recorded = config.get("split")
    now = {name: [case for case, _ in getattr(split, name)] for name in ("train", "val", "test")}
    if recorded and {k: recorded.get(k) for k in now} != now:
        raise UsageError(f"{rundir}: --data splits fold {config['fold']} differently from the "
                         "run's training (cases added, removed or renamed since): a training "
                         "case would be scored as held out. Pass the data the run trained on.")
    if not os.path.isfile(os.path.join(rundir, "model.keras")):
        raise UsageError(f"{rundir}: no model.keras (the run has not completed an epoch).")
    return split


def evaluate(data_dir, run_paths, out, batch_size=4, metrics=None, log=print, *, tta="none",
             overlap=0.5, keep_largest=False, min_size=0, spacing=None):
    """Evaluate run directories and write the report into `out`.

    Writes `results.csv` (the summary: experiment, metric, model, loss, row,
    mean, std, n), `cases.csv` (every case), `results.md` (the tables),
    `training_curves.png` and `dice_boxplot.png`.

    `data_dir` holds the CM files (runs of `bone` and `surgeon`) or a folder
    of cases (runs of `case` and `rater`, `folder_fold_cases`: each test
    case predicted whole as `cmseg predict` does, with the run's recorded
    preprocessing, and HD95/NSD in millimetres from the headers' spacing).
    `keep_largest` and `min_size` post-process every prediction before it is
    scored (`cmseg.predict.regions`); `tta` and `overlap` apply to the
    folder runs' whole-case prediction. `spacing` is that of `.npy` cases.

    Returns:
        The markdown text of the tables.
    """
    import cm_dataset
    from cmseg.train import run_is_finished

    known = available_metrics()
    metrics = known if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in known]
    if unknown or not metrics:
        raise UsageError(f"Invalid value for --metrics. Expected names among "
                         f"{', '.join(known)}. Received: {' '.join(metrics)}")
    options = dict(tta=tta, overlap=overlap, keep_largest=keep_largest, min_size=min_size,
                   batch_size=batch_size)
    found = [(r, _read_config(r)) for r in find_runs(run_paths)]
    kinds = {c["experiment"] in registry.FOLDER_EXPERIMENTS for _, c in found}
    if tta not in ("none", "flips", "all"):
        raise UsageError(f"Invalid value for --tta. Expected none, flips or all. "
                         f"Received: --tta {tta}")
    if not 0 <= overlap < 1 or min_size < 0:
        raise UsageError(f"Invalid value for --overlap or --min-size. Expected an overlap in "
                         f"[0, 1) and N >= 0. Received: --overlap {overlap} --min-size {min_size}")
    if kinds == {True}:
        if spacing is None:  # the spacing the runs' .npy cases were trained with
            recorded = {tuple(c["spacing"]) for _, c in found if c.get("spacing")}
            spacing = recorded.pop() if len(recorded) == 1 else None
        try:
            cases = cm_dataset.load_folder(data_dir, spacing=spacing, lazy=True)
        except cm_dataset.DataError as e:
            raise UsageError(f"--data {data_dir}: {e}") from None
        by_name = {c.name: c for c in cases}
        runs = found
        plans = {r: _check_folder_run(r, c, cases) for r, c in runs}
    else:
        try:
            data = cm_dataset.load(data_dir)
        except ValueError as e:
            raise UsageError(f"--data {data_dir}: {e}") from None
        runs = [(r, _read_run(r, data, c)) for r, c in found]
        plans = None
    for rundir, _ in runs:
        if not run_is_finished(rundir):
            _note(f"{rundir} is not finished; evaluating its best model so far.")
    first = {}
    for rundir, c in runs:
        key = (c["experiment"], c["model"], c["loss"], int(c["fold"]))
        if key in first:
            _note(f"{first[key]} and {rundir} are both {key[0]} fold {key[3]} of "
                  f"{key[1]}/{key[2]}; the tables pool their cases.")
        first.setdefault(key, rundir)
    cases, seen_baselines = [], set()
    progress = _io.Progress(len(runs), "evaluate")
    for rundir, config in runs:
        exp, fold = config["experiment"], int(config["fold"])
        want_base = exp in _BASELINE_ROWS and (exp, fold) not in seen_baselines
        seen_baselines.add((exp, fold))
        if plans is not None:
            split = plans[rundir]
            preds = _folder_predictions(rundir, config, by_name, [n for n, _ in split.test],
                                        options)
            run_cases, base = folder_fold_cases(by_name, split, preds, metrics,
                                                baseline=want_base)
        else:
            bones = [fold - 1] if exp == "bone" else list(range(data.n_bones))
            preds = _predict_run(rundir, config, data, bones, batch_size)
            preds = {b: _postprocess(p[None], options)[0] for b, p in preds.items()}
            run_cases, base = fold_cases(data, exp, fold, preds, metrics, baseline=want_base)
        tag = {"experiment": exp, "run": rundir}
        cases += [{**tag, "model": config["model"], "loss": config["loss"], **c} for c in run_cases]
        cases += [{**tag, "model": BASELINE[0], "loss": BASELINE[1], **c} for c in base]
        parent, name = os.path.split(os.path.normpath(rundir))
        progress.update(note=os.path.join(os.path.basename(parent), name))
    summary = summarize(cases, metrics)
    text = to_markdown(summary)
    os.makedirs(out, exist_ok=True)
    _io.write_csv(os.path.join(out, "results.csv"), summary)
    _io.write_csv(os.path.join(out, "cases.csv"), cases)
    _io.write_text(os.path.join(out, "results.md"), text)
    plot_history(runs, os.path.join(out, "training_curves.png"))
    box_metric = "dice" if "dice" in metrics else metrics[0]
    plot_boxes(cases, os.path.join(out, "dice_boxplot.png"), box_metric)
    log(text)
    return text
