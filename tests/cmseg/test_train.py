"""`cmseg.train`: the paper's recipe, crash-safe resumption (a resumed
run computes exactly what the uninterrupted one does, after a simulated
kill at every stage of an epoch and after a real SIGKILL), refusal to
overwrite, and data-parallel training on two virtual CPU devices."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from cmseg import _io
from cmseg import train as tr

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from cm_dataset import synthetic

    path = tmp_path_factory.mktemp("cm")
    synthetic.generate(n_bones=3, n_surgeons=2, size=16, seed=0).save(path)
    return str(path)


def tiny(data_dir, **kw):
    settings = dict(data=data_dir, experiment="bone", fold=1, model="unet", loss="rpdl",
                    epochs=3, batch_size=2, steps_per_epoch=1, base_filters=2, depth=2,
                    verbose=0)
    settings.update(kw)
    return tr.TrainConfig(**settings)


class Killed(Exception):
    pass


def _history(run):
    return [
        (int(r["epoch"]), float(r["loss"]), float(r["val_loss"]), float(r["learning_rate"]))
        for r in _io.read_csv(os.path.join(run, tr.HISTORY))
    ]


def _weights(run):
    import keras_seglosses  # noqa: F401  (registered classes)
    import models3d  # noqa: F401

    model = keras.models.load_model(os.path.join(run, tr.MODEL), compile=False)
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _assert_same_run(run, reference):
    got, want = _history(run), _history(reference)
    assert [r[0] for r in got] == [r[0] for r in want]
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5)
    for a, b in zip(_weights(run), _weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    state = _io.read_json(os.path.join(run, tr.STATE))
    assert state["finished"] and state["best_epoch"] == _io.read_json(
        os.path.join(reference, tr.STATE))["best_epoch"]
    assert not os.path.exists(os.path.join(run, tr.RESUME_DIR))
    assert not [f for f in os.listdir(run) if ".tmp" in f]


# Full passes (so the reshuffles matter), random symmetries, dropout, and a
# learning-rate patience of 1 so that the schedule changes within 4 epochs.
EQUIVALENCE = dict(epochs=4, steps_per_epoch=None, lr_patience=1)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("reference") / "run")
    assert tr.train(tiny(data_dir, **EQUIVALENCE), run, log=lambda _: None) == "trained"
    return run


class _DieInEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch:
            raise Killed


def _kill_at(stage, monkeypatch, epoch=3):
    """Make `epoch` die at `stage`; return the extra callbacks to train with."""
    if stage == "training":  # after a weight update of the epoch
        return [_DieInEpoch(epoch)]
    if stage == "saving checkpoint":  # half-way through writing it
        real_save = keras.Model.save

        def save(self, path, *args, **kwargs):
            if f"epoch-{epoch:04d}" in str(path):
                with open(path, "wb") as f:
                    f.write(b"PK\x03\x04 partial")
                raise Killed
            return real_save(self, path, *args, **kwargs)

        monkeypatch.setattr(keras.Model, "save", save)
    elif stage == "committing":  # checkpoint on disk, state not yet replaced
        real_write_json = _io.write_json

        def write_json(path, obj):
            if path.endswith(tr.STATE) and obj.get("epoch") == epoch:
                raise Killed
            real_write_json(path, obj)

        monkeypatch.setattr(_io, "write_json", write_json)
    elif stage == "refreshing derived files":  # state committed, history.csv stale
        real_refresh = tr._refresh_derived

        def refresh(rundir, state):
            if state["epoch"] == epoch:
                raise Killed
            real_refresh(rundir, state)

        monkeypatch.setattr(tr, "_refresh_derived", refresh)
    return []


@pytest.mark.parametrize(
    "stage",
    [
        "training",
        "saving checkpoint",
        # JAX and torch read the pipeline differently (see train.py): once there.
        pytest.param("committing", marks=pytest.mark.backends),
        "refreshing derived files",
    ],
)
def test_resumed_run_equals_uninterrupted_run(data_dir, tmp_path, monkeypatch, uninterrupted,
                                              stage):
    run = str(tmp_path / "run")
    config = tiny(data_dir, **EQUIVALENCE)
    with pytest.raises(Killed):
        tr.train(config, run, callbacks=_kill_at(stage, monkeypatch), log=lambda _: None)
    monkeypatch.undo()
    committed = 3 if stage == "refreshing derived files" else 2
    assert _io.read_json(os.path.join(run, tr.STATE))["epoch"] == committed
    assert tr.train(config, run, log=lambda _: None) == "resumed"
    _assert_same_run(run, uninterrupted)


def test_cosine_schedule_survives_a_kill(data_dir, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    config = tiny(data_dir, lr_schedule="cosine", lr=1e-3, epochs=3)
    with pytest.raises(Killed):
        tr.train(config, run, callbacks=_kill_at("committing", monkeypatch, epoch=2),
                 log=lambda _: None)
    monkeypatch.undo()
    assert tr.train(config, run, log=lambda _: None) == "resumed"
    # lr (1 + cos(pi e / E)) / 2 for epochs e = 0, 1, 2 of E = 3.
    np.testing.assert_allclose([r[3] for r in _history(run)], [1e-3, 7.5e-4, 2.5e-4], rtol=1e-5)
    assert "reduce_lr" not in _io.read_json(os.path.join(run, tr.STATE))["callbacks"]
    with pytest.raises(tr.UsageError, match="plateau, cosine"):
        tr.train(tiny(data_dir, lr_schedule="step"), str(tmp_path / "r"), log=lambda _: None)


@pytest.mark.backends
def test_deterministic_runs_are_identical_across_processes(data_dir, tmp_path):
    """`--deterministic`: two processes running the same command write
    bit-identical histories and weights (dropout, augmentation, shuffles)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=BACKEND,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = [str(tmp_path / f"run{i}") for i in (1, 2)]
    for run in runs:
        subprocess.run(
            [sys.executable, "-m", "cmseg", "train", "--data", data_dir, "--experiment", "bone",
             "--fold", "1", "--out", run, "--epochs", "2", "--batch-size", "2",
             "--base-filters", "2", "--depth", "2", "--deterministic"],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )
    histories = [open(os.path.join(r, tr.HISTORY)).read() for r in runs]
    assert histories[0] == histories[1] and histories[0].count("\n") == 3
    for a, b in zip(*(_weights(r) for r in runs)):
        np.testing.assert_array_equal(a, b)
    assert _io.read_json(os.path.join(runs[0], tr.CONFIG))["deterministic"] is True


