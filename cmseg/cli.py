"""The `cmseg` command line: synth, train, evaluate, predict, check-data, study, demo.

    cmseg synth    --out DIR [--seed N]
    cmseg train    --data DIR --experiment {bone,surgeon} --fold {K,all}
                   --model NAME --loss NAME --out RUNDIR [options]
    cmseg evaluate --data DIR --runs RUNDIR [RUNDIR ...] --out REPORTDIR
    cmseg predict  --model PATH --input X.{npy,nii,nii.gz,nrrd} --out DIR
    cmseg check-data DIR [--spacing S [S S]]
    cmseg study    --data DIR --out STUDYDIR [--losses wcel dl rpdl] [--seeds 0 1 2]
                   [--jobs N] [--print-commands] [train options]
    cmseg demo     [--out DIR] [--epochs N] [--steps-per-epoch N]

From a checkout: `python -m cmseg ...`. Exit status 0 on success, 2 for
bad command-line values (unknown names or folds, unusable files), 1 for
failures while running.
"""

import argparse
import functools
import json
import os
import shlex
import sys
import types

__all__ = ["main", "build_parser"]

PROG = "cmseg"


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _fold(text):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fold number (1-based) or 'all', got {text!r}"
        ) from None


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _augment(text):
    return None if text == "none" else text


# (flag, dest) of the options a per-fold command repeats when not default.
_TRAIN_OPTIONS = (
    ("--loss-config", "loss_config"),
    ("--epochs", "epochs"),
    ("--batch-size", "batch_size"),
    ("--lr", "lr"),
    ("--lr-schedule", "lr_schedule"),
    ("--steps-per-epoch", "steps_per_epoch"),
    ("--validation-steps", "validation_steps"),
    ("--seed", "seed"),
    ("--base-filters", "base_filters"),
    ("--depth", "depth"),
    ("--dropout", "dropout"),
    ("--augment", "augment"),
    ("--input-encoding", "input_encoding"),
    ("--distribute", "distribute"),
    ("--deterministic", "deterministic"),
    ("--target", "target"),
    ("--deep-supervision", "deep_supervision"),
    ("--overwrite", "overwrite"),
)
#: The options of a folder of cases only (`cmseg study` runs the CM files).
_FOLDER_OPTIONS = (
    ("--folds", "folds"),
    ("--patch-size", "patch_size"),
    ("--intensity", "intensity"),
    ("--window", "window"),
    ("--resample", "resample"),
    ("--spacing", "spacing"),
)


