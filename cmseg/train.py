"""`cmseg train`: one leave-one-out fold of the RPDL paper, crash-safe.

The paper's recipe [000, Sec. V]: Adam with learning rate 1e-4, the learning
rate divided by 10 when the validation loss has not improved for 10 epochs
(`ReduceLROnPlateau`), early stopping after 20 epochs without improvement, at
most 200 epochs, 10 % of the training pairs held out for validation.

Files in the run directory:

    config.json    every setting of the run (enough to reproduce it)
    history.csv    one row per completed epoch (1-based `epoch`, Keras' logs)
    model.keras    the model of the epoch with the lowest validation loss
    state.json     resume state (last completed epoch, callback counters)
    .resume/       checkpoint of the last epoch (model + optimizer state)

Resuming. After every epoch the model and optimizer are saved to
`.resume/epoch-NNNN.keras`, then `state.json` is replaced in one atomic step;
that replacement is the commit point. `history.csv` and `model.keras` are
derived from the committed state and rewritten (atomically) after each commit
and again when a run resumes, so a run killed at any instant restarts from
its last committed epoch with `initial_epoch` set: no epoch is repeated in
the history and none is lost. What a `.keras` file does not hold is
restored too, so the resumed run computes what the uninterrupted one would
have: the counters of `ReduceLROnPlateau` and `EarlyStopping` (wait, best,
cooldown) and the learning rate; the states of the model's random seed
generators (dropout masks); and the position in the training stream (one
endless, seeded stream of batches cut into epochs; a resumed run skips the
batches the finished epochs consumed, so it sees the same shuffles and
augmentations). Temporary files a kill left in the middle of a write are
removed.

`lr_schedule="cosine"` (for short schedules, as the demo's) replaces the
plateau rule by a cosine decay of the learning rate over the epochs.
"""

import dataclasses
import glob
import math
import os
import shutil

import keras
import numpy as np

from cmseg import _io, registry
from cmseg._io import UsageError

__all__ = ["TrainConfig", "UsageError", "train", "run_is_finished"]

