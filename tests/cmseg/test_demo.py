"""`cmseg.demo`: the whole pipeline from nothing, on tiny settings.

To keep the suite fast one of the two runs (dl) is left finished in the
output folder beforehand, as an earlier demo would; the demo must reuse it
untouched and train the other (rpdl) from nothing. Training itself, resuming
included, is tested in test_train.py.
"""

import os

import keras

from cmseg import _io
from cmseg.demo import DEMO_LOSSES, DEMO_SCHEDULE, demo, demo_config


def _finished_run(run, config):
    """What a finished earlier demo run leaves (one epoch, an untrained model)."""
    import models3d

    _io.write_json(os.path.join(run, "config.json"), config.to_json())
    history = [{"epoch": 1, "loss": 0.9, "val_loss": 0.95}]
    _io.write_csv(os.path.join(run, "history.csv"), history)
    _io.write_json(os.path.join(run, "state.json"), {
        "epoch": 1, "finished": True, "history": history, "best_epoch": 1,
        "best_value": 0.95})
    keras.utils.set_random_seed(0)
    models3d.get("unet", input_shape=(16, 16, 16, 1), n_base_filters=2, depth=2).save(
        os.path.join(run, "model.keras"))


def test_demo_from_nothing(tmp_path, capsys):
    out = str(tmp_path / "demo")
    reused = os.path.join(out, "runs", "bone-unet-dl", "fold-1")
    schedule = {**DEMO_SCHEDULE, "epochs": 1, "steps_per_epoch": 1, "batch_size": 2}
    _finished_run(reused, demo_config(os.path.join(out, "data"), "dl", schedule, size=16,
                                      base_filters=2))
    before = {f: os.stat(os.path.join(reused, f)).st_mtime_ns for f in os.listdir(reused)}
    text = demo(out, epochs=1, steps_per_epoch=1, batch_size=2, size=16, n_bones=3,
                n_surgeons=2, base_filters=2)
    assert DEMO_LOSSES == ("dl", "rpdl")
    assert "| Training loss | dl | rpdl |" in text and "| Overall |" in text
    assert text in capsys.readouterr().out  # the table is printed
    assert {f: os.stat(os.path.join(reused, f)).st_mtime_ns for f in os.listdir(reused)} == before
    assert sorted(os.listdir(os.path.join(out, "data"))) == ["x3_2.npy", "y3_2.npy"]
    run = os.path.join(out, "runs", "bone-unet-rpdl", "fold-1")
    config = _io.read_json(os.path.join(run, "config.json"))
    assert (config["experiment"], config["fold"], config["model"], config["loss"]) == (
        "bone", 1, "unet", "rpdl")
    for key in ("lr", "lr_schedule", "augment"):  # the schedule, less what the test shortens
        assert config[key] == DEMO_SCHEDULE[key]
    assert [r["epoch"] for r in _io.read_csv(os.path.join(run, "history.csv"))] == ["1"]
    for name in ("results.md", "results.csv", "training_curves.png", "dice_boxplot.png"):
        assert os.path.isfile(os.path.join(out, "report", name))
    for name in ("region.npy", "probability.npy", "slices.png"):
        assert os.path.isfile(os.path.join(out, "predict", name))