def _add_train_options(p, epochs=200, steps=None, single_run=True):
    """The options of `cmseg train`; with `single_run=False` those a study
    shares among its runs (no model, loss, seed or --overwrite; a study
    trains deterministically unless told otherwise)."""
    from cmseg import registry
    from cmseg.train import LR_SCHEDULES

    if single_run:
        p.add_argument("--model", default="unet", choices=registry.MODELS,
                       help="architecture (models3d.get name). Default: %(default)s")
        p.add_argument("--loss", default="rpdl", choices=registry.loss_names(), metavar="NAME",
                       help="training loss: the paper's wcel, dl, rpdl or the snake_case "
                       "name of any loss of keras_seglosses (%(choices)s). "
                       "Default: %(default)s")
        p.add_argument("--loss-config", type=_json_object, default={}, metavar="JSON",
                       help='constructor arguments of the loss, e.g. \'{"smooth": 1e-5}\'')
    p.add_argument("--epochs", type=_positive_int, default=epochs,
                   help="maximum number of epochs. Default: %(default)s")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="Default: %(default)s")
    p.add_argument("--lr", type=_positive_float, default=1e-4,
                   help="initial Adam learning rate. Default: %(default)s")
    p.add_argument("--lr-schedule", default="plateau", choices=LR_SCHEDULES,
                   help="plateau: the paper's (x0.1 after 10 epochs without a better "
                   "validation loss); cosine: decay to 0 over --epochs, for short "
                   "schedules. Default: %(default)s")
    p.add_argument("--steps-per-epoch", type=_positive_int, default=steps,
                   help="batches per epoch (default: one pass over the training pairs)")
    p.add_argument("--validation-steps", type=_positive_int, default=None,
                   help="validation batches per epoch (default: the whole split)")
    if single_run:
        p.add_argument("--seed", type=int, default=0, help="Default: %(default)s")
    p.add_argument("--base-filters", type=_positive_int, default=4,
                   help="filters of the first level. Default: %(default)s")
    p.add_argument("--depth", type=_positive_int, default=5,
                   help="encoder levels (not Myronenko18). Default: %(default)s")
    p.add_argument("--dropout", type=float, default=0.3,
                   help="dropout rate (not Myronenko18). Default: %(default)s")
    p.add_argument("--augment", type=_augment, default="random",
                   choices=("random", "all48", "original216", None), metavar="MODE",
                   help="random, all48, original216 or none. Default: %(default)s")
    p.add_argument("--input-encoding", default="scaled", choices=("scaled", "onehot"),
                   help="Default: %(default)s")
    p.add_argument("--distribute", action="store_true",
                   help="data-parallel on every local device (JAX: DataParallel; "
                   "TensorFlow: MirroredStrategy)")
    p.add_argument("--target", default="each", choices=("each", "soft", "majority", "staple"),
                   help="each: one pair per annotation (the paper); soft, majority, staple: "
                   "one pair per input on that consensus of its training annotations "
                   "(soft: pass a loss that takes soft targets, e.g. --loss dl "
                   "--loss-config '{\"soft_label\": true}'). Default: %(default)s")
    p.add_argument("--deep-supervision", action="store_true",
                   help="isensee2017 only: train every decoder level's output against the "
                   "target at its resolution (weights 1, 1/2, 1/4)")
    if single_run:
        _add_folder_options(p)
    if single_run:
        p.add_argument("--deterministic", action="store_true",
                       help="bit-reproducible across processes: seeded generators, "
                       "TensorFlow op determinism, torch deterministic algorithms "
                       "(slower; see the README)")
        p.add_argument("--overwrite", action="store_true",
                       help="retrain even if RUNDIR holds a finished run")
    else:
        p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                       help="train every run bit-reproducibly (as cmseg train "
                       "--deterministic). Default: on")


def _add_inference_options(p):
    """How `predict` and `evaluate` predict a whole volume and post-process it."""
    p.add_argument("--tta", default="none", choices=("none", "flips", "all"),
                   help="test-time augmentation: the mean over the 8 flips or all 48 "
                   "symmetries of the cube (axes permuted only where the spacing is "
                   "equal). Default: %(default)s")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="sliding-window overlap (fraction of the window). Default: %(default)s")
    p.add_argument("--keep-largest", action="store_true",
                   help="keep the largest 26-connected component of each region")
    p.add_argument("--min-size", type=int, default=0, metavar="N",
                   help="remove components smaller than N voxels. Default: %(default)s")


def _add_folder_options(p):
    """The options of training on a folder of cases (`--experiment case|rater`)."""
    g = p.add_argument_group("folder of cases (--experiment case or rater)")
    g.add_argument("--folds", type=_positive_int, default=None, metavar="K",
                   help="case: K-fold over cases instead of leave one case out")
    g.add_argument("--patch-size", type=_positive_int, default=64, metavar="P",
                   help="train on random P^3 patches, a third centred on annotated voxels. "
                   "Default: %(default)s")
    g.add_argument("--intensity", default=None, choices=("labels", "ct", "mr"),
                   help="labels: anatomical label maps (the CM encoding); ct: clip to "
                   "--window and scale to [-1, 1]; mr: z-score over the nonzero voxels. "
                   "Default: ct for a folder, labels for the CM files")
    g.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="ct: the intensity window. Default: -1000 2000 (air to dense bone)")
    g.add_argument("--resample", type=_positive_int, default=None, metavar="S",
                   help="resize every case to S^3 (images linear, labels nearest) instead "
                   "of patches of its own grid")
    g.add_argument("--spacing", type=_positive_float, nargs=3, default=None, metavar="MM",
                   help="voxel size of .npy cases (they carry none). Default: 1 1 1")


