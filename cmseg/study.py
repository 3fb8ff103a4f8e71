"""`cmseg study`: does RPDL help? The paper's comparison as a reproducible,
resumable leave-one-out study with paired statistics.

One run is one `cmseg train` of an (experiment, fold, model, loss, seed);
the study trains every run of its grid into

    STUDYDIR/study.json                          the settings (grid + schedule)
    STUDYDIR/runs/EXP/MODEL/LOSS/seed-S/fold-K/  one run directory (`cmseg train`)
    STUDYDIR/logs/EXP-MODEL-LOSS-seedS-foldK.log its output
    STUDYDIR/evaluation/....csv                  its evaluated cases (a cache)

and then writes the report (`study.md`, `study.csv`, `study_folds.png`,
`study_examples.png`, `study_curves.png`; `cmseg.study_report`).

Runs are separate `cmseg train` processes, exactly the lines
`--print-commands` prints, so a study run on a cluster is the same study.
A finished run is reused, a killed one resumes from its last epoch (as
`cmseg train` does), and `--jobs N` runs N at once with the CPU threads
divided among them. The grid is ordered seed by seed (every experiment,
fold and loss of the first seed, then the second, ...) and the losses of
`extra_losses` (trained with `extra_seeds` only, by default the first
seed) come last, so a study stopped early holds complete comparisons of
the main losses for its first seeds.

A study directory belongs to one set of settings: the same command resumes
it, a command with other settings is refused (exit 2) before anything is
written.
"""

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time

from cmseg import _io, registry
from cmseg._io import UsageError

__all__ = ["Run", "StudySettings", "plan", "train_argv", "run_study", "STUDY_FILE"]

