"""`cmseg demo` (`make demo`): the whole pipeline from nothing, in minutes.

1. synthesize the CM data set (9 bones x 7 surgeons, 64^3) into OUT/data;
2. train Experiment 1 fold 1 (bone 1 held out) with U-Net under the Dice
   loss (`dl`) and the reward-penalty Dice loss (`rpdl`), a short schedule;
3. evaluate both with the paper's protocol and print the table;
4. predict bone 1 and write its slices to OUT/predict/slices.png.

Every step reuses what an earlier demo left in OUT (runs resume, finished
runs are kept); `--overwrite` redoes everything. The short schedule
(`DEMO_SCHEDULE`) is far from the paper's 200 epochs over augmented data:
one fold of one model, not the paper's tables (see the README for the full
sweep).
"""

import os
import sys
import time

import numpy as np

__all__ = ["demo", "demo_config", "DEMO_SCHEDULE", "DEMO_LOSSES"]

#: The short schedule, well within 10 minutes on 2 CPU cores: 350 steps of
#: 2 pairs per loss. Two departures from the paper's recipe make that enough
#: to learn the task: a higher learning rate that decays along a cosine to
#: about 0 (so BatchNormalization's moving statistics settle on the final
#: weights; with a constant rate the model segments well in training mode
#: but not at inference), and no augmentation (all 48 orientations of the
#: cube need far more steps than this).
DEMO_SCHEDULE = {"epochs": 14, "steps_per_epoch": 25, "batch_size": 2, "lr": 5e-3,
                 "lr_schedule": "cosine", "augment": None}
DEMO_LOSSES = ("dl", "rpdl")


def _say(msg):
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def demo_config(data_dir, loss, schedule=None, size=64, base_filters=4):
    """The `TrainConfig` of one demo run: U-Net, Experiment 1 fold 1."""
    from cmseg.train import TrainConfig

    return TrainConfig(data=os.path.abspath(data_dir), experiment="bone", fold=1, model="unet",
                       loss=loss, base_filters=base_filters, depth=5 if size >= 32 else 2,
                       deterministic=True, **(DEMO_SCHEDULE if schedule is None else schedule))


def demo(out="demo_out", epochs=None, steps_per_epoch=None, batch_size=None, lr=None, size=64,
         overwrite=False, n_bones=9, n_surgeons=7, base_filters=4):
    """Run the demo into `out`; return the markdown table of the results."""
    import cm_dataset
    from cm_dataset import synthetic

    from cmseg import _io
    from cmseg.evaluate import evaluate
    from cmseg.predict import predict
    from cmseg.train import train

    schedule = dict(DEMO_SCHEDULE)
    for key, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch),
                       ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            schedule[key] = value
    start = time.monotonic()
    data_dir = os.path.join(out, "data")
    names = cm_dataset.file_names(n_bones, n_surgeons)
    if overwrite or not all(os.path.isfile(os.path.join(data_dir, n)) for n in names):
        _say(f"1/4 synthesizing {n_bones} bones x {n_surgeons} surgeons at {size}^3 "
             f"-> {data_dir}")
        synthetic.generate(n_bones=n_bones, n_surgeons=n_surgeons, size=size, seed=0).save(
            data_dir
        )
    else:
        _say(f"1/4 reusing the data in {data_dir}")
    runs = []
    for i, loss in enumerate(DEMO_LOSSES):
        rundir = os.path.join(out, "runs", f"bone-unet-{loss}", "fold-1")
        _say(f"2/4 training U-Net with {loss} on Experiment 1 fold 1 "
             f"({schedule['epochs']} epochs x {schedule['steps_per_epoch']} steps, batch "
             f"{schedule['batch_size']}, learning rate {schedule['lr']:g} "
             f"{schedule['lr_schedule']}) -> {rundir}")
        config = demo_config(data_dir, loss, schedule, size, base_filters)
        train(config, rundir, overwrite=overwrite, log=_say)
        runs.append(rundir)
    report = os.path.join(out, "report")
    _say(f"3/4 evaluating -> {report}")
    text = evaluate(data_dir, runs, report, log=lambda _: None)
    print(text)
    data = cm_dataset.load(data_dir)
    bone_path = os.path.join(out, "bone1.npy")
    _io.save_npy(bone_path, np.asarray(data.bone_input(0)))
    pred_dir = os.path.join(out, "predict")
    _say(f"4/4 predicting bone 1 with the rpdl model -> {pred_dir}/slices.png")
    predict(os.path.join(runs[-1], "model.keras"), bone_path, pred_dir, log=_say)
    minutes, seconds = divmod(int(time.monotonic() - start), 60)
    _say(f"done in {minutes}:{seconds:02d}; report in {report}/results.md")
    return text