def build_parser():
    from cmseg import registry

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Leave-one-out experiments of the Reward-Penalty Dice Loss paper "
        "(cortical mastoidectomy data): synthesize data, train, evaluate, predict.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic CM data set")
    p.add_argument("--out", required=True, help="directory for x{B}_{S}.npy and y{B}_{S}.npy")
    p.add_argument("--seed", type=int, default=0, help="Default: %(default)s")
    p.add_argument("--bones", type=_positive_int, default=9, help="Default: %(default)s")
    p.add_argument("--surgeons", type=_positive_int, default=7, help="Default: %(default)s")
    p.add_argument("--size", type=_positive_int, default=64, help="cube edge. Default: %(default)s")
    p.add_argument("--overwrite", action="store_true",
                   help="replace data files already in --out (refused otherwise)")

    p = sub.add_parser("train", help="train one fold (or all) of an experiment")
    p.add_argument("--data", required=True, help="CM data directory")
    p.add_argument("--experiment", required=True,
                   choices=registry.EXPERIMENTS + registry.FOLDER_EXPERIMENTS,
                   help="CM files: bone (Experiment 1, leave one bone out) or surgeon "
                   "(Experiment 2); a folder of cases: case (leave one case out, or "
                   "--folds K) or rater (leave one rater out)")
    p.add_argument("--fold", required=True, type=_fold,
                   help="1-based fold (bone 1-9, surgeon 1-7 on the CM data; case or rater "
                   "1..N on a folder) or all")
    p.add_argument("--out", required=True, help="run directory (with --fold all: the "
                   "parent of one fold-K directory per fold)")
    p.add_argument("--print-fold-commands", action="store_true",
                   help="print one command per fold (for a cluster scheduler) and exit")
    _add_train_options(p)

    p = sub.add_parser("evaluate", help="the paper's evaluation of trained runs")
    p.add_argument("--data", required=True, help="CM data directory, or the folder of cases "
                   "the runs trained on")
    p.add_argument("--runs", required=True, nargs="+",
                   help="run directories, or directories of runs")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="Default: %(default)s")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="columns: dice rpd hd95 nsd (per prediction and annotation) and "
                   "ged hungarian_iou qubiq consensus_dice (per input, against all its "
                   "annotations). Default: all")
    _add_inference_options(p)
    p.add_argument("--spacing", type=_positive_float, nargs=3, default=None, metavar="MM",
                   help="voxel size of .npy cases in a folder. Default: the runs' --spacing, "
                   "else 1 1 1")

    p = sub.add_parser("predict", help="predict the surgical region of new bones")
    p.add_argument("--model", required=True, help="a .keras model or an original .h5 file")
    p.add_argument("--input", required=True,
                   help="label volumes: .npy of shape (D, H, W) or (N, D, H, W), or one "
                   "volume as .nii, .nii.gz or .nrrd (the outputs take its format, grid and "
                   "header); an image for a model trained on a folder of cases (normalized "
                   "as its run's config.json records); another size than the model's input "
                   "is predicted by sliding windows")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--architecture", default="unet", choices=registry.MODELS,
                   help="architecture of an .h5 file. Default: %(default)s")
    p.add_argument("--batch-size", type=_positive_int, default=2, help="Default: %(default)s")
    _add_inference_options(p)
    p.add_argument("--spacing", type=_positive_float, nargs=3, default=None, metavar="MM",
                   help="voxel size of a .npy input (for --tta all). Default: the model's "
                   "run's --spacing, else 1 1 1")

    p = sub.add_parser("check-data", help="validate a folder of multi-annotator cases "
                       "(DIR/<case>/image.nii.gz, DIR/<case>/annotation-<rater>.nii.gz) and "
                       "list them")
    p.add_argument("directory", metavar="DIR", help="the data folder")
    p.add_argument("--spacing", type=_positive_float, nargs="+", default=None, metavar="S",
                   help="voxel size in mm of .npy files (one number, or one per axis); "
                   "NIfTI and NRRD carry their own. Default: 1")

    p = sub.add_parser("study", help="every fold, loss and seed of both experiments, "
                       "evaluated with paired statistics (does RPDL help?)")
    p.add_argument("--data", required=True, help="CM data directory")
    p.add_argument("--out", required=True, help="study directory (STUDYDIR)")
    p.add_argument("--experiments", nargs="+", default=list(registry.EXPERIMENTS),
                   choices=registry.EXPERIMENTS, metavar="EXP",
                   help="bone and/or surgeon. Default: both")
    p.add_argument("--models", nargs="+", default=["unet"], choices=registry.MODELS,
                   metavar="MODEL", help=f"among {', '.join(registry.MODELS)}. "
                   "Default: unet")
    p.add_argument("--losses", nargs="+", default=list(registry.PAPER_LOSSES),
                   choices=registry.loss_names(), metavar="LOSS",
                   help="compared with every seed. Default: wcel dl rpdl")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED",
                   help="Default: 0 1 2")
    p.add_argument("--extra-losses", nargs="+", default=[], choices=registry.loss_names(),
                   metavar="LOSS", help="further losses, trained with --extra-seeds only")
    p.add_argument("--extra-seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="seeds of --extra-losses. Default: the first of --seeds")
    p.add_argument("--folds", nargs="+", type=_fold, default=["all"], metavar="FOLD",
                   help="1-based folds present in every chosen experiment, or all. "
                   "Default: all")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="training processes side by side, the CPU threads divided "
                   "among them. Default: %(default)s")
    p.add_argument("--print-commands", action="store_true",
                   help="print one cmseg train line per unfinished run (for a cluster) "
                   "and exit; run the study command again afterwards for the report")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the runs finished so far")
    _add_train_options(p, single_run=False)

    p = sub.add_parser("demo", help="synthesize, train dl and rpdl, evaluate, predict")
    p.add_argument("--out", default="demo_out", help="Default: %(default)s")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="Default: the demo's short schedule")
    p.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                   help="Default: the demo's short schedule")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="Default: the demo's short schedule")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="Default: the demo's short schedule")
    p.add_argument("--size", type=_positive_int, default=64, help="Default: %(default)s")
    p.add_argument("--overwrite", action="store_true", help="redo every step")
    for name, subparser in sub.choices.items():
        subparser.set_defaults(command_parser=subparser)
    return parser


