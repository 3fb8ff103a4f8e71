"""`cmseg.evaluate`: the paper's protocol against a direct numpy
computation on fixed predictions, table layout, report files."""

import os
import types

import numpy as np
import pytest
from _references import np_dice, np_rpd, np_rpmap, np_surface, on_volume

from cmseg import _io
from cmseg import evaluate as ev

B, S, SIZE = 3, 3, 8


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((B * S, SIZE, SIZE, SIZE)) < 0.3).astype(np.int8)
    x = rng.integers(0, 14, size=y.shape).astype(np.int8)
    return types.SimpleNamespace(x=x, y=y, n_bones=B, n_surgeons=S)


# [000, Eq. 5-6] on one volume at a time, as the protocol scores each pair.
volume_dice, volume_rpd = on_volume(np_dice), on_volume(np_rpd)


def test_bone_fold_matches_numpy():
    data = _data()
    rng = np.random.default_rng(1)
    pred = rng.random((SIZE,) * 3).astype(np.float32)
    cases, base = ev.fold_cases(data, "bone", 2, {1: pred}, metrics=["dice", "rpd"])
    assert base == []
    ann = data.y[1 * S : 2 * S]
    m = np_rpmap(ann)
    assert [(c["bone"], c["surgeon"], c["row"]) for c in cases] == [(2, s, "Bone2") for s in (1, 2, 3)]
    np.testing.assert_allclose([c["dice"] for c in cases], [volume_dice(a, pred) for a in ann], rtol=1e-6)
    np.testing.assert_allclose([c["rpd"] for c in cases], [volume_rpd(a, pred, m) for a in ann], rtol=1e-6)


def test_surgeon_fold_and_baseline_match_numpy():
    data = _data()
    rng = np.random.default_rng(2)
    preds = {b: rng.random((SIZE,) * 3) for b in range(B)}
    fold = 3  # surgeon index 2 held out
    cases, base = ev.fold_cases(data, "surgeon", fold, preds, metrics=["dice", "rpd"])
    want, want_base = [], []
    for b in range(B):
        ann = data.y[b * S : b * S + 2]  # the training surgeons 0 and 1
        m = np_rpmap(ann)
        held = data.y[b * S + 2]
        for a in ann:
            want.append((volume_dice(a, preds[b]), volume_rpd(a, preds[b], m)))
            want_base.append((volume_dice(a, held), volume_rpd(a, held, m)))
    np.testing.assert_allclose([(c["dice"], c["rpd"]) for c in cases], want, rtol=1e-6)
    np.testing.assert_allclose([(c["dice"], c["rpd"]) for c in base], want_base, rtol=1e-6)
    assert {c["row"] for c in cases} == {"Surgeon3"}
    assert {c["surgeon"] for c in base} == {1, 2}


def _np_iou(a, b):
    a, b = a > 0.5, b > 0.5
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


def test_input_metrics_per_held_out_surgeon_and_baseline():
    """GED, Hungarian IoU and QUBIQ score one prediction against its input's
    whole annotation set: one case per input (numpy transcriptions of Kohl
    et al. 2018 and the QUBIQ score, with the prediction as one sample)."""
    data = _data()
    rng = np.random.default_rng(3)
    preds = {b: rng.random((SIZE,) * 3) for b in range(B)}
    metrics = ["dice", "ged", "hungarian_iou", "qubiq"]
    cases, base = ev.fold_cases(data, "surgeon", 3, preds, metrics=metrics)
    per_input = [c for c in cases if c["surgeon"] == ""]
    assert len(per_input) == B and len(cases) == B * 3 and len(base) == B * 3
    assert all("dice" not in c for c in per_input)
    for c, b in zip(per_input, range(B)):
        ann = data.y[b * S : b * S + 2].astype(float)
        sample = (preds[b] > 0.5).astype(float)
        cross = np.mean([1 - _np_iou(sample, a) for a in ann])
        within = np.mean([1 - _np_iou(a, a2) for a in ann for a2 in ann])
        np.testing.assert_allclose(c["ged"], 2 * cross - within, rtol=1e-6)
        # one sample repeated to the K annotations: each is matched once
        np.testing.assert_allclose(c["hungarian_iou"],
                                   np.mean([_np_iou(sample, a) for a in ann]), rtol=1e-6)
        soft = ann.mean(0)
        q = [volume_dice((soft > t).astype(float), (preds[b] > t).astype(float))
             if ((soft > t).any() or (preds[b] > t).any()) else 1.0
             for t in np.arange(1, 10) / 10]
        np.testing.assert_allclose(c["qubiq"], np.mean(q), rtol=1e-6)
    summary = ev.summarize([{**c, "experiment": "surgeon", "model": "unet", "loss": "dl"}
                            for c in cases], metrics)
    overall = {s["metric"]: s for s in summary if s["row"] == "Overall"}
    assert overall["ged"]["n"] == B and overall["dice"]["n"] == B * 2


