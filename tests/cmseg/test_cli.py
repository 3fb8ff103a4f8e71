"""`cmseg.cli`: argument parsing, exit statuses, synth, fold commands."""

import configparser
import os
import shlex

import pytest

from cmseg import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cm"))
    assert cli.main(["synth", "--out", path, "--bones", "3", "--surgeons", "2", "--size", "16",
                     "--seed", "3"]) == 0
    return path


def _train(data_dir, *extra, out="run"):
    return ["train", "--data", data_dir, "--experiment", "bone", "--fold", "1", "--out", out,
            *extra]


def test_synth_writes_loadable_files(data_dir):
    import cm_dataset
    from cm_dataset import synthetic

    assert sorted(os.listdir(data_dir)) == ["x3_2.npy", "y3_2.npy"]
    data = cm_dataset.load(data_dir)
    again = synthetic.generate(n_bones=3, n_surgeons=2, size=16, seed=3)
    assert (data.x == again.x).all() and (data.y == again.y).all()


def test_synth_never_replaces_data_unasked(data_dir, tmp_path, capsys):
    import shutil

    copy = str(tmp_path / "data")
    shutil.copytree(data_dir, copy)
    before = {n: (tmp_path / "data" / n).read_bytes() for n in os.listdir(copy)}
    args = ["synth", "--out", copy, "--bones", "3", "--surgeons", "2", "--size", "16"]
    assert cli.main([*args, "--seed", "4"]) == 2
    assert "already holds x3_2.npy, y3_2.npy" in capsys.readouterr().err
    assert {n: (tmp_path / "data" / n).read_bytes() for n in os.listdir(copy)} == before
    assert cli.main([*args, "--seed", "4", "--overwrite"]) == 0
    assert (tmp_path / "data" / "x3_2.npy").read_bytes() != before["x3_2.npy"]
    (tmp_path / "file").write_text("mine")
    assert cli.main(["synth", "--out", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize(
    "extra, listed",
    [
        (["--loss", "dicee"], ["wcel", "dl", "rpdl", "reward_penalty_dice", "dice"]),
        (["--model", "resnet"], ["unet", "vnet", "isensee2017", "myronenko2018"]),
        (["--augment", "flip"], ["random", "all48"]),
        (["--epochs", "0"], ["positive integer"]),
        (["--loss-config", "[1]"], ["JSON object"]),
    ],
)
def test_bad_names_exit_2_listing_valid_values(data_dir, tmp_path, capsys, extra, listed):
    assert cli.main(_train(data_dir, *extra, out=str(tmp_path / "r"))) == 2
    err = capsys.readouterr().err
    for name in listed:
        assert name in err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("experiment, fold, valid", [("bone", "4", "1, 2, 3"),
                                                    ("surgeon", "3", "1, 2"),
                                                    ("bone", "x", "'all'")])
def test_invalid_folds_exit_2(data_dir, tmp_path, capsys, experiment, fold, valid):
    args = ["train", "--data", data_dir, "--experiment", experiment, "--fold", fold,
            "--out", str(tmp_path / "r")]
    assert cli.main(args) == 2
    assert valid in capsys.readouterr().err
    assert cli.main([*args, "--print-fold-commands"]) == 2


def test_bad_experiment_and_missing_data(tmp_path, capsys):
    assert cli.main(["train", "--data", "d", "--experiment", "patient", "--fold", "1",
                     "--out", "o"]) == 2
    assert "bone" in capsys.readouterr().err
    assert cli.main(_train(str(tmp_path / "nothing"), out=str(tmp_path / "r"))) == 2
    assert "--data" in capsys.readouterr().err
    assert cli.main(["evaluate", "--data", str(tmp_path), "--runs", str(tmp_path / "no"),
                     "--out", str(tmp_path / "rep")]) == 2


def test_print_fold_commands_round_trip(data_dir, tmp_path, capsys):
    out = str(tmp_path / "sweep")
    args = ["train", "--data", data_dir, "--experiment", "bone", "--fold", "all", "--out", out,
            "--model", "vnet", "--loss", "wcel", "--epochs", "7", "--augment", "none",
            "--loss-config", '{"voxel_reduction": "sum"}', "--print-fold-commands"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    parser = cli.build_parser()
    for k, line in enumerate(lines, start=1):
        argv = shlex.split(line)
        assert argv[:2] == ["cmseg", "train"] and "--print-fold-commands" not in argv
        parsed = parser.parse_args(argv[1:])
        assert (parsed.fold, parsed.out) == (k, os.path.join(out, f"fold-{k}"))
        assert (parsed.model, parsed.loss, parsed.epochs) == ("vnet", "wcel", 7)
        assert parsed.augment is None and parsed.loss_config == {"voxel_reduction": "sum"}
        assert (parsed.batch_size, parsed.lr) == (16, 1e-4)
    assert not os.path.exists(out)


def test_fold_all_trains_every_fold_in_turn(data_dir, tmp_path, monkeypatch):
    from cmseg import train

    calls = []
    monkeypatch.setattr(train, "train", lambda config, out, overwrite=False: calls.append(
        (config.fold, config.experiment, out, overwrite)))
    out = str(tmp_path / "s")
    assert cli.main(["train", "--data", data_dir, "--experiment", "surgeon", "--fold", "all",
                     "--out", out, "--overwrite"]) == 0
    assert calls == [(k, "surgeon", os.path.join(out, f"fold-{k}"), True) for k in (1, 2)]


def test_help_and_console_script(capsys):
    assert cli.main(["--help"]) == 0
    assert "synth" in capsys.readouterr().out
    assert cli.main([]) == 2
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert "cmseg = cmseg._deps:main" in cfg["options.entry_points"]["console_scripts"]
    assert os.path.isfile(os.path.join(ROOT, "cmseg", "__main__.py"))


def test_check_data_summary_and_exit_codes(tmp_path, capsys):
    """`check-data DIR`: 0 and a table of the cases; 2 with every problem of
    the folder, one line per file; the folder is only read."""
    import numpy as np

    nib = pytest.importorskip("nibabel")
    affine = np.diag([0.5, 0.7, 1.3, 1.0])
    affine[:3, 3] = (10.0, -5.0, 2.0)
    rng = np.random.default_rng(0)
    for name, shape, raters in (("case-1", (17, 21, 13), "abc"), ("case-2", (9, 8, 7), "ab")):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine),
                 tmp_path / name / "image.nii.gz")
        for r in raters:
            nib.save(nib.Nifti1Image((rng.random(shape) > 0.5).astype(np.uint8), affine),
                     tmp_path / name / f"annotation-{r}.nii.gz")
    assert cli.main(["check-data", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["case", "shape", "channels", "spacing", "(mm)", "format", "raters"]
    assert out[1].split()[:4] == ["case-1", "17", "x", "21"] and "0.5 x 0.7 x 1.3" in out[1]
    assert out[-1] == "2 cases, 3 raters (a, b, c)"

    bad = tmp_path / "case-2" / "annotation-b.nii.gz"
    nib.save(nib.Nifti1Image(np.full((9, 8, 7), 3, np.uint8), affine), bad)
    (tmp_path / "case-1" / "annotation-c.nii.gz").write_bytes(b"broken")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli.main(["check-data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"cmseg check-data: error: {tmp_path}: 2 problems in the data folder:" in err
    assert f"{tmp_path / 'case-1' / 'annotation-c.nii.gz'}: unreadable as NIfTI" in err
    assert f"{bad}: annotation not binary: values 3" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert cli.main(["check-data", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert cli.main(["check-data", str(tmp_path), "--spacing", "1", "2"]) == 2
    assert "--spacing: expected 1 or 3 values" in capsys.readouterr().err


@pytest.mark.backends
def test_folder_of_cases_end_to_end(tmp_path, capsys):
    """A user's folder (odd sizes, anisotropic spacing, NIfTI and NRRD, 2-3
    raters): check-data, train one step on patches, predict a case in its
    own format and grid, evaluate in millimetres; the fold commands carry
    the folder options."""
    import nrrd
    import numpy as np
    from _references import FOLDER_SHAPES, write_case_folder

    data = str(tmp_path / "data")
    write_case_folder(data)
    assert cli.main(["check-data", data]) == 0
    run = str(tmp_path / "run")
    folder = ["--patch-size", "16", "--window", "-500", "1500", "--folds", "2"]
    assert cli.main(["train", "--data", data, "--experiment", "case", "--fold", "2",
                     "--out", run, "--epochs", "1", "--steps-per-epoch", "1", "--batch-size",
                     "2", "--base-filters", "2", "--depth", "2", *folder]) == 0
    out = str(tmp_path / "pred")
    assert cli.main(["predict", "--model", os.path.join(run, "model.keras"), "--input",
                     os.path.join(data, "case02", "image.nrrd"), "--out", out,
                     "--keep-largest"]) == 0
    region, header = nrrd.read(os.path.join(out, "region.nrrd"))
    assert region.shape == FOLDER_SHAPES[1] and set(np.unique(region)) <= {0, 1}
    np.testing.assert_allclose(np.abs(np.diag(header["space directions"])), (0.8, 0.8, 2.0))
    report = str(tmp_path / "report")
    assert cli.main(["evaluate", "--data", data, "--runs", run, "--out", report,
                     "--metrics", "dice", "hd95", "--min-size", "5"]) == 0
    assert os.path.isfile(os.path.join(report, "results.md"))
    capsys.readouterr()
    assert cli.main(["train", "--data", data, "--experiment", "case", "--fold", "all",
                     "--out", str(tmp_path / "sweep"), *folder, "--print-fold-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    parsed = cli.build_parser().parse_args(shlex.split(lines[1])[1:])
    assert (parsed.fold, parsed.patch_size, parsed.folds) == (2, 16, 2)
    assert parsed.window == [-500.0, 1500.0]
    assert cli.main(["train", "--data", data, "--experiment", "rater", "--fold", "4",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "Expected one of 1..3" in capsys.readouterr().err