@functools.lru_cache(maxsize=1)
def _train_defaults():
    # Building the parser takes a quarter of a second (the loss table);
    # a study asks once per run.
    return types.MappingProxyType(vars(build_parser().parse_args(
        ["train", "--data", "d", "--experiment", "bone", "--fold", "1", "--out", "o"])))


def train_option_args(values, skip=()):
    """`cmseg train` flags for the options in `values` (a dict by option
    dest, e.g. a `TrainConfig`'s fields) that differ from their defaults."""
    defaults = _train_defaults()
    extra = []
    for flag, dest in _TRAIN_OPTIONS + _FOLDER_OPTIONS:
        if dest in skip or dest not in values:
            continue
        value = values[dest]
        if value == defaults[dest]:
            continue
        if isinstance(value, bool):
            extra.append(flag)
        elif isinstance(value, dict):
            extra += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            extra += [flag, *map(str, value)]
        else:
            extra += [flag, "none" if value is None else str(value)]
    return extra


def fold_commands(args, folds, prog=PROG):
    """One `train` command line per fold, options repeated when not default."""
    base = [prog, "train", "--data", args.data, "--experiment", args.experiment,
            "--model", args.model, "--loss", args.loss]
    extra = train_option_args(vars(args))
    return [
        shlex.join(base + ["--fold", str(k), "--out", os.path.join(args.out, f"fold-{k}")] + extra)
        for k in folds
    ]


