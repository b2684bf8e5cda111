"""What a training run leaves behind survives full disks, kills, divergence, a second run into
the same folder and resumes with other flags: nothing written is lost or made inconsistent."""
import errno
import json
import os
import signal
import stat

import numpy
import pytest

from simclr import atomic_files, linear_eval, pretraining, train
from simclr.training import checkpoint
from simclr.training.checkpoint import CheckpointError, load_checkpoint
from simclr.training.interrupts import Interrupted
from simclr.training.runfolder import RunFolder

TINY = ["--dataset", "synthetic", "--synthetic-size", "48", "--arch", "resnet18", "--width",
        "0.0625", "--batch-size", "16", "--epochs", "2", "--warmup-epochs", "1", "--seed", "3"]


def run(out, *extra, argv=None):
    argv = TINY + ["--out", str(out)] + list(extra) if argv is None else argv
    config, resumed = train.resolve_config(train.parse_args(argv), train.given_flags(argv))
    return train.train(config, resumed, stream=open(os.devnull, "w"))


def resume(out, *extra):
    return run(None, argv=["--resume", str(out)] + list(extra))


def main_error(capsys, program, argv):
    """(exit status, the one line on stderr) of program.main(argv)."""
    code = program.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return code, lines[0]


def state(out):
    model, optimizer, meta = load_checkpoint(str(out / "checkpoint.npz"))
    return model, optimizer["momentum_buffers"], meta["step"]


def assert_same_state(a, b):
    (model_a, momentum_a, step_a), (model_b, momentum_b, step_b) = state(a), state(b)
    assert step_a == step_b
    for name in model_a:
        assert model_a[name].tobytes() == model_b[name].tobytes(), name
    for index in momentum_a:
        assert momentum_a[index].tobytes() == momentum_b[index].tobytes(), index


def steps(out):
    return [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    run(out)
    return out


def test_a_torn_last_line_of_metrics_is_dropped_on_resume(tmp_path, whole):
    run(tmp_path, "--max-steps", "3")
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 4, "epoch": 1, "lo')  # a write that a full disk cut short
    resume(tmp_path)
    assert steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert_same_state(tmp_path, whole)


def test_a_kill_while_resume_rewrites_the_metrics_leaves_them_whole(tmp_path, monkeypatch):
    run(tmp_path, "--max-steps", "4")
    before = (tmp_path / "metrics.jsonl").read_bytes()

    def killed(*args):
        raise KeyboardInterrupt  # as if the process died between writing and renaming
    monkeypatch.setattr(atomic_files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        resume(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]


def test_a_full_disk_while_saving_keeps_the_last_checkpoint_and_says_so_in_one_line(
        tmp_path, monkeypatch, capsys):
    run(tmp_path, "--max-steps", "3")
    before = (tmp_path / "checkpoint.npz").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint.numpy, "savez", full)
    code, line = main_error(capsys, train, ["--resume", str(tmp_path)])
    assert code == 2 and "checkpoint.npz" in line and "disk is full" in line
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]


def test_leftover_temporaries_of_a_killed_write_are_removed(tmp_path):
    run(tmp_path, "--max-steps", "3")
    (tmp_path / ".checkpoint.npz.x1y2z3.part").write_bytes(b"half a checkpoint")
    (tmp_path / ".metrics.jsonl.a1b2c3.part").write_text("{")
    resume(tmp_path)
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith(".")) == [".lock"]


