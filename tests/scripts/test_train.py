"""`scripts.train`: the paper's recipe, crash-safe resumption, refusal to
overwrite, and data-parallel training on two virtual CPU devices."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from scripts import _io
from scripts import train as tr

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
    with pytest.raises(tr.UsageError, match="loss: 'dl' -> 'rpdl'"):
        tr.train(tiny(data_dir), str(run), log=lambda _: None)


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
from scripts.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.backends
def test_distribute_on_two_virtual_devices(data_dir, tmp_path, capsys):
    """JAX: DataParallel over 2 XLA host devices; TensorFlow: MirroredStrategy
    over 2 logical CPUs (each in a fresh process, the device count is fixed at
    start-up); torch: a clear refusal."""
    run = str(tmp_path / "run")
    args = ["train", "--data", data_dir, "--experiment", "surgeon", "--fold", "2",
            "--out", run, "--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "1",
            "--base-filters", "2", "--depth", "2", "--distribute"]
    if BACKEND == "torch":
        from scripts.cli import main

        assert main(args) == 2
        assert "--distribute is not available on the torch backend" in capsys.readouterr().err
        assert not os.path.exists(os.path.join(run, tr.HISTORY))
        return
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if BACKEND == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        cmd = [sys.executable, "-m", "scripts", *args]
    else:
        cmd = [sys.executable, "-c", _TF_TWO_CPUS, *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    engine = "DataParallel" if BACKEND == "jax" else "MirroredStrategy"
    assert f"{engine} over 2 devices" in proc.stdout
    history = _io.read_csv(os.path.join(run, tr.HISTORY))
    assert [r["epoch"] for r in history] == ["1"] and math.isfinite(float(history[0]["loss"]))
    assert json.load(open(os.path.join(run, tr.CONFIG)))["distribute"] is True