STATE = "state.json"
CONFIG = "config.json"
HISTORY = "history.csv"
MODEL = "model.keras"
RESUME_DIR = ".resume"
# Settings that may change between a run and its resumption without changing
# what is computed.
# `backend` and `pos_weight` are recorded beside the settings, not settings
_RESUMABLE_CHANGES = ("distribute", "verbose", "backend", "pos_weight", "preprocessing",
                      "split")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one training run (stored as `config.json`).

    Defaults are the paper's [000, Sec. V] except `batch_size` (16 here, the
    paper's Myronenko18 setting, 64 for the other models on V100 GPUs).
    `deep_supervision` (isensee2017 only) trains every output of
    `isensee2017(deep_supervision=True)` with the loss against the target
    at its resolution (`keras_seglosses.DeepSupervision`, weights 1, 1/2,
    1/4); `model.keras` keeps all outputs, and `predict` and `evaluate` use
    the full-resolution one.
    On a folder of cases (`experiment` "case" or "rater", `FolderData`)
    `folds`, `patch_size`, `intensity` (default "ct"), `window`, `resample`
    and `spacing` choose the split and the input pipeline
    (`cm_dataset.patches`); the CM files ignore them. What a prediction
    must repeat (intensity mode and window, encoding, channels, patch or
    resampled size) is written to `config.json` as `preprocessing`, where
    `cmseg predict` and `cmseg evaluate` read it back.
    `lr_schedule="plateau"` is the paper's (`ReduceLROnPlateau` with
    `lr_factor` and `lr_patience`); `"cosine"` instead decays the learning
    rate from `lr` towards 0 over `epochs` (`cosine_learning_rate`), for
    short schedules: its last, slow epochs let BatchNormalization's moving
    statistics settle on the final weights.
    """

    data: str
    experiment: str
    fold: int
    model: str = "unet"
    loss: str = "rpdl"
    loss_config: dict = dataclasses.field(default_factory=dict)
    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    lr_schedule: str = "plateau"
    lr_factor: float = 0.1
    lr_patience: int = 10
    stop_patience: int = 20
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    base_filters: int = 4
    depth: int = 5
    dropout: float = 0.3
    augment: str | None = "random"
    input_encoding: str = "scaled"
    distribute: bool = False
    deterministic: bool = False
    target: str = "each"
    deep_supervision: bool = False
    folds: int | None = None
    patch_size: int = 64
    intensity: str | None = None
    window: list | None = None
    resample: int | None = None
    spacing: list | None = None
    verbose: str = "auto"

    def to_json(self):
        return dataclasses.asdict(self)


LR_SCHEDULES = ("plateau", "cosine")
#: `--target`: one pair per annotation (the paper) or one per input on a
#: consensus of the training annotations (`cm_dataset.make_dataset(label=...)`).
TARGETS = ("each", "soft", "majority", "staple")


def cosine_learning_rate(lr, epoch, epochs):
    """Learning rate of 0-based `epoch` under the cosine schedule: `lr` at
    the first epoch, decaying along half a cosine towards 0 after the last
    (`lr * (1 + cos(pi * epoch / epochs)) / 2`)."""
    return float(lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)))


def make_deterministic():
    """Make this process's training bit-reproducible across processes.

    Keras' generators are seeded by `keras.utils.set_random_seed` (always
    done, with `--seed`). On top of that: TensorFlow's op determinism (the
    `tf.data` pipeline runs on TensorFlow on every backend, and TensorFlow
    training too), which also makes `tf.data` keep element order; torch's
    deterministic algorithms. XLA on CPU (JAX) is deterministic for a fixed
    program and thread count. Call it before building the model and data.
    On a GPU some kernels (scatter-add, some convolution backward passes)
    have no deterministic implementation: TensorFlow then raises rather
    than differ, torch too.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    # Op determinism does not fix the order in which CPU threads add up a
    # convolution's partial sums: at 64^3 two processes then differ in the
    # 7th digit now and then. One intra-op thread removes that.
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime already started: keep its threads
        pass
    if keras.backend.backend() == "torch":
        import torch

        torch.use_deterministic_algorithms(True)


def run_is_finished(rundir):
    """True when `rundir` holds a completed run."""
    path = os.path.join(rundir, STATE)
    return os.path.isfile(path) and bool(_io.read_json(path).get("finished"))


def _differences(old, new):
    # Settings added to TrainConfig after a run was started default as then.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    old = {**{k: v for k, v in defaults.items() if k in new}, **old}
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k)
    ]


def _remove_stale_temporaries(rundir):
    """Temporary files of the run's own atomic writes that a killed process
    left (never anything else)."""
    for name in (STATE, CONFIG, HISTORY, MODEL, os.path.join(RESUME_DIR, "epoch-*.keras")):
        for path in _io.stale_temporaries(os.path.join(rundir, name)):
            os.remove(path)


def _clear_run(rundir):
    """Remove exactly the files a run writes (never anything else)."""
    _remove_stale_temporaries(rundir)
    for name in (STATE, CONFIG, HISTORY, MODEL):
        path = os.path.join(rundir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(rundir, RESUME_DIR), ignore_errors=True)