def test_outputs_are_readable_as_the_umask_allows_not_private(tmp_path):
    run(tmp_path)
    expected = 0o666 & ~_umask()
    for name in ("checkpoint.npz", "config.json", "metrics.jsonl", "loss.png"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_second_training_into_a_folder_in_use_is_refused(tmp_path, capsys):
    with RunFolder(str(tmp_path)):  # as another process holds it
        code, line = main_error(capsys, train, TINY + ["--out", str(tmp_path)])
    assert code == 2 and "another training" in line and str(tmp_path) in line
    assert not (tmp_path / "metrics.jsonl").exists()
    run(tmp_path)  # the lock goes with its holder


def test_a_new_run_into_a_folder_that_holds_a_run_is_refused(tmp_path, capsys):
    run(tmp_path, "--max-steps", "2")
    before = {name: (tmp_path / name).read_bytes() for name in ("checkpoint.npz", "metrics.jsonl")}
    code, line = main_error(capsys, train, TINY + ["--out", str(tmp_path)])
    assert code == 2 and "--resume" in line and "already holds" in line
    for name, contents in before.items():
        assert (tmp_path / name).read_bytes() == contents


def test_resume_into_another_out_continues_there_and_leaves_the_source_alone(tmp_path, whole):
    run(tmp_path / "a", "--max-steps", "2")
    source = {name: (tmp_path / "a" / name).read_bytes() for name in os.listdir(tmp_path / "a")}
    resume(tmp_path / "a", "--out", str(tmp_path / "b"))
    assert {name: (tmp_path / "a" / name).read_bytes() for name in source} == source
    assert steps(tmp_path / "b") == [1, 2, 3, 4, 5, 6]
    assert_same_state(tmp_path / "b", whole)


def test_resume_refuses_settings_that_would_make_another_run(tmp_path, capsys):
    run(tmp_path, "--max-steps", "2")
    code, line = main_error(capsys, train, ["--resume", str(tmp_path), "--lr", "2",
                                            "--arch", "resnet50"])
    assert code == 2 and "--lr 2.0" in line and "--arch resnet50" in line
    # the same values as saved are no change, and --epochs extends the run
    resume(tmp_path, "--arch", "resnet18", "--epochs", "3")
    assert state(tmp_path)[2] == 9


def test_weights_that_become_inf_stop_training_and_the_last_finite_checkpoint_stays(
        tmp_path, monkeypatch):
    real_step, calls = pretraining.training_step, []

    def exploding_step(model, *args):
        calls.append(1)
        value = real_step(model, *args)
        if len(calls) == 5:  # in the second epoch: the loss stays finite, a statistic does not
            model.encoder.bn1.running_var[0] = numpy.inf
        return value
    monkeypatch.setattr(pretraining, "training_step", exploding_step)
    with pytest.raises(train.TrainingDiverged, match="step 6.*checkpoint of step 3 is kept"):
        run(tmp_path)
    model, momentum, step = state(tmp_path)
    assert step == 3 and all(numpy.isfinite(value).all() for value in model.values()
                             if value.dtype.kind == "f")


def test_a_non_finite_checkpoint_is_refused_by_resume_and_linear_eval(tmp_path, capsys):
    run(tmp_path, "--max-steps", "2")
    with numpy.load(tmp_path / "checkpoint.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["model/encoder.bn1.running_var"][0] = numpy.nan
    numpy.savez(tmp_path / "checkpoint.npz", **arrays)
    with pytest.raises(CheckpointError, match="inf or NaN"):
        load_checkpoint(str(tmp_path / "checkpoint.npz"))
    code, line = main_error(capsys, train, ["--resume", str(tmp_path)])
    assert code == 2 and "inf or NaN" in line
    code, line = main_error(capsys, linear_eval, ["--checkpoint", str(tmp_path), "--dataset",
                                                  "synthetic", "--synthetic-size", "48"])
    assert code == 2 and "--checkpoint" in line and "inf or NaN" in line


@pytest.mark.parametrize("contents", [b"", b"not a zip at all", b"PK\x03\x04 torn"])
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(tmp_path, capsys, contents):
    (tmp_path / "checkpoint.npz").write_bytes(contents)
    code, line = main_error(capsys, train, ["--resume", str(tmp_path)])
    assert code == 2 and "not a checkpoint" in line and "checkpoint.npz" in line
    assert "allow_pickle" not in line


def test_resume_of_a_folder_without_a_checkpoint_says_so(tmp_path, capsys):
    code, line = main_error(capsys, train, ["--resume", str(tmp_path)])
    assert code == 2 and f"{tmp_path} holds no checkpoint.npz" in line


def test_signals_while_the_checkpoint_is_written_do_not_cut_it_short(tmp_path, monkeypatch):
    real_savez, saves = checkpoint.numpy.savez, []

    def savez_interrupted(file, **arrays):
        saves.append(1)
        if len(saves) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the first signal asks to stop after the step;
            os.kill(os.getpid(), signal.SIGINT)  # more, while saving, are noted and ignored
        real_savez(file, **arrays)
    monkeypatch.setattr(checkpoint.numpy, "savez", savez_interrupted)
    with pytest.raises(Interrupted) as stopped:
        run(tmp_path)
    assert stopped.value.saved
    assert state(tmp_path)[2] == 3  # the end of the first epoch, written whole


def test_ctrl_c_before_training_starts_writes_nothing_and_prints_one_line(
        tmp_path, monkeypatch, capsys):
    def interrupted(config):
        raise KeyboardInterrupt  # while the data loads
    monkeypatch.setattr(pretraining, "load_from_arguments", interrupted)
    code, line = main_error(capsys, train, TINY + ["--out", str(tmp_path / "run")])
    assert code == 130 and "interrupted" in line
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_linear_eval_prints_one_line_and_writes_no_results(
        tmp_path, monkeypatch, capsys):
    run(tmp_path, "--max-steps", "2")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(linear_eval, "encode", interrupted)
    code, line = main_error(capsys, linear_eval, ["--checkpoint", str(tmp_path), "--dataset",
                                                  "synthetic", "--synthetic-size", "48"])
    assert code == 130 and "interrupted" in line
    assert not (tmp_path / "linear_eval.json").exists()