def _cmd_synth(args):
    import cm_dataset
    from cm_dataset import synthetic
    from cmseg._io import UsageError

    names = cm_dataset.file_names(args.bones, args.surgeons)
    existing = [n for n in names if os.path.exists(os.path.join(args.out, n))]
    if existing and not args.overwrite:
        raise UsageError(
            f"--out {args.out} already holds {', '.join(existing)}; left untouched (it may be "
            "the original data). Pass --overwrite to replace it, or choose another --out."
        )
    print(f"synthesizing {args.bones} bones x {args.surgeons} surgeons at {args.size}^3 ...",
          file=sys.stderr)
    data = synthetic.generate(n_bones=args.bones, n_surgeons=args.surgeons, size=args.size,
                              seed=args.seed)
    paths = data.save(args.out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _train_config(args, fold):
    from cmseg.train import TrainConfig

    return TrainConfig(
        data=os.path.abspath(args.data), experiment=args.experiment, fold=fold,
        model=args.model, loss=args.loss, loss_config=args.loss_config, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
        steps_per_epoch=args.steps_per_epoch,
        validation_steps=args.validation_steps, seed=args.seed, base_filters=args.base_filters,
        depth=args.depth, dropout=args.dropout, augment=args.augment,
        input_encoding=args.input_encoding, distribute=args.distribute,
        deterministic=args.deterministic, target=args.target,
        deep_supervision=args.deep_supervision, folds=args.folds,
        patch_size=args.patch_size, intensity=args.intensity,
        window=list(args.window) if args.window else None, resample=args.resample,
        spacing=list(args.spacing) if args.spacing else None,
    )


def _cmd_train(args, parser):
    from cmseg.train import train

    if args.fold == "all" or args.print_fold_commands:
        from cmseg._io import UsageError
        from cmseg.train import data_folds

        try:
            folds = data_folds(_train_config(args, 1))
        except UsageError as e:
            parser.error(str(e))
        if args.fold != "all" and args.fold not in folds:
            parser.error(f"argument --fold: invalid choice: {args.fold} "
                         f"(choose from {', '.join(map(str, folds))}, all)")
        if args.print_fold_commands:
            chosen = folds if args.fold == "all" else [args.fold]
            print("\n".join(fold_commands(args, chosen)))
            return 0
        for k in folds:
            print(f"== {args.experiment} fold {k}/{len(folds)}", file=sys.stderr)
            train(_train_config(args, k), os.path.join(args.out, f"fold-{k}"),
                  overwrite=args.overwrite)
        return 0
    train(_train_config(args, args.fold), args.out, overwrite=args.overwrite)
    return 0


def _cmd_evaluate(args, parser):
    from cmseg.evaluate import evaluate

    _check_inference_options(args, parser)
    for path in [args.data, *args.runs]:
        if not os.path.isdir(path):
            parser.error(f"{path}: no such directory")
    evaluate(args.data, args.runs, args.out, batch_size=args.batch_size, metrics=args.metrics,
             tta=args.tta, overlap=args.overlap, keep_largest=args.keep_largest,
             min_size=args.min_size, spacing=args.spacing)
    return 0


def _cmd_predict(args, parser):
    from cmseg.predict import predict

    _check_inference_options(args, parser)
    predict(args.model, args.input, args.out, architecture=args.architecture,
            batch_size=args.batch_size, tta=args.tta, overlap=args.overlap,
            keep_largest=args.keep_largest, min_size=args.min_size,
            spacing=tuple(args.spacing) if args.spacing else None)
    return 0


def _check_inference_options(args, parser):
    if not 0 <= args.overlap < 1:
        parser.error(f"argument --overlap: expected a fraction in [0, 1), got {args.overlap}")
    if args.min_size < 0:
        parser.error(f"argument --min-size: expected N >= 0, got {args.min_size}")


def _cmd_check_data(args, parser):
    from cm_dataset import folder
    from cmseg._io import UsageError

    if args.spacing is not None and len(args.spacing) not in (1, 3):
        parser.error(f"argument --spacing: expected 1 or 3 values, got {len(args.spacing)}")
    try:
        # Lazy: a folder larger than memory is checked one file at a time.
        cases = folder.load_folder(args.directory, spacing=args.spacing, lazy=True)
    except folder.DataError as e:
        raise UsageError(str(e)) from None
    print(folder.summary(cases))
    return 0


def _cmd_study(args, parser):
    from cmseg.study import study_main

    return study_main(args)


def _cmd_demo(args, parser):
    from cmseg.demo import demo

    demo(args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
         batch_size=args.batch_size, lr=args.lr, size=args.size, overwrite=args.overwrite)
    return 0


def main(argv=None):
    """Run `cmseg` with `argv` (default: `sys.argv[1:]`); return the exit
    status (2 for bad command-line values)."""
    from cmseg._io import UsageError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    commands = {"synth": lambda a, p: _cmd_synth(a), "train": _cmd_train,
                "evaluate": _cmd_evaluate, "predict": _cmd_predict,
                "check-data": _cmd_check_data, "study": _cmd_study,
                "demo": _cmd_demo}
    sub = args.command_parser
    try:
        out = getattr(args, "out", None)
        if out and os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out {out}: not a directory.")
        return commands[args.command](args, sub)
    except SystemExit as e:
        return int(e.code or 0)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; every completed epoch is saved, run the "
              "same command again to resume.", file=sys.stderr)
        return 130
    except UsageError as e:
        sub.print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