def test_invalid_fold():
    with pytest.raises(ValueError, match="fold"):
        ev.fold_cases(_data(), "bone", B + 1, {}, metrics=["dice"])


def _cases():
    out = []
    for loss, offset in (("rpdl", 0.1), ("dl", 0.0)):
        for fold in (1, 2):
            for s in range(3):
                out.append({"experiment": "bone", "model": "unet", "loss": loss, "fold": fold,
                            "row": f"Bone{fold}", "dice": 0.5 + offset + 0.1 * s + 0.01 * fold})
    return out


def test_summary_rows_are_mean_std_over_cases():
    cases = _cases()
    summary = ev.summarize(cases, ["dice"])
    cell = {(s["loss"], s["row"]): s for s in summary}
    dl_bone1 = [c["dice"] for c in cases if c["loss"] == "dl" and c["fold"] == 1]
    dl_all = [c["dice"] for c in cases if c["loss"] == "dl"]
    assert cell["dl", "Bone1"]["mean"] == pytest.approx(np.mean(dl_bone1))
    assert cell["dl", "Bone1"]["std"] == pytest.approx(np.std(dl_bone1))
    assert cell["dl", "Overall"]["mean"] == pytest.approx(np.mean(dl_all))
    assert cell["dl", "Overall"]["std"] == pytest.approx(np.std(dl_all))
    assert cell["dl", "Overall"]["n"] == 6
    # Columns in the paper's order (WCEL, DL, RPDL), rows bones then Overall.
    md = ev.to_markdown(summary)
    lines = md.splitlines()
    assert lines[4] == "| Training loss | dl | rpdl |"
    assert [line.split(" |")[0] for line in lines[5:8]] == ["| Bone1", "| Bone2", "| Overall"]
    assert f"{np.mean(dl_all):.3f} ± {np.std(dl_all):.3f}" in lines[7]


def test_baseline_row_in_experiment_2():
    cases = [
        {"experiment": "surgeon", "model": "unet", "loss": "dl", "fold": 1, "row": "Surgeon1",
         "dice": 0.8},
        {"experiment": "surgeon", "model": "surgeons", "loss": "baseline", "fold": 1,
         "row": "Surgeon1", "dice": 0.6},
        {"experiment": "surgeon", "model": "surgeons", "loss": "baseline", "fold": 2,
         "row": "Surgeon2", "dice": 0.2},
    ]
    summary = ev.summarize(cases, ["dice"])
    rows = {s["row"]: s["mean"] for s in summary}
    # The baseline of the folds the column was evaluated on (fold 1 only).
    assert rows == {"Surgeon1": 0.8, "Overall": 0.8, "Surgeon baseline": 0.6}
    assert "| Surgeon baseline | 0.600 ± 0.000 |" in ev.to_markdown(summary)