def _seed_states(model):
    """The model's random seed-generator states (dropout, VAE sampling):
    variables a `.keras` file does not save, in the model's own order."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables
            if id(v) not in weights and "int" in keras.backend.standardize_dtype(v.dtype)]


def _checkpoint_path(rundir, epoch):
    return os.path.join(rundir, RESUME_DIR, f"epoch-{epoch:04d}.keras")


def _refresh_derived(rundir, state):
    """Rewrite `history.csv` and `model.keras` from the committed state and
    drop checkpoints no longer needed (from a later, uncommitted epoch, or
    superseded ones)."""
    _io.write_csv(os.path.join(rundir, HISTORY), state["history"])
    best = state.get("best_epoch")
    if best:
        _io.copy_file(_checkpoint_path(rundir, best), os.path.join(rundir, MODEL))
    keep = {_checkpoint_path(rundir, e) for e in (state["epoch"], best) if e}
    for path in glob.glob(os.path.join(rundir, RESUME_DIR, "epoch-*.keras")):
        if path not in keep:
            os.remove(path)


def _plain(value):
    """A Keras log value as a JSON-safe float (NaN and inf kept as strings by
    json, which reads them back)."""
    return float(keras.ops.convert_to_numpy(value))


# The counters of the schedule callbacks, saved with every epoch and
# restored on resumption (Keras resets them in `on_train_begin`).
_COUNTERS = {
    "reduce_lr": ("wait", "best", "cooldown_counter"),
    "early_stop": ("wait", "best", "best_epoch", "stopped_epoch"),
}


def _number(value):
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


class RunCheckpoint(keras.callbacks.Callback):
    """Commits one epoch: checkpoint, then `state.json`, then derived files.

    `schedule` maps names of `_COUNTERS` to the run's callbacks
    (`ReduceLROnPlateau` absent with the cosine schedule). They must come
    before this callback in the callback list, so that their counters for
    the epoch are final when saved; this callback restores the counters in
    `on_train_begin`, after theirs reset them.
    """

    def __init__(self, rundir, state, schedule, monitor="val_loss"):
        super().__init__()
        self.rundir = rundir
        self.state = state
        self.schedule = schedule
        self.monitor = monitor

    def on_train_begin(self, logs=None):
        saved = self.state.get("callbacks")
        if saved:
            for name, callback in self.schedule.items():
                for attr, value in saved.get(name, {}).items():
                    setattr(callback, attr, value)
            self.model.optimizer.learning_rate = self.state["learning_rate"]

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        done = epoch + 1
        lr = _plain(self.model.optimizer.learning_rate)
        row = {"epoch": done, **{k: _plain(v) for k, v in logs.items()}}
        row["learning_rate"] = row.get("learning_rate", lr)
        ckpt = _checkpoint_path(self.rundir, done)
        with _io.atomic_path(ckpt) as tmp:
            self.model.save(tmp)
        seeds = [
            [int(x) for x in keras.ops.convert_to_numpy(v).ravel()]
            for v in _seed_states(self.model)
        ]
        current = row.get(self.monitor, math.nan)
        best_value = self.state.get("best_value")
        improved = not math.isnan(current) and (best_value is None or current < best_value)
        state = dict(self.state)
        state.update(
            epoch=done,
            history=self.state["history"] + [row],
            learning_rate=lr,
            seed_states=seeds,
            stop_training=bool(self.model.stop_training),
            callbacks={
                name: {attr: _number(getattr(callback, attr)) for attr in _COUNTERS[name]}
                for name, callback in self.schedule.items()
            },
        )
        if improved:
            state.update(best_epoch=done, best_value=current)
        _io.write_json(os.path.join(self.rundir, STATE), state)  # the commit
        self.state.clear()
        self.state.update(state)
        _refresh_derived(self.rundir, state)


def _devices_for(backend):
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return keras.distribution.list_devices()


def _distribution(config):
    """The backend's data-parallel engine, or `None`; a context manager to
    build the model in (the `MirroredStrategy` scope on TensorFlow)."""
    import contextlib

    backend = keras.backend.backend()
    if not config.distribute:
        return contextlib.nullcontext(), 1
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    if backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in _devices_for(backend)]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy.scope(), len(devices)
    raise UsageError(
        f"--distribute is not available on the {backend} backend. It uses "
        "keras.distribution.DataParallel on JAX and tf.distribute.MirroredStrategy "
        "on TensorFlow; run with KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow, "
        "or leave --distribute out."
    )


class FolderData:
    """A folder of cases (`cm_dataset.folder`) and one fold of it: what
    `train` needs of a data set besides the CM files.

    Attributes:
        cases: the folder's `Case` objects (lazy: arrays read on use).
        split: the fold's `cm_dataset.splits.FolderSplit` (`None` before
            `set_fold`).
        preprocessing: dict, what a prediction repeats: `intensity`,
            `window`, `input_encoding`, `channels` (of the image files),
            `input_channels` (of the model), `patch_size`, `resample`.
    """

    def __init__(self, config):
        import cm_dataset
        from cm_dataset import patches

        try:
            self.cases = cm_dataset.load_folder(config.data, spacing=config.spacing, lazy=True)
        except cm_dataset.DataError as e:
            raise UsageError(f"--data {config.data}: {e}") from None
        channels = {c.channels for c in self.cases}
        if len(channels) > 1:
            counts = ", ".join(f"{c.name}: {c.channels}" for c in self.cases)
            raise UsageError(f"--data {config.data}: the cases' images have different numbers "
                             f"of channels ({counts}). Expected the same in every case.")
        self.channels = channels.pop()
        if config.augment not in ("random", None):
            raise UsageError(
                f"Invalid value for --augment. Expected random or none for a folder of cases "
                f"(a random symmetry the spacing allows per patch; {config.augment} enumerates "
                f"the CM cubes' symmetries). Received: --augment {config.augment}")
        intensity = config.intensity or "ct"
        if config.window and intensity != "ct":
            raise UsageError(f"Invalid value for --window. Expected it with --intensity ct "
                             f"only. Received: --window with --intensity {intensity}")
        try:
            self.input_channels = patches.input_channels(self.channels, intensity,
                                                         config.input_encoding)
        except ValueError as e:
            raise UsageError(f"--intensity {intensity}: {e}") from None
        if intensity == "labels":
            # label maps are checked up front: the pipeline would only fail
            # once training had started and the run directory was written
            for case in self.cases:
                try:
                    patches.normalize(case.image, "labels", input_encoding=config.input_encoding)
                except ValueError as e:
                    raise UsageError(f"--intensity labels: {case.image_files[0]}: {e}") \
                        from None
                finally:
                    case.release()
        size = config.resample or config.patch_size
        if config.resample and config.patch_size > config.resample:
            size = config.resample
        self.size = size
        self.preprocessing = {
            "intensity": intensity,
            "window": list(config.window or patches.CT_WINDOW) if intensity == "ct" else None,
            "input_encoding": config.input_encoding,
            "channels": self.channels,
            "input_channels": self.input_channels,
            "patch_size": size,
            "resample": config.resample,
            "spacing": list(config.spacing) if config.spacing else None,
        }
        self.split = None

    def n_folds(self, config):
        from cm_dataset import splits

        try:
            return splits.folder_n_folds(config.experiment, self.cases, config.folds)
        except ValueError as e:
            raise UsageError(f"--folds {config.folds}: {e}") from None

    def set_fold(self, config):
        from cm_dataset import splits

        folds = self.n_folds(config)
        if config.fold not in range(1, folds + 1):
            raise UsageError(
                f"Invalid value for --fold. Expected one of 1..{folds} or all (experiment "
                f"{config.experiment!r} on {len(self.cases)} cases and "
                f"{len(splits.folder_raters(self.cases))} raters). Received: --fold {config.fold}")
        try:
            self.split = splits.folder_split(config.experiment, config.fold, self.cases,
                                             folds=config.folds,
                                             validation_fraction=config.validation_fraction)
        except ValueError as e:
            raise UsageError(f"--experiment {config.experiment} --fold {config.fold}: {e}") \
                from None

    def split_record(self):
        """The fold's cases by subset, as `config.json` records them: a run
        is only resumed or evaluated on data that gives the same split."""
        return {name: [case for case, _ in getattr(self.split, name)]
                for name in ("train", "val", "test")} | {
            "held_out": list(self.split.held_out) if self.split.experiment == "case"
            else self.split.held_out}

    def by_name(self, subset):
        cases = {c.name: c for c in self.cases}
        return [cases[name] for name, _ in subset], self.split.raters_of(subset)

    def training_foreground(self):
        """(foreground voxels, all voxels) of the training annotations, one
        case in memory at a time."""
        fg = total = 0
        cases, raters = self.by_name(self.split.train)
        for case in cases:
            stack = case.annotation_stack(raters[case.name])
            fg += int(np.count_nonzero(stack))
            total += stack.size
            case.release()
        return fg, total

    def datasets(self, config, targets, initial_epoch=0):
        """`(train, val, steps_per_epoch, validation samples)` of patches
        (`cm_dataset.patches`): one training epoch is `steps_per_epoch`
        batches (default: one sample per training (case, rater) pair, or
        per case for a consensus target); validation is one fixed patch per
        pair (or case) of the validation cases, or `validation_steps`
        batches of fixed patches."""
        from cm_dataset import patches

        common = dict(patch_size=self.size, batch_size=config.batch_size, seed=config.seed,
                      targets=targets, label=config.target,
                      intensity=self.preprocessing["intensity"],
                      window=self.preprocessing["window"], input_encoding=config.input_encoding,
                      resample=config.resample)
        cases, raters = self.by_name(self.split.train)
        per_pass = sum(len(r) for r in raters.values()) if config.target == "each" \
            else len(cases)
        steps = config.steps_per_epoch or max(1, per_pass // config.batch_size)
        try:
            train = patches.make_patch_dataset(
                cases, raters, subset="train", augment=config.augment is not None,
                samples_per_epoch=steps * config.batch_size, **common)
            val_cases, val_raters = self.by_name(self.split.val)
            n_val = (config.validation_steps or 0) * config.batch_size or None
            val = patches.make_patch_dataset(val_cases, val_raters, subset="val",
                                             augment=False, samples_per_epoch=n_val, **common)
        except ValueError as e:
            raise UsageError(f"--data {config.data}: {e}") from None
        train = train.repeat()
        if initial_epoch:
            train = train.skip(initial_epoch * steps)
        n_val = n_val or (sum(len(r) for r in val_raters.values()) if config.target == "each"
                          else len(val_cases))
        return train, val, steps, n_val


def _load_data(config):
    import cm_dataset

    if config.experiment in registry.FOLDER_EXPERIMENTS:
        return FolderData(config)
    given = [flag for flag, value, default in (
        ("--folds", config.folds, None), ("--patch-size", config.patch_size, 64),
        ("--window", config.window, None), ("--resample", config.resample, None),
        ("--spacing", config.spacing, None)) if value != default]
    if config.intensity not in (None, "labels"):
        given.insert(0, "--intensity")
    if given:
        raise UsageError(f"Invalid options for --experiment {config.experiment}: "
                         f"{', '.join(given)} apply to a folder of cases (--experiment case "
                         "or rater); the CM files are whole 64^3 label maps.")
    try:
        return cm_dataset.load(config.data)
    except ValueError as e:
        raise UsageError(f"--data {config.data}: {e}") from None


def data_folds(config):
    """The folds of `config.experiment` on `config.data` (reads the data)."""
    data = _load_data(config)
    if isinstance(data, FolderData):
        return tuple(range(1, data.n_folds(config) + 1))
    return registry.valid_folds(config.experiment, data.n_bones, data.n_surgeons)


def _check_fold(config, data):
    if isinstance(data, FolderData):
        return data.set_fold(config)
    if config.experiment not in registry.EXPERIMENTS:
        raise UsageError(
            f"Invalid value for --experiment. Expected one of "
            f"{', '.join(registry.EXPERIMENTS + registry.FOLDER_EXPERIMENTS)}. "
            f"Received: --experiment {config.experiment}")
    folds = registry.valid_folds(config.experiment, data.n_bones, data.n_surgeons)
    if config.fold not in folds:
        raise UsageError(
            f"Invalid value for --fold. Expected one of {', '.join(map(str, folds))} "
            f"or all (experiment {config.experiment!r} on data with {data.n_bones} "
            f"bones and {data.n_surgeons} surgeons). Received: --fold {config.fold}"
        )


def _training_labels(data, config):
    """The annotations the fold trains on (for the WCEL class weight)."""
    import cm_dataset

    split = cm_dataset.get_split(
        registry.EXPERIMENT_NUMBERS[config.experiment], config.fold, data.n_bones,
        data.n_surgeons,
    )
    return data.y[split.train_indices]


def _datasets(data, config, targets, initial_epoch=0):
    """Training and validation data of the fold.

    Training is one endless stream (the seeded, reshuffled and re-augmented
    passes over the training pairs, one after the other) that Keras cuts
    into epochs of `steps_per_epoch` batches (default: one pass); a run
    resumed after `initial_epoch` epochs skips the batches those consumed,
    so it continues the stream where the uninterrupted run would be.
    Validation is the same finite set of batches every epoch, so validation
    losses compare across epochs.

    Returns:
        `(train, val, steps_per_epoch)`.
    """
    if isinstance(data, FolderData):
        train, val, steps, n_val = data.datasets(config, targets, initial_epoch)
    else:
        train, val, steps, n_val = _cm_datasets(data, config, targets, initial_epoch)
    if config.distribute:
        # Every replica needs a non-empty share of every batch, so the last,
        # short validation batch is filled up by cycling through the
        # validation samples again (at most batch_size - 1 repeated samples).
        n_batches = config.validation_steps or -(-n_val // config.batch_size)
        val = (val.unbatch().repeat().take(n_batches * config.batch_size)
               .batch(config.batch_size, drop_remainder=True))
    elif config.validation_steps:
        val = val.repeat().take(config.validation_steps)
    return train, val, steps


def _cm_datasets(data, config, targets, initial_epoch):
    import cm_dataset

    common = dict(
        batch_size=config.batch_size,
        seed=config.seed,
        targets=targets,
        input_encoding=config.input_encoding,
        validation_fraction=config.validation_fraction,
        label=config.target,
    )
    experiment = registry.EXPERIMENT_NUMBERS[config.experiment]
    split = cm_dataset.get_split(experiment, config.fold, data.n_bones, data.n_surgeons)
    n_train, n_val = (len(p) for p in split.train_val(config.validation_fraction))
    train = cm_dataset.make_dataset(
        data, experiment, config.fold, subset="train", augment=config.augment, **common
    )
    per_pass = int(train.cardinality())
    if per_pass < 1:
        raise UsageError(
            f"Invalid value for --batch-size. Expected at most the {n_train} training pairs "
            f"of {config.experiment} fold {config.fold} (batches drop the remainder). "
            f"Received: --batch-size {config.batch_size}"
        )
    steps = config.steps_per_epoch or per_pass
    train = train.repeat()
    if initial_epoch:
        train = train.skip(initial_epoch * steps)
    val = cm_dataset.make_dataset(
        data, experiment, config.fold, subset="val", augment=None, **common
    )
    return train, val, steps, n_val


def _build_model(config, data):
    import models3d

    if isinstance(data, FolderData):
        size, channels = data.size, data.input_channels
    else:
        size, channels = data.size, 14 if config.input_encoding == "onehot" else 1
    kwargs = dict(
        input_shape=(size, size, size, channels),
        n_labels=1,
        n_base_filters=config.base_filters,
        activation="sigmoid",
    )
    if config.model != "myronenko2018":
        kwargs.update(depth=config.depth, dropout_rate=config.dropout)
    if config.deep_supervision:
        kwargs.update(deep_supervision=True)
    return models3d.get(config.model, **kwargs)


def train(config, out, overwrite=False, callbacks=(), log=print):
    """Train one fold into the run directory `out`, resuming if possible.

    Args:
        config: `TrainConfig`.
        out: the run directory (created).
        overwrite: bool, start afresh even over a finished run. Defaults to
            `False`: a finished run is left untouched.
        callbacks: extra Keras callbacks, run after the checkpoint.
        log: function taking one message string. Defaults to `print`.

    Returns:
        `"finished"` (left untouched), `"trained"` or `"resumed"`.

    Raises:
        UsageError: bad names, folds, data, or a run directory holding a
            different run. Raised before anything is written.
    """
    import keras_seglosses  # noqa: F401  (registers the losses for loading)
    import models3d  # noqa: F401  (registers the layers for loading)

    if config.model not in registry.MODELS:
        raise UsageError(
            f"Invalid value for --model. Expected one of {', '.join(registry.MODELS)}. "
            f"Received: --model {config.model}"
        )
    if config.target not in TARGETS:
        raise UsageError(
            f"Invalid value for --target. Expected one of {', '.join(TARGETS)}. "
            f"Received: --target {config.target}"
        )
    if config.deep_supervision and config.model != "isensee2017":
        raise UsageError(
            "Invalid value for --deep-supervision. Expected --model isensee2017 (the "
            f"architecture with per-level outputs). Received: --model {config.model}"
        )
    if config.lr_schedule not in LR_SCHEDULES:
        raise UsageError(
            f"Invalid value for --lr-schedule. Expected one of {', '.join(LR_SCHEDULES)}. "
            f"Received: --lr-schedule {config.lr_schedule}"
        )
    try:
        # checked before any data is read; built again below with the fold's
        # class weight where the loss takes one
        targets = registry.loss_targets(registry.make_loss(config.loss, config.loss_config))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.experiment in registry.FOLDER_EXPERIMENTS and targets == "legacy":
        raise UsageError(f"--loss {config.loss}: the legacy target encodes the CM files' "
                         "surgeries; a folder of cases trains losses reading labels or the "
                         "reward-penalty map.")
    if config.target != "each" and targets == "legacy":
        raise UsageError("--target: the legacy target encodes each surgery; use --target each "
                         f"with --loss {config.loss}.")
    data = _load_data(config)
    _check_fold(config, data)
    config_path = os.path.join(out, CONFIG)
    if not overwrite and os.path.isfile(config_path):
        try:
            saved = _io.read_json(config_path)
        except ValueError as e:
            raise UsageError(f"{config_path}: unreadable ({e}). Pass --overwrite to replace "
                             "the run, or choose another --out.") from None
        diff = _differences(saved, config.to_json())
        finished = run_is_finished(out)
        if diff:
            raise UsageError(
                f"{out} holds {'a finished' if finished else 'an unfinished'} run with "
                f"other settings ({'; '.join(diff)}). Run its own command to "
                f"{'keep' if finished else 'resume'} it, pass --overwrite to replace it, "
                "or choose another --out."
            )
        if isinstance(data, FolderData) and saved.get("split", data.split_record()) != \
                data.split_record():
            raise UsageError(
                f"{out} holds a run of other cases: --data {config.data} now splits fold "
                f"{config.fold} differently (cases added, removed or renamed since). Pass "
                "--overwrite to replace the run, or choose another --out.")
        if finished:
            log(f"{out}: finished run, left untouched (pass --overwrite to train it again).")
            return "finished"
    scope, n_devices = _distribution(config)
    if config.batch_size % n_devices:
        raise UsageError(
            f"--batch-size {config.batch_size} must be a multiple of the {n_devices} "
            "devices --distribute trains on."
        )
    state_path = os.path.join(out, STATE)
    state = None
    if not overwrite and os.path.isfile(state_path):
        state = _io.read_json(state_path)
    epoch = state["epoch"] if state else 0
    # First: the pipeline's shuffles and draws depend on TensorFlow's global
    # seed as well as on their own.
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        make_deterministic()
    datasets = None
    if epoch < config.epochs and not (state and state.get("stop_training")):
        datasets = _datasets(data, config, targets, epoch)  # checks --batch-size
    pos_weight = None
    if registry.takes_pos_weight(config.loss) and "pos_weight" not in config.loss_config:
        from keras_seglosses import pos_weight_from_labels

        if isinstance(data, FolderData):
            fg, total = data.training_foreground()
            if not fg:
                raise UsageError(f"--loss {config.loss}: the training annotations of fold "
                                 f"{config.fold} have no foreground voxel, so the class weight "
                                 "is undefined. Pass --loss-config '{\"pos_weight\": W}'.")
            pos_weight = (total - fg) / fg
        else:
            pos_weight = pos_weight_from_labels(_training_labels(data, config))
    model = None
    if not epoch:
        with scope:
            try:
                model = _build_model(config, data)
            except ValueError as e:  # settings the architecture refuses
                raise UsageError(f"--model {config.model}: {e}") from None
            loss = registry.make_loss(config.loss, config.loss_config, pos_weight=pos_weight)
            losses = {"loss": loss}
            if config.deep_supervision:
                from keras_seglosses import DeepSupervision

                losses = DeepSupervision(loss).compile_arguments(len(model.outputs))
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.lr), **losses)
        state = {"epoch": 0, "history": [], "finished": False}

    # Everything checked: from here on the run directory is written.
    if overwrite and os.path.isdir(out):
        _clear_run(out)
    os.makedirs(out, exist_ok=True)
    _remove_stale_temporaries(out)
    recorded = {**config.to_json(), "backend": keras.backend.backend(), "pos_weight": pos_weight}
    if isinstance(data, FolderData):
        recorded["preprocessing"] = data.preprocessing
        recorded["split"] = data.split_record()
    _io.write_json(config_path, recorded)
    if config.distribute:
        engine = "DataParallel" if keras.backend.backend() == "jax" else "MirroredStrategy"
        log(f"{out}: {engine} over {n_devices} devices")
    if model is None:
        with scope:
            model = keras.models.load_model(_checkpoint_path(out, epoch))
            seeds = _seed_states(model)
            if len(seeds) == len(state.get("seed_states", ())):
                for v, value in zip(seeds, state["seed_states"]):
                    v.assign(np.asarray(value, v.dtype).reshape(v.shape))
        _refresh_derived(out, state)
        log(f"{out}: resuming after epoch {epoch} of {config.epochs}.")
    status = "resumed" if state["epoch"] else "trained"
    state["pos_weight"] = pos_weight
    if datasets is not None:
        train_ds, val_ds, steps = datasets
        if len(model.outputs) > 1:
            # deep supervision: the full-resolution target once per output,
            # which each output's loss reduces to its resolution
            n = len(model.outputs)
            train_ds, val_ds = (d.map(lambda x, y: (x, (y,) * n)) for d in (train_ds, val_ds))
        if keras.backend.backend() != "tensorflow":
            # Each iterator of a tf.data pipeline reshuffles afresh, and
            # Keras on JAX and torch opens an extra one (to build the model
            # symbolically) in a way that differs between a fresh and a
            # resumed run. Handing over one iterator, as a generator, keeps
            # the stream exactly as planned; these backends convert every
            # batch to NumPy anyway.
            train_ds = (batch for batch in train_ds.as_numpy_iterator())
        schedule = {
            "early_stop": keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.stop_patience
            )
        }
        if config.lr_schedule == "plateau":
            schedule["reduce_lr"] = keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience
            )
        else:
            schedule["cosine"] = keras.callbacks.LearningRateScheduler(
                lambda epoch: cosine_learning_rate(config.lr, epoch, config.epochs)
            )
        checkpoint = RunCheckpoint(out, state, {k: v for k, v in schedule.items()
                                                if k in _COUNTERS})
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=state["epoch"],
            steps_per_epoch=steps,
            callbacks=[*schedule.values(), checkpoint, *callbacks],
            verbose=config.verbose,
            shuffle=False,  # the pipeline shuffles, reproducibly
        )
    if not state.get("best_epoch"):
        raise RuntimeError(
            f"{out}: no epoch produced a finite validation loss; model.keras not written."
        )
    state["finished"] = True
    _io.write_json(state_path, state)
    shutil.rmtree(os.path.join(out, RESUME_DIR), ignore_errors=True)
    log(
        f"{out}: done after epoch {state['epoch']}; best validation loss "
        f"{state['best_value']:.4f} at epoch {state['best_epoch']} -> {MODEL}"
    )
    return status
