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
the history and none is lost. The counters of `ReduceLROnPlateau` and
`EarlyStopping` (wait, best, cooldown) and the learning rate are restored
too, so the schedule continues as if uninterrupted.
"""

import dataclasses
import glob
import math
import os
import shutil

import keras

from scripts import _io, registry

__all__ = ["TrainConfig", "UsageError", "train", "train_folds", "run_is_finished"]

STATE = "state.json"
CONFIG = "config.json"
HISTORY = "history.csv"
MODEL = "model.keras"
RESUME_DIR = ".resume"
# Settings that may change between a run and its resumption without changing
# what is computed.
_RESUMABLE_CHANGES = ("distribute", "verbose", "backend")


class UsageError(Exception):
    """A bad command-line value; the command line exits with status 2."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one training run (stored as `config.json`).

    Defaults are the paper's [000, Sec. V] except `batch_size` (16 here, the
    paper's Myronenko18 setting, 64 for the other models on V100 GPUs).
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
    verbose: str = "auto"

    def to_json(self):
        return dataclasses.asdict(self)


def run_is_finished(rundir):
    """True when `rundir` holds a completed run."""
    path = os.path.join(rundir, STATE)
    return os.path.isfile(path) and bool(_io.read_json(path).get("finished"))


def _differences(old, new):
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k)
    ]


def _clear_run(rundir):
    """Remove exactly the files a run writes (never anything else)."""
    for name in (STATE, CONFIG, HISTORY, MODEL):
        path = os.path.join(rundir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(rundir, RESUME_DIR), ignore_errors=True)


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