def test_plots_and_find_runs(tmp_path):
    from cmseg import _io

    run = tmp_path / "runs" / "fold-1"
    _io.write_json(run / "config.json", {"model": "unet", "loss": "dl", "experiment": "bone",
                                         "fold": 1})
    _io.write_csv(run / "history.csv", [{"epoch": e, "loss": 1 / e, "val_loss": 2 / e}
                                        for e in (1, 2, 3)])
    assert ev.find_runs([str(tmp_path / "runs")]) == [str(run)]
    assert ev.find_runs([str(run)]) == [str(run)]
    with pytest.raises(ValueError, match="--runs"):
        ev.find_runs([str(tmp_path)])
    ev.plot_history([(str(run), _io.read_json(run / "config.json"))], tmp_path / "c.png")
    ev.plot_boxes(_cases(), tmp_path / "b.png")
    for name in ("c.png", "b.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_evaluate_command_against_numpy(tmp_path, capsys):
    """The whole command on a fixed (untrained, seeded) model: every number
    of results.csv recomputed here from the model's own predictions."""
    import csv

    import keras

    import models3d
    from cm_dataset import synthetic
    from cmseg import _io
    from cmseg.cli import main

    data = synthetic.generate(n_bones=3, n_surgeons=2, size=16, seed=0)
    data.save(tmp_path / "data")
    keras.utils.set_random_seed(0)
    model = models3d.get("unet", input_shape=(16, 16, 16, 1), n_base_filters=2, depth=2)
    runs = []
    for fold in (1, 2):
        run = tmp_path / "runs" / f"fold-{fold}"
        _io.write_json(run / "config.json", {"experiment": "surgeon", "fold": fold,
                                             "model": "unet", "loss": "dl",
                                             "input_encoding": "scaled"})
        model.save(run / "model.keras")
        runs.append(run)
    # An Experiment 1 run (bone 2 held out) in the same report, given twice.
    bone_run = tmp_path / "bone-runs" / "fold-2"
    _io.write_json(bone_run / "config.json", {"experiment": "bone", "fold": 2, "model": "vnet",
                                              "loss": "rpdl", "input_encoding": "scaled"})
    model.save(bone_run / "model.keras")
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--runs",
                 str(tmp_path / "runs"), str(tmp_path / "bone-runs"), str(bone_run),
                 "--out", str(tmp_path / "rep")]) == 0
    assert f"note: {bone_run} is not finished" in capsys.readouterr().err  # no state.json
    x = (data.x.astype(np.float32) / 6.5 - 1.0)[..., None]
    prob = keras.ops.convert_to_numpy(model(x[:: data.n_surgeons], training=False))[..., 0]
    y = data.y.reshape(3, 2, 16, 16, 16)
    model_cases, base_cases = [], []
    for fold in (1, 2):
        other = 2 - fold  # the one training surgeon of this fold
        for b in range(3):
            m = np_rpmap(y[b, [other]])
            model_cases.append((volume_dice(y[b, other], prob[b]), volume_rpd(y[b, other], prob[b], m)))
            held = y[b, fold - 1]
            base_cases.append((volume_dice(y[b, other], held), volume_rpd(y[b, other], held, m)))
    with open(tmp_path / "rep" / "results.csv") as f:
        got = {(r["metric"], r["model"], r["row"]): r for r in csv.DictReader(f)}
    for i, metric in enumerate(("dice", "rpd")):
        want = np.array([c[i] for c in model_cases])
        assert float(got[metric, "unet", "Overall"]["mean"]) == pytest.approx(want.mean(), abs=1e-6)
        assert float(got[metric, "unet", "Overall"]["std"]) == pytest.approx(want.std(), abs=1e-6)
        assert float(got[metric, "unet", "Surgeon1"]["mean"]) == pytest.approx(want[:3].mean(), abs=1e-6)
        base = np.array([c[i] for c in base_cases])
        assert float(got[metric, "unet", "Surgeon baseline"]["mean"]) == pytest.approx(base.mean(), abs=1e-6)
        # Experiment 1: bone 2 (index 1) against both its surgeons, map of both.
        m = np_rpmap(y[1])
        want = np.array([(volume_dice(a, prob[1]), volume_rpd(a, prob[1], m))[i] for a in y[1]])
        for row in ("Bone2", "Overall"):
            cell = got[metric, "vnet", row]
            assert cell["experiment"] == "bone" and cell["loss"] == "rpdl" and cell["n"] == "2"
            assert float(cell["mean"]) == pytest.approx(want.mean(), abs=1e-6)
            assert float(cell["std"]) == pytest.approx(want.std(), abs=1e-6)
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "Experiment 2" in md and "| Surgeon baseline |" in md
    assert "Experiment 1" in md and "| Training loss | rpdl |" in md
    for name in ("training_curves.png", "dice_boxplot.png", "cases.csv"):
        assert (tmp_path / "rep" / name).is_file()