STUDY_FILE = "study.json"
LOCK_FILE = ".lock"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a study."""

    experiment: str
    fold: int
    model: str
    loss: str
    seed: int

    @property
    def path(self):
        """Its directory, relative to the study directory."""
        return os.path.join("runs", self.experiment, self.model, self.loss,
                            f"seed-{self.seed}", f"fold-{self.fold}")

    @property
    def name(self):
        return f"{self.experiment}-{self.model}-{self.loss}-seed{self.seed}-fold{self.fold}"

    def describe(self):
        return (f"{self.experiment} fold {self.fold} {self.model} {self.loss} "
                f"seed {self.seed}")


@dataclasses.dataclass
class StudySettings:
    """Everything that defines a study (stored as `study.json`).

    `train` holds the `cmseg train` options shared by every run (the
    `TrainConfig` fields other than data, experiment, fold, model, loss and
    seed), by `TrainConfig` field name.
    """

    data: str
    experiments: list
    models: list
    losses: list
    seeds: list
    folds: object = "all"  # "all" or a list of 1-based folds
    extra_losses: list = dataclasses.field(default_factory=list)
    extra_seeds: list = dataclasses.field(default_factory=lambda: [0])
    train: dict = dataclasses.field(default_factory=dict)

    def to_json(self):
        return dataclasses.asdict(self)


def folds_of(settings, experiment, n_bones, n_surgeons):
    valid = registry.valid_folds(experiment, n_bones, n_surgeons)
    if settings.folds == "all":
        return list(valid)
    missing = [k for k in settings.folds if k not in valid]
    if missing:
        raise UsageError(
            f"Invalid value for --folds. Experiment {experiment!r} on data with {n_bones} "
            f"bones and {n_surgeons} surgeons has folds {valid[0]}-{valid[-1]}. "
            f"Received: --folds {' '.join(map(str, settings.folds))}"
        )
    return list(settings.folds)


def plan(settings, n_bones, n_surgeons):
    """The study's runs, in training order: the compared losses seed by seed
    (within a seed: experiment, fold, model, loss), then the extra losses on
    their seeds, so that a study stopped early holds whole comparisons of
    the main losses for its first seeds."""
    groups = [(seed, list(settings.losses)) for seed in settings.seeds]
    groups += [(seed, [lo for lo in settings.extra_losses if lo not in settings.losses])
               for seed in settings.extra_seeds]
    runs = []
    for seed, losses in groups:
        for exp in settings.experiments:
            for fold in folds_of(settings, exp, n_bones, n_surgeons):
                for model in settings.models:
                    runs += [Run(exp, fold, model, loss, seed) for loss in losses]
    return list(dict.fromkeys(runs))


def train_argv(settings, run, study_dir):
    """The `cmseg train` arguments of one run (without the program name)."""
    from cmseg.cli import train_option_args

    return ["train", "--data", settings.data, "--experiment", run.experiment,
            "--fold", str(run.fold), "--model", run.model, "--loss", run.loss,
            "--seed", str(run.seed), "--out", os.path.join(study_dir, run.path),
            *train_option_args(settings.train)]


def _differences(old, new):
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{d}" for d in _differences(a, b)]
        elif a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def check_study_dir(study_dir, settings):
    """Refuse a directory holding another study (nothing written)."""
    path = os.path.join(study_dir, STUDY_FILE)
    if not os.path.isfile(path):
        if os.path.isdir(study_dir) and os.path.isdir(os.path.join(study_dir, "runs")):
            raise UsageError(f"--out {study_dir} holds runs but no {STUDY_FILE}; not a study "
                             "directory this command wrote. Choose another --out.")
        return False
    try:
        saved = _io.read_json(path)
    except ValueError as e:
        raise UsageError(f"{path}: unreadable ({e}). Choose another --out.") from None
    new = settings.to_json()
    # options added to `cmseg train` after the study started default as then
    from cmseg.train import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    saved_train = saved.get("train", {})
    saved["train"] = {**{k: defaults[k] for k in new["train"]
                         if k not in saved_train and k in defaults}, **saved_train}
    diff = _differences(saved, new)
    if diff:
        raise UsageError(
            f"--out {study_dir} holds a study with other settings ({'; '.join(diff)}). Run "
            "its own command to resume it (the first lines of its study.md), or choose "
            "another --out."
        )
    return True


def _thread_env(jobs):
    """The environment of one of `jobs` training processes: the machine's
    cores divided among them (settings the user made are kept)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // jobs)
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(threads))
    env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    if threads == 1 and "XLA_FLAGS" not in env:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def _lock(study_dir):
    """Hold `STUDYDIR/.lock` for this process and the training processes it
    starts (they inherit it), so a second study process on the same
    directory, or one started while a killed study's trainings still run,
    is refused instead of writing the same runs twice."""
    import fcntl

    fd = os.open(os.path.join(study_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(
            f"--out {study_dir}: another cmseg study (or a training it started) is still "
            "running there; wait for it or stop it first."
        ) from None
    return fd


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_study(settings, study_dir, runs, jobs=1, log=None):
    """Train every unfinished run of `runs` (`jobs` processes at once).

    Returns:
        list of the runs that failed (their logs name the error).
    """
    from cmseg.train import run_is_finished

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    todo = [r for r in runs if not run_is_finished(os.path.join(study_dir, r.path))]
    log(f"study: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to train "
        f"with {jobs} process{'es' if jobs > 1 else ''}")
    if not todo:
        return []
    lock = _lock(study_dir)
    os.makedirs(os.path.join(study_dir, "logs"), exist_ok=True)
    # `kill` (SIGTERM) stops the trainings as Ctrl-C does, instead of
    # leaving them running without the study.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    env = _thread_env(jobs)
    start = time.monotonic()
    pending, running, failed, done = list(todo), {}, [], 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                logfile = open(os.path.join(study_dir, "logs", run.name + ".log"), "ab")
                argv = [sys.executable, "-m", "cmseg", *train_argv(settings, run, study_dir)]
                logfile.write(f"$ {shlex.join(argv)}\n".encode())
                logfile.flush()
                proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, pass_fds=(lock,))
                running[proc] = (run, logfile, time.monotonic())
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                run, logfile, began = running.pop(proc)
                logfile.close()
                done += 1
                took = time.monotonic() - began
                if proc.returncode:
                    failed.append(run)
                    status = f"FAILED (exit {proc.returncode}, see logs/{run.name}.log)"
                else:
                    status = f"trained in {_clock(took)}"
                elapsed = time.monotonic() - start
                eta = elapsed / done * (len(todo) - done)
                log(f"study {done}/{len(todo)} {run.describe()}: {status} "
                    f"(elapsed {_clock(elapsed)}, about {_clock(eta)} left)")
    except BaseException:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(lock)
    return failed


# `TrainConfig` fields a study sets per run rather than sharing.
_PER_RUN = ("loss_config", "seed", "overwrite")


def settings_from_args(args):
    from cmseg.cli import _TRAIN_OPTIONS

    folds = args.folds
    if "all" in folds:
        if len(folds) > 1:
            raise UsageError("Invalid value for --folds. Expected fold numbers or all, not "
                             f"both. Received: --folds {' '.join(map(str, folds))}")
        folds = "all"
    else:
        folds = sorted(set(folds))
    return StudySettings(
        data=os.path.abspath(args.data),
        experiments=list(dict.fromkeys(args.experiments)),
        models=list(dict.fromkeys(args.models)),
        losses=list(dict.fromkeys(args.losses)),
        seeds=list(dict.fromkeys(args.seeds)),
        folds=folds,
        extra_losses=[lo for lo in dict.fromkeys(args.extra_losses) if lo not in args.losses],
        extra_seeds=list(dict.fromkeys(args.extra_seeds or args.seeds[:1])),
        train={dest: getattr(args, dest) for _, dest in _TRAIN_OPTIONS if dest not in _PER_RUN},
    )


def _check_losses(settings):
    for name in settings.losses + settings.extra_losses:
        try:
            targets = registry.loss_targets(registry.make_loss(name))
        except ValueError as e:
            raise UsageError(f"--losses {name}: {e}") from None
        if settings.train.get("target", "each") != "each" and targets == "legacy":
            raise UsageError(f"--target: the legacy target encodes each surgery; {name} needs "
                             "--target each.")


def study_command(settings, study_dir, jobs=1):
    """The `cmseg study` line that (re)creates or resumes this study."""
    from cmseg.cli import PROG, train_option_args

    argv = [PROG, "study", "--data", settings.data, "--out", study_dir,
            "--experiments", *settings.experiments, "--models", *settings.models,
            "--losses", *settings.losses, "--seeds", *map(str, settings.seeds)]
    if settings.extra_losses:
        argv += ["--extra-losses", *settings.extra_losses,
                 "--extra-seeds", *map(str, settings.extra_seeds)]
    if settings.folds != "all":
        argv += ["--folds", *map(str, settings.folds)]
    train = dict(settings.train)
    if not train.get("deterministic", True):
        argv.append("--no-deterministic")
    train.pop("deterministic", None)
    argv += train_option_args(train)
    if jobs > 1:
        argv += ["--jobs", str(jobs)]
    return shlex.join(argv)


def study_main(args):
    """`cmseg study`: check everything, then train, then report."""
    import cm_dataset
    from cmseg.train import run_is_finished

    settings = settings_from_args(args)
    try:
        data = cm_dataset.load(settings.data)
    except ValueError as e:
        raise UsageError(f"--data {args.data}: {e}") from None
    _check_losses(settings)
    runs = plan(settings, data.n_bones, data.n_surgeons)  # checks --folds
    study_dir = args.out
    existing = check_study_dir(study_dir, settings)
    if args.print_commands:
        from cmseg.cli import PROG

        for run in runs:
            if not run_is_finished(os.path.join(study_dir, run.path)):
                print(shlex.join([PROG, *train_argv(settings, run, study_dir)]))
        return 0
    if args.report_only:
        if not existing:
            raise UsageError(f"--out {study_dir}: no study there to report on.")
        failed = []
    else:
        # Everything checked: from here on the study directory is written.
        os.makedirs(study_dir, exist_ok=True)
        if not existing:
            _io.write_json(os.path.join(study_dir, STUDY_FILE), settings.to_json())
        failed = run_study(settings, study_dir, runs, jobs=args.jobs)
    from cmseg.study_report import write_report

    write_report(settings, study_dir, runs, data,
                 command=study_command(settings, study_dir, args.jobs))
    if failed:
        print(f"cmseg study: {len(failed)} runs failed: "
              + ", ".join(r.name for r in failed), file=sys.stderr)
        return 1
    return 0