class RunCheckpoint(keras.callbacks.Callback):
    """Commits one epoch: checkpoint, then `state.json`, then derived files.

    Must come after `ReduceLROnPlateau` and `EarlyStopping` in the callback
    list, so that their counters for the epoch are final when saved, and it
    restores those counters in `on_train_begin` (after theirs reset them).
    """

    def __init__(self, rundir, state, reduce_lr, early_stop, monitor="val_loss"):
        super().__init__()
        self.rundir = rundir
        self.state = state
        self.reduce_lr = reduce_lr
        self.early_stop = early_stop
        self.monitor = monitor

    def on_train_begin(self, logs=None):
        saved = self.state.get("callbacks")
        if saved:
            for attr, value in saved["reduce_lr"].items():
                setattr(self.reduce_lr, attr, value)
            for attr, value in saved["early_stop"].items():
                setattr(self.early_stop, attr, value)
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
        current = row.get(self.monitor, math.nan)
        best_value = self.state.get("best_value")
        improved = not math.isnan(current) and (best_value is None or current < best_value)
        state = dict(self.state)
        state.update(
            epoch=done,
            history=self.state["history"] + [row],
            learning_rate=lr,
            stop_training=bool(self.model.stop_training),
            callbacks={
                "reduce_lr": {
                    "wait": int(self.reduce_lr.wait),
                    "best": float(self.reduce_lr.best),
                    "cooldown_counter": int(self.reduce_lr.cooldown_counter),
                },
                "early_stop": {
                    "wait": int(self.early_stop.wait),
                    "best": float(self.early_stop.best),
                    "best_epoch": int(self.early_stop.best_epoch),
                    "stopped_epoch": int(self.early_stop.stopped_epoch),
                },
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


def _load_data(path):
    import cm_dataset

    try:
        return cm_dataset.load(path)
    except ValueError as e:
        raise UsageError(f"--data {path}: {e}") from None


def _check_fold(config, data):
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


def _datasets(data, config, targets):
    import cm_dataset

    common = dict(
        batch_size=config.batch_size,
        seed=config.seed,
        targets=targets,
        input_encoding=config.input_encoding,
        validation_fraction=config.validation_fraction,
    )
    experiment = registry.EXPERIMENT_NUMBERS[config.experiment]
    train = cm_dataset.make_dataset(
        data, experiment, config.fold, subset="train", augment=config.augment, **common
    )
    val = cm_dataset.make_dataset(
        data, experiment, config.fold, subset="val", augment=None, **common
    )
    validation_steps = config.validation_steps
    if config.steps_per_epoch:
        train = train.repeat()
    if config.distribute:
        # Every replica needs a non-empty share of every batch, so the last,
        # short validation batch is filled up by cycling through the
        # validation pairs again (at most batch_size - 1 repeated samples).
        split = cm_dataset.get_split(experiment, config.fold, data.n_bones, data.n_surgeons)
        n_val = len(split.train_val(config.validation_fraction)[1])
        validation_steps = validation_steps or -(-n_val // config.batch_size)
        val = val.unbatch().repeat().batch(config.batch_size, drop_remainder=True)
    elif validation_steps:
        val = val.repeat()
    return train, val, validation_steps


def _build_model(config, size):
    import models3d

    channels = 14 if config.input_encoding == "onehot" else 1
    kwargs = dict(
        input_shape=(size, size, size, channels),
        n_labels=1,
        n_base_filters=config.base_filters,
        activation="sigmoid",
    )
    if config.model != "myronenko2018":
        kwargs.update(depth=config.depth, dropout_rate=config.dropout)
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
        `"finished"`, `"trained"` or `"resumed"`.

    Raises:
        UsageError: bad names, folds, data, or a run directory holding a
            different run.
    """
    import keras_seglosses  # noqa: F401  (registers the losses for loading)
    import models3d  # noqa: F401  (registers the layers for loading)

    if config.model not in registry.MODELS:
        raise UsageError(
            f"Invalid value for --model. Expected one of {', '.join(registry.MODELS)}. "
            f"Received: --model {config.model}"
        )
    try:
        targets = registry.loss_targets(config.loss)
        registry.make_loss(config.loss, **config.loss_config)  # --loss-config checked early
    except ValueError as e:
        raise UsageError(str(e)) from None
    config_path = os.path.join(out, CONFIG)
    if overwrite and os.path.isdir(out):
        _clear_run(out)
    elif run_is_finished(out):
        log(f"{out}: finished run, left untouched (pass --overwrite to train it again).")
        return "finished"
    elif os.path.isfile(config_path):
        diff = _differences(_io.read_json(config_path), config.to_json())
        if diff:
            raise UsageError(
                f"{out} holds an unfinished run with other settings ({'; '.join(diff)}). "
                "Run the same command to resume it, pass --overwrite to replace it, "
                "or choose another --out."
            )
    data = _load_data(config.data)
    _check_fold(config, data)
    os.makedirs(out, exist_ok=True)
    _io.write_json(config_path, {**config.to_json(), "backend": keras.backend.backend()})

    state_path = os.path.join(out, STATE)
    state = _io.read_json(state_path) if os.path.isfile(state_path) else None
    scope, n_devices = _distribution(config)
    if config.distribute:
        engine = "DataParallel" if keras.backend.backend() == "jax" else "MirroredStrategy"
        log(f"{out}: {engine} over {n_devices} devices")
    if config.batch_size % n_devices:
        raise UsageError(
            f"--batch-size {config.batch_size} must be a multiple of the {n_devices} "
            "devices --distribute trains on."
        )
    loss_kwargs = dict(config.loss_config)
    pos_weight = None
    if config.loss == "wcel":
        from keras_seglosses import pos_weight_from_labels

        pos_weight = pos_weight_from_labels(_training_labels(data, config))
    keras.utils.set_random_seed(config.seed)
    with scope:
        if state and state["epoch"] > 0:
            model = keras.models.load_model(_checkpoint_path(out, state["epoch"]))
            _refresh_derived(out, state)
            log(f"{out}: resuming after epoch {state['epoch']} of {config.epochs}.")
        else:
            state = {"epoch": 0, "history": [], "finished": False}
            model = _build_model(config, data.size)
            try:
                loss = registry.make_loss(config.loss, pos_weight=pos_weight, **loss_kwargs)
            except ValueError as e:
                raise UsageError(str(e)) from None
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.lr), loss=loss)
    status = "resumed" if state["epoch"] else "trained"
    state["pos_weight"] = pos_weight
    if state["epoch"] < config.epochs and not state.get("stop_training"):
        train_ds, val_ds, validation_steps = _datasets(data, config, targets)
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience
        )
        early_stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.stop_patience
        )
        checkpoint = RunCheckpoint(out, state, reduce_lr, early_stop)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=state["epoch"],
            steps_per_epoch=config.steps_per_epoch,
            validation_steps=validation_steps,
            callbacks=[reduce_lr, early_stop, checkpoint, *callbacks],
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