def _np_hd95_nsd(g, p, tolerance=1.0):
    """MONAI's conventions written out: boundary voxels (mask minus its
    6-connected erosion); HD95 the max of the two directed 95th percentiles;
    NSD the fraction of both boundaries within `tolerance` of the other."""
    from scipy import ndimage

    sg, sp = np_surface(g.astype(bool)), np_surface(p > 0.5)
    d_gp = ndimage.distance_transform_edt(~sp)[sg]
    d_pg = ndimage.distance_transform_edt(~sg)[sp]
    hd = max(np.percentile(d_gp, 95), np.percentile(d_pg, 95))
    nsd = ((d_gp <= tolerance).sum() + (d_pg <= tolerance).sum()) / (sg.sum() + sp.sum())
    return hd, nsd


def test_surface_metrics_in_the_protocol():
    if not {"hd95", "nsd"} <= set(ev.available_metrics()):
        pytest.skip("keras_seglosses.metrics.functional has no hd95/nsd yet")
    rng = np.random.default_rng(5)
    # Blobs away from the volume border, where conventions agree.
    y = np.zeros((B * S, 12, 12, 12), np.int8)
    y[:, 2:10, 2:10, 2:10] = rng.random((B * S, 8, 8, 8)) < 0.6
    data = types.SimpleNamespace(x=np.zeros_like(y), y=y, n_bones=B, n_surgeons=S)
    pred = np.zeros((12, 12, 12), np.float32)
    pred[3:9, 2:10, 3:10] = 0.9
    cases, _ = ev.fold_cases(data, "bone", 1, {0: pred})
    cases = [c for c in cases if c["surgeon"] != ""]  # the pair cases (not the input's)
    want = [_np_hd95_nsd(a, pred) for a in y[:S]]
    np.testing.assert_allclose([c["hd95"] for c in cases], [w[0] for w in want], rtol=1e-4)
    np.testing.assert_allclose([c["nsd"] for c in cases], [w[1] for w in want], rtol=1e-4)


def test_evaluate_usage_errors_name_the_run(tmp_path, capsys):
    import keras

    import models3d
    from cm_dataset import synthetic
    from cmseg import _io
    from cmseg.cli import main

    synthetic.generate(n_bones=3, n_surgeons=2, size=16, seed=0).save(tmp_path / "data")
    run = tmp_path / "run"

    def evaluate():
        return main(["evaluate", "--data", str(tmp_path / "data"), "--runs", str(run),
                     "--out", str(tmp_path / "rep")])

    config = {"experiment": "bone", "fold": 2, "model": "unet", "loss": "dl"}
    _io.write_json(run / "config.json", config)
    assert evaluate() == 2
    assert f"{run}: no model.keras" in capsys.readouterr().err
    _io.write_json(run / "config.json", {**config, "fold": 4})
    assert evaluate() == 2
    assert f"{run}: fold 4 of experiment 'bone' does not exist in --data" in capsys.readouterr().err
    (run / "config.json").write_text("{not json")
    assert evaluate() == 2
    assert f"{run / 'config.json'}: not a cmseg run configuration" in capsys.readouterr().err
    _io.write_json(run / "config.json", config)
    keras.utils.set_random_seed(0)
    models3d.get("unet", input_shape=(32, 32, 32, 1), n_base_filters=2, depth=2).save(
        run / "model.keras")
    assert evaluate() == 2
    err = capsys.readouterr().err
    assert "takes volumes of shape (32, 32, 32), --data holds (16, 16, 16)" in err
    assert main(["evaluate", "--data", str(tmp_path / "run"), "--runs", str(run),
                 "--out", str(tmp_path / "rep")]) == 2
    assert f"--data {tmp_path / 'run'}:" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def _folder_run(root, experiment, fold):
    """A folder run whose model predicts the ball of the CT image (radius 8
    mm): 0.967 inside, 0.167 outside after the run's CT scaling."""
    from _references import CT_PREPROCESSING, write_affine_run

    run = os.path.join(root, f"{experiment}-{fold}")
    write_affine_run(run, CT_PREPROCESSING, scale=1.0, shift=0.3, patch=16, config=dict(
        experiment=experiment, fold=fold, model="unet", loss="rpdl", folds=None,
        validation_fraction=0.1))
    return run