def test_sigkill_then_same_command_resumes(data_dir, tmp_path):
    """A real kill: SIGKILL the `cmseg train` process once it has committed
    two epochs, plant what a kill in the middle of a write leaves, rerun the
    same command; the result equals an uninterrupted run of that command."""
    from cmseg.cli import main

    def command(out):
        return ["train", "--data", data_dir, "--experiment", "bone", "--fold", "2",
                "--out", out, "--epochs", "8", "--batch-size", "2", "--base-filters", "2",
                "--depth", "2", "--loss", "dl"]

    run, reference = str(tmp_path / "run"), str(tmp_path / "reference")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "cmseg", *command(run)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_path = os.path.join(run, tr.STATE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if os.path.isfile(state_path) and _io.read_json(state_path)["epoch"] >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    state = _io.read_json(state_path)
    assert 2 <= state["epoch"] < 8 and not state["finished"]
    # What a kill during atomic writes leaves behind, and a user's file.
    for stale in (".history.x1.tmp.csv", ".model.x2.tmp.keras", ".state.x3.tmp.json",
                  os.path.join(tr.RESUME_DIR, ".epoch-0009.x4.tmp.keras")):
        with open(os.path.join(run, stale), "w") as f:
            f.write("partial")
    with open(os.path.join(run, "notes.tmp.txt"), "w") as f:
        f.write("mine")

    assert main(command(run)) == 0
    assert main(command(reference)) == 0
    assert sorted(os.listdir(run)) == sorted(os.listdir(reference) + ["notes.tmp.txt"])
    os.remove(os.path.join(run, "notes.tmp.txt"))
    _assert_same_run(run, reference)


def test_killed_run_resumes_without_losing_or_repeating_epochs(data_dir, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    real_write_json = _io.write_json

    def dies_committing_epoch_2(path, obj):
        # The process dies after epoch 2's checkpoint is on disk but before
        # its state is committed: the worst moment.
        if path.endswith(tr.STATE) and obj.get("epoch") == 2:
            raise Killed
        real_write_json(path, obj)

    monkeypatch.setattr(_io, "write_json", dies_committing_epoch_2)
    with pytest.raises(Killed):
        tr.train(tiny(data_dir), run, log=lambda _: None)
    monkeypatch.setattr(_io, "write_json", real_write_json)

    state = _io.read_json(os.path.join(run, tr.STATE))
    assert state["epoch"] == 1 and not state["finished"]
    assert os.path.exists(os.path.join(run, tr.RESUME_DIR, "epoch-0002.keras"))  # uncommitted
    assert [r["epoch"] for r in _io.read_csv(os.path.join(run, tr.HISTORY))] == ["1"]
    assert os.path.isfile(os.path.join(run, tr.MODEL))

    # Make the restored callback state observable: nothing can improve on
    # -inf, so EarlyStopping (wait 19 of 20) stops after the next epoch and
    # ReduceLROnPlateau (wait 9 of 10) divides the learning rate by 10.
    state["callbacks"]["early_stop"].update(best=-math.inf, wait=19)
    state["callbacks"]["reduce_lr"].update(best=-math.inf, wait=9)
    real_write_json(os.path.join(run, tr.STATE), state)

    status = tr.train(tiny(data_dir), run, log=lambda _: None)
    assert status == "resumed"
    state = _io.read_json(os.path.join(run, tr.STATE))
    history = _io.read_csv(os.path.join(run, tr.HISTORY))
    assert [int(r["epoch"]) for r in history] == [1, 2]  # contiguous, epoch 1 not redone
    assert [int(r["epoch"]) for r in state["history"]] == [1, 2]
    assert state["finished"] and state["stop_training"]
    assert state["learning_rate"] == pytest.approx(1e-5, rel=1e-4)
    assert float(history[0]["learning_rate"]) == pytest.approx(1e-4, rel=1e-4)
    val = [float(r["val_loss"]) for r in history]
    assert state["best_epoch"] == 1 + int(np.argmin(val))
    assert not os.path.exists(os.path.join(run, tr.RESUME_DIR))
    assert not [f for f in os.listdir(run) if ".tmp" in f]

    import keras_seglosses  # noqa: F401  (registered classes)

    model = keras.models.load_model(os.path.join(run, tr.MODEL))
    assert model.output_shape == (None, 16, 16, 16, 1)
    config = _io.read_json(os.path.join(run, tr.CONFIG))
    assert config["loss"] == "rpdl" and config["lr"] == 1e-4 and config["fold"] == 1

    # A finished run is left untouched.
    before = {f: os.stat(os.path.join(run, f)).st_mtime_ns for f in os.listdir(run)}
    assert tr.train(tiny(data_dir), run, log=lambda _: None) == "finished"
    assert {f: os.stat(os.path.join(run, f)).st_mtime_ns for f in os.listdir(run)} == before


def test_paper_recipe_defaults():
    c = tr.TrainConfig(data="d", experiment="bone", fold=1)
    assert (c.lr, c.lr_factor, c.lr_patience, c.stop_patience, c.epochs) == (1e-4, 0.1, 10, 20, 200)
    assert c.validation_fraction == 0.1


def test_unfinished_run_with_other_settings_is_refused(data_dir, tmp_path):
    run = tmp_path / "run"
    _io.write_json(run / tr.CONFIG, tiny(data_dir, loss="dl").to_json())
    message = "unfinished run with other settings.*loss: 'dl' -> 'rpdl'"
    with pytest.raises(tr.UsageError, match=message):
        tr.train(tiny(data_dir), str(run), log=lambda _: None)


def test_finished_run_kept_refused_or_overwritten(data_dir, tmp_path, capsys):
    """Same command: left untouched; other settings: exit 2, untouched;
    --overwrite: trained again from nothing."""
    from cmseg.cli import main

    run = str(tmp_path / "run")
    command = ["train", "--data", data_dir, "--experiment", "bone", "--fold", "3", "--out", run,
               "--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "1",
               "--base-filters", "2", "--depth", "2"]
    assert main(command) == 0
    (tmp_path / "run" / "notes.txt").write_text("mine")

    def snapshot():
        return {f: os.stat(os.path.join(run, f)).st_mtime_ns for f in os.listdir(run)}

    before = snapshot()
    capsys.readouterr()
    assert main(command) == 0
    assert "finished run, left untouched" in capsys.readouterr().out
    assert main([*command[:-4], "--base-filters", "4", "--depth", "2"]) == 2
    assert "finished run with other settings (base_filters: 2 -> 4)" in capsys.readouterr().err
    assert snapshot() == before
    bad = [str(tmp_path / "missing") if a == data_dir else a for a in command]
    assert main([*bad, "--overwrite"]) == 2  # checked before anything is removed
    assert snapshot() == before
    assert main([*command, "--overwrite"]) == 0
    after = snapshot()
    assert after["notes.txt"] == before["notes.txt"]
    assert all(after[f] != before[f] for f in (tr.CONFIG, tr.HISTORY, tr.MODEL, tr.STATE))
    assert [r["epoch"] for r in _io.read_csv(os.path.join(run, tr.HISTORY))] == ["1"]


@pytest.mark.parametrize("loss", ["wcel", "weighted_binary_crossentropy"])
def test_class_weight_is_the_fold_ratio_under_every_name(data_dir, tmp_path, loss):
    """[000, Eq. 1]: the weight is the background to foreground ratio of the
    fold's training annotations, whichever name selects the loss; recorded
    in config.json and compiled into the model."""
    from cm_dataset import get_split, load

    data = load(data_dir)
    split = get_split(1, 1, data.n_bones, data.n_surgeons)
    y = data.y[split.train_indices]
    want = float((y == 0).sum() / (y == 1).sum())
    run = str(tmp_path / "run")
    tr.train(tiny(data_dir, loss=loss, epochs=1), run, log=lambda _: None)
    assert _io.read_json(os.path.join(run, tr.CONFIG))["pos_weight"] == pytest.approx(want)
    import keras_seglosses  # noqa: F401  (registered classes)
    import models3d  # noqa: F401

    model = keras.models.load_model(os.path.join(run, tr.MODEL))
    assert model.loss.pos_weight == pytest.approx(want)
    # an explicit --loss-config weight wins and is what the config records
    run = str(tmp_path / "explicit")
    tr.train(tiny(data_dir, loss=loss, epochs=1, loss_config={"pos_weight": 3.0}), run,
             log=lambda _: None)
    saved = _io.read_json(os.path.join(run, tr.CONFIG))
    assert saved["pos_weight"] is None and saved["loss_config"] == {"pos_weight": 3.0}


def test_bad_values_are_usage_errors(data_dir, tmp_path):
    with pytest.raises(tr.UsageError, match="Expected one of 1, 2, 3"):
        tr.train(tiny(data_dir, fold=4), str(tmp_path / "r"), log=lambda _: None)
    with pytest.raises(tr.UsageError, match="unet, vnet"):
        tr.train(tiny(data_dir, model="resnet"), str(tmp_path / "r"), log=lambda _: None)
    with pytest.raises(tr.UsageError, match="rpdl"):
        tr.train(tiny(data_dir, loss="nope"), str(tmp_path / "r"), log=lambda _: None)
    with pytest.raises(tr.UsageError, match="Accepted arguments"):
        tr.train(tiny(data_dir, loss_config={"smoothing": 1}), str(tmp_path / "r"),
                 log=lambda _: None)
    with pytest.raises(tr.UsageError, match="--data"):
        tr.train(tiny(str(tmp_path / "missing")), str(tmp_path / "r"), log=lambda _: None)
    with pytest.raises(tr.UsageError, match="--model isensee2017: .*n_segmentation_levels"):
        tr.train(tiny(data_dir, model="isensee2017"), str(tmp_path / "r"), log=lambda _: None)
    # Fold 1 trains on 3 pairs (1 of the 4 validates): a batch of 4 is empty.
    with pytest.raises(tr.UsageError, match="at most the 3 training pairs"):
        tr.train(tiny(data_dir, batch_size=4), str(tmp_path / "r"), log=lambda _: None)
    assert not os.path.exists(tmp_path / "r")  # nothing written for a refused run


def test_clear_run_removes_only_run_files(tmp_path):
    for name in (tr.CONFIG, tr.HISTORY, tr.MODEL, tr.STATE, "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / tr.RESUME_DIR).mkdir()
    tr._clear_run(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


_TF_TWO_CPUS = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cmseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["cm", "folder"])
def test_distribute_on_two_virtual_devices(request, tmp_path, capsys, kind):
    """JAX: DataParallel over 2 XLA host devices; TensorFlow: MirroredStrategy
    over 2 logical CPUs (each in a fresh process, the device count is fixed at
    start-up); torch: a clear refusal. On the CM files and on a folder of
    cases (3 validation patches in batches of 2: the short one is filled)."""
    run = str(tmp_path / "run")
    if kind == "cm":
        data = ["--data", request.getfixturevalue("data_dir"), "--experiment", "surgeon",
                "--fold", "2"]
    else:
        data = ["--data", request.getfixturevalue("folder_dir"), "--experiment", "case",
                "--fold", "1", "--patch-size", "16"]
    args = ["train", *data, "--out", run, "--epochs", "1", "--batch-size", "2",
            "--steps-per-epoch", "1", "--base-filters", "2", "--depth", "2", "--distribute"]
    if BACKEND == "torch":
        from cmseg.cli import main

        assert main(args) == 2
        assert "--distribute is not available on the torch backend" in capsys.readouterr().err
        assert not os.path.exists(os.path.join(run, tr.HISTORY))
        return
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if BACKEND == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        cmd = [sys.executable, "-m", "cmseg", *args]
    else:
        cmd = [sys.executable, "-c", _TF_TWO_CPUS, *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    engine = "DataParallel" if BACKEND == "jax" else "MirroredStrategy"
    assert f"{engine} over 2 devices" in proc.stdout
    history = _io.read_csv(os.path.join(run, tr.HISTORY))
    assert [r["epoch"] for r in history] == ["1"] and math.isfinite(float(history[0]["loss"]))
    assert json.load(open(os.path.join(run, tr.CONFIG)))["distribute"] is True


def test_consensus_target_trains_one_pair_per_input(data_dir, tmp_path):
    """`--target soft`: a soft-label Dice run on one pair per training input;
    a legacy loss refuses it before anything is written."""
    run = str(tmp_path / "soft")
    tr.train(tiny(data_dir, epochs=1, loss="dl", loss_config={"soft_label": True},
                  target="soft", steps_per_epoch=None, batch_size=1), run, log=lambda _: None)
    saved = _io.read_json(os.path.join(run, tr.CONFIG))
    assert saved["target"] == "soft" and len(_history(run)) == 1
    with pytest.raises(tr.UsageError, match="--target"):
        tr.train(tiny(data_dir, loss="legacy_reward_penalty_dice", target="staple"),
                 str(tmp_path / "legacy"), log=lambda _: None)
    with pytest.raises(tr.UsageError, match="Expected one of each, soft"):
        tr.train(tiny(data_dir, target="vote"), str(tmp_path / "bad"), log=lambda _: None)
    # an unknown loss is a usage error with a consensus target too
    with pytest.raises(tr.UsageError, match="Expected one of wcel, dl, rpdl"):
        tr.train(tiny(data_dir, loss="nope", target="soft"), str(tmp_path / "bad"),
                 log=lambda _: None)
    assert not os.path.exists(tmp_path / "legacy") and not os.path.exists(tmp_path / "bad")


def test_deep_supervision_trains_isensee_and_predicts_full_resolution(data_dir, tmp_path):
    """`--deep-supervision`: isensee2017 with its three outputs, each on the
    target at its resolution; the saved model keeps them, evaluation and
    prediction read the full-resolution one."""
    from cmseg.evaluate import evaluate
    from cmseg.predict import load_model

    run = str(tmp_path / "ds")
    tr.train(tiny(data_dir, model="isensee2017", depth=4, epochs=1, deep_supervision=True), run,
             log=lambda _: None)
    saved = keras.models.load_model(os.path.join(run, tr.MODEL), compile=False)
    assert [tuple(o.shape)[1:4] for o in saved.outputs] == [(16,) * 3, (8,) * 3, (4,) * 3]
    model = load_model(os.path.join(run, tr.MODEL))
    assert len(model.outputs) == 1 and tuple(model.output_shape) == (None, 16, 16, 16, 1)
    text = evaluate(data_dir, [run], str(tmp_path / "report"), metrics=["dice"],
                    log=lambda _: None)
    assert "isensee2017" in text
    with pytest.raises(tr.UsageError, match="--deep-supervision. Expected --model isensee2017"):
        tr.train(tiny(data_dir, deep_supervision=True), str(tmp_path / "unet"),
                 log=lambda _: None)
    assert not os.path.exists(tmp_path / "unet")


# A folder of cases (`--experiment case|rater`): patches of any-size cases.
@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory):
    from _references import write_case_folder

    path = tmp_path_factory.mktemp("folder")
    write_case_folder(str(path))
    return str(path)


def folder_run(folder_dir, **kw):
    return tiny(folder_dir, **{"experiment": "case", "patch_size": 16, **kw})


@pytest.mark.backends
def test_folder_run_records_its_preprocessing_and_resumes_exactly(folder_dir, tmp_path,
                                                                  monkeypatch):
    reference = str(tmp_path / "reference")
    config = folder_run(folder_dir, experiment="rater", fold=3, epochs=3, window=[-500, 1000])
    assert tr.train(config, reference, log=lambda _: None) == "trained"
    saved = _io.read_json(os.path.join(reference, tr.CONFIG))
    assert saved["preprocessing"] == {
        "intensity": "ct", "window": [-500, 1000], "input_encoding": "scaled", "channels": 1,
        "input_channels": 1, "patch_size": 16, "resample": None, "spacing": None}
    assert saved["split"] == {"train": ["case01", "case02"], "val": ["case03"],
                              "test": ["case02", "case03"], "held_out": "r3"}
    import keras_seglosses  # noqa: F401  (registered classes)

    model = keras.models.load_model(os.path.join(reference, tr.MODEL), compile=False)
    assert tuple(model.input_shape) == (None, 16, 16, 16, 1)
    # killed in epoch 3, the same call resumes it and ends where the uninterrupted run did
    run = str(tmp_path / "run")
    with pytest.raises(Killed):
        tr.train(config, run, callbacks=_kill_at("training", monkeypatch), log=lambda _: None)
    monkeypatch.undo()
    assert tr.train(config, run, log=lambda _: None) == "resumed"
    _assert_same_run(run, reference)
    assert tr.train(config, run, log=lambda _: None) == "finished"


def test_folder_wcel_weight_comes_from_the_training_raters(folder_dir, tmp_path):
    from _references import write_case_folder

    from cm_dataset import splits

    run = str(tmp_path / "run")
    config = folder_run(folder_dir, loss="wcel", fold=2, epochs=1)
    assert tr.train(config, run, log=lambda _: None) == "trained"
    written = write_case_folder(str(tmp_path / "copy"))
    split = splits.folder_split("case", 2, [(n, tuple(f"r{i + 1}" for i in range(len(m))))
                                            for n, (_, m) in written.items()])
    labels = np.concatenate([np.stack(written[n][1])[[int(r[1:]) - 1 for r in raters]].ravel()
                             for n, raters in split.train])
    fg = labels.sum()
    assert _io.read_json(os.path.join(run, tr.CONFIG))["pos_weight"] == pytest.approx(
        (labels.size - fg) / fg)


@pytest.mark.parametrize("kw, message", [
    (dict(fold=4), r"Expected one of 1\.\.3"),
    (dict(experiment="rater", fold=4), r"Expected one of 1\.\.3"),
    (dict(folds=5), "folds"),
    (dict(intensity="labels"), "labels"),
    (dict(experiment="bone"), "--patch-size apply to a folder of cases"),
    (dict(augment="all48"), "random or none"),
])
def test_folder_run_refusals_write_nothing(folder_dir, tmp_path, kw, message):
    run = str(tmp_path / "run")
    with pytest.raises(tr.UsageError, match=message):
        tr.train(folder_run(folder_dir, **kw), run, log=lambda _: None)
    assert not os.path.exists(run)


def test_folder_run_of_other_cases_is_not_resumed(folder_dir, tmp_path):
    """A case added to the folder changes the split: the run is refused."""
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(folder_dir, data)
    run = str(tmp_path / "run")
    config = folder_run(data, epochs=1)
    assert tr.train(config, run, log=lambda _: None) == "trained"
    shutil.copytree(os.path.join(data, "case01"), os.path.join(data, "case00"))
    before = sorted(os.listdir(run))
    with pytest.raises(tr.UsageError, match="splits fold 1 differently"):
        tr.train(config, run, log=lambda _: None)
    assert sorted(os.listdir(run)) == before


def test_folder_folds(folder_dir):
    assert tr.data_folds(folder_run(folder_dir)) == (1, 2, 3)
    assert tr.data_folds(folder_run(folder_dir, folds=2)) == (1, 2)
    assert tr.data_folds(folder_run(folder_dir, experiment="rater")) == (1, 2, 3)
