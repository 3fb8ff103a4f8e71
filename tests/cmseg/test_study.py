"""`cmseg study`: the plan, the printed commands, refusals, the report, and
resuming a killed study."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from cmseg import cli, study

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEDULE = ["--epochs", "3", "--steps-per-epoch", "1", "--batch-size", "2", "--depth", "2",
            "--base-filters", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cm"))
    assert cli.main(["synth", "--out", path, "--bones", "3", "--surgeons", "3", "--size", "16",
                     "--seed", "5"]) == 0
    return path


def _study(data_dir, out, *extra):
    return ["study", "--data", data_dir, "--out", str(out), *extra]


def test_plan_is_seed_major_with_extra_losses_last():
    settings = study.StudySettings(data="d", experiments=["bone", "surgeon"], models=["unet"],
                                   losses=["dl", "rpdl"], seeds=[0, 1],
                                   extra_losses=["dice_ce"], extra_seeds=[0])
    runs = study.plan(settings, n_bones=3, n_surgeons=2)
    assert len(runs) == (3 + 2) * 2 * 2 + (3 + 2)
    assert [r.seed for r in runs] == [0] * 10 + [1] * 10 + [0] * 5
    assert {r.loss for r in runs[:20]} == {"dl", "rpdl"}
    assert {r.loss for r in runs[20:]} == {"dice_ce"}
    assert runs[:2] == [study.Run("bone", 1, "unet", lo, 0) for lo in ("dl", "rpdl")]
    assert runs[6] == study.Run("surgeon", 1, "unet", "dl", 0)
    assert len(set(runs)) == len(runs)
    assert runs[0].path == os.path.join("runs", "bone", "unet", "dl", "seed-0", "fold-1")


def test_print_commands_writes_nothing_and_each_line_is_a_train_command(data_dir, tmp_path,
                                                                        capsys):
    out = tmp_path / "s"
    assert cli.main(_study(data_dir, out, "--losses", "dl", "rpdl", "--seeds", "0", "1",
                           "--extra-losses", "region_wise", *SCHEDULE,
                           "--print-commands")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == (3 + 3) * 2 * 2 + (3 + 3)
    assert not out.exists()
    parser = cli.build_parser()
    for line in lines:
        argv = shlex.split(line)
        assert argv[:2] == ["cmseg", "train"]
        args = parser.parse_args(argv[1:])
        assert args.deterministic and args.epochs == 3 and args.depth == 2
        assert args.out.startswith(str(out / "runs"))


@pytest.mark.parametrize("extra, message", [
    (["--losses", "dl", "nope"], "invalid choice: 'nope'"),
    (["--models", "resnet"], "invalid choice: 'resnet'"),
    (["--experiments", "patient"], "invalid choice: 'patient'"),
    (["--extra-losses", "nope"], "invalid choice: 'nope'"),
    (["--folds", "5"], "Experiment 'bone' on data with 3 bones and 3 surgeons has folds 1-3"),
    (["--folds", "all", "2"], "fold numbers or all, not both"),
])
def test_refuses_unknown_names_and_folds_writing_nothing(data_dir, tmp_path, capsys, extra,
                                                         message):
    out = tmp_path / "s"
    assert cli.main(_study(data_dir, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_refuses_a_study_directory_with_other_settings(data_dir, tmp_path, capsys):
    out = tmp_path / "s"
    settings = study.settings_from_args(cli.build_parser().parse_args(
        _study(data_dir, out, "--losses", "dl", "rpdl", *SCHEDULE)))
    os.makedirs(out)
    from cmseg import _io

    _io.write_json(str(out / study.STUDY_FILE), settings.to_json())
    before = (out / study.STUDY_FILE).read_bytes()
    assert cli.main(_study(data_dir, out, "--losses", "dl", "rpdl", *SCHEDULE[:-2],
                           "--base-filters", "3")) == 2
    err = capsys.readouterr().err
    assert "holds a study with other settings (train.base_filters: 2 -> 3)" in err
    assert cli.main(_study(data_dir, out, "--losses", "dl", *SCHEDULE)) == 2
    assert "losses: ['dl', 'rpdl'] -> ['dl']" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == [study.STUDY_FILE]
    assert (out / study.STUDY_FILE).read_bytes() == before


def test_a_second_study_process_on_the_directory_is_refused(tmp_path):
    fd = study._lock(str(tmp_path))
    try:
        with pytest.raises(study.UsageError, match="another cmseg study"):
            study._lock(str(tmp_path))
    finally:
        os.close(fd)
    os.close(study._lock(str(tmp_path)))  # released


def _wait(predicate, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_killed_study_stops_its_trainings_then_resumes_reusing_finished_runs(data_dir,
                                                                            tmp_path):
    from cmseg import _io
    from cmseg.train import run_is_finished

    out = tmp_path / "s"
    argv = [sys.executable, "-m", "cmseg", *_study(data_dir, out, "--experiments", "bone",
                                                   "--losses", "dl", "rpdl", "--seeds", "0",
                                                   *SCHEDULE)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    first = out / "runs" / "bone" / "unet" / "dl" / "seed-0" / "fold-1"
    second = out / "runs" / "bone" / "unet" / "rpdl" / "seed-0" / "fold-1"
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def second_mid_run():
        state = second / "state.json"
        if not state.is_file():
            return False
        try:
            s = _io.read_json(str(state))
        except ValueError:
            return False
        return s["epoch"] >= 1 and not s.get("finished")

    try:
        assert _wait(second_mid_run), proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGTERM)  # the study only: it stops its trainings
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left, should the test fail
        except ProcessLookupError:
            pass
        proc.wait()
    os.close(study._lock(str(out)))  # no training of the study is left running
    assert run_is_finished(str(first)) and not run_is_finished(str(second))
    kept = os.path.getmtime(first / "model.keras")
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 runs, 1 finished, 5 to train" in done.stderr
    assert os.path.getmtime(first / "model.keras") == kept
    log = (out / "logs" / "bone-unet-rpdl-seed0-fold1.log").read_text()
    assert "resuming after epoch" in log
    for run in (out / "runs" / "bone" / "unet").glob("*/seed-0/fold-*"):
        assert run_is_finished(str(run))
        assert [r["epoch"] for r in _io.read_csv(str(run / "history.csv"))] == ["1", "2", "3"]
    rows = _io.read_csv(str(out / "study.csv"))
    assert len(rows) == 6 and all(r["finished"] == "True" for r in rows)
    assert sorted({r["loss"] for r in rows}) == ["dl", "rpdl"]  # not the final loss value
    assert all(float(r["final_val_loss"]) > 0 and r["best_epoch"] for r in rows)
    text = (out / "study.md").read_text()
    assert "6 of 6 runs finished" in text
    assert "| rpdl − dl | Dice | 3 |" in text
    for name in ("study_folds.png", "study_examples.png", "study_curves.png"):
        assert (out / name).stat().st_size > 1000
    tests = _io.read_csv(str(out / "study_tests.csv"))
    assert {t["metric"] for t in tests} >= {"dice", "rpd", "hd95", "nsd"}