def test_folder_runs_score_cases_in_millimetres(tmp_path):
    """Case and rater experiments of a folder: Dice, RPD and HD95 (mm, the
    headers' anisotropic spacing) of each held-out prediction against each
    reference rater, and the held-out rater's baseline, against numpy and
    scipy; post-processing flags reach the scored region."""
    from _references import FOLDER_SPACING, np_surface_metrics, write_case_folder

    written = write_case_folder(str(tmp_path / "data"))
    runs = [_folder_run(str(tmp_path / "runs"), "case", 1),
            _folder_run(str(tmp_path / "runs"), "rater", 3)]
    out = str(tmp_path / "report")
    ev.evaluate(str(tmp_path / "data"), runs, out, metrics=["dice", "rpd", "hd95"],
                keep_largest=True, log=lambda _: None)
    rows = {(r["experiment"], r["model"], r["case"], r["rater"]): r
            for r in _io.read_csv(os.path.join(out, "cases.csv"))}

    def expect(name, pred, refs):
        masks = written[name][1]
        ann = np.stack([masks[int(r[1:]) - 1] for r in refs])
        m = np_rpmap(ann)
        for r, g in zip(refs, ann):
            yield r, volume_dice(g, pred), volume_rpd(g, pred, m), np_surface_metrics(
                g.astype(bool), pred.astype(bool), FOLDER_SPACING, 1.0)["hd max"]

    checked = 0
    plan = [("case", "case01", ("r1", "r2"), None), ("rater", "case02", ("r1", "r2"), "r3"),
            ("rater", "case03", ("r1", "r2"), "r3")]
    for exp, name, refs, held in plan:
        image = written[name][0]
        pred = (image > 0).astype(np.float32)  # the ball the model finds
        scored = [("unet", pred)] + ([("surgeons", written[name][1][2])] if held else [])
        for model, p in scored:
            for r, dice, rpd, hd in expect(name, p, refs):
                row = rows[(exp, model, name, r)]
                assert float(row["dice"]) == pytest.approx(dice, abs=1e-5)
                assert float(row["rpd"]) == pytest.approx(rpd, abs=1e-5)
                assert float(row["hd95"]) == pytest.approx(hd, abs=1e-4)
                checked += 1
    assert checked == 2 + 4 + 4
    assert {r["row"] for r in _io.read_csv(os.path.join(out, "results.csv"))} >= {
        "Case case01", "Rater r3", "Rater baseline", "Overall"}


def test_folder_evaluate_refuses_runs_of_other_data(tmp_path):
    import json
    import shutil

    from _references import write_case_folder

    write_case_folder(str(tmp_path / "data"))
    run = _folder_run(str(tmp_path / "runs"), "case", 7)
    with pytest.raises(ev.UsageError, match="fold"):
        ev.evaluate(str(tmp_path / "data"), [run], str(tmp_path / "r"), log=lambda _: None)
    # a case added since training: case02 trained, and would now be held out
    run = _folder_run(str(tmp_path / "runs"), "case", 2)
    path = os.path.join(run, "config.json")
    config = json.load(open(path))
    from cm_dataset import load_folder, splits

    split = splits.folder_split("case", 2, load_folder(str(tmp_path / "data"), lazy=True))
    config["split"] = {k: [c for c, _ in getattr(split, k)] for k in ("train", "val", "test")}
    assert config["split"]["test"] == ["case02"]
    json.dump(config, open(path, "w"))
    ev.evaluate(str(tmp_path / "data"), [run], str(tmp_path / "ok"), metrics=["dice"],
                log=lambda _: None)
    shutil.copytree(tmp_path / "data" / "case01", tmp_path / "data" / "case00")
    with pytest.raises(ev.UsageError, match="splits fold 2 differently"):
        ev.evaluate(str(tmp_path / "data"), [run], str(tmp_path / "r"), log=lambda _: None)
    assert not os.path.exists(tmp_path / "r")
