"""Interrupting `python -m simclr.train` at random moments loses nothing and changes nothing.

Each trial starts a real training process, sends it SIGINT (Ctrl-C), SIGTERM, two of them, or
SIGKILL at a random moment while it trains, resumes it to the end, and compares every array of
the final checkpoint, and every loss in metrics.jsonl, with a run that was never interrupted:
bitwise, with the same thread count. The moments are drawn from a seeded generator; set
SIMCLR_INTERRUPT_TRIALS=N to run N trials of each kind instead of the few that CI runs.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

from simclr.training.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--dataset", "synthetic", "--synthetic-size", "64", "--arch", "resnet18", "--width",
       "0.0625", "--batch-size", "16", "--epochs", "3", "--warmup-epochs", "1", "--seed", "5"]
STEPS, STEPS_PER_EPOCH = 12, 4
TRIALS = int(os.environ.get("SIMCLR_INTERRUPT_TRIALS", "1"))


def start(out, *extra):
    environment = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "simclr.train", *extra, "--out", str(out)],
                            cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(process, timeout=300):
    _, stderr = process.communicate(timeout=timeout)
    assert "Traceback" not in stderr, stderr
    return process.returncode, stderr


def steps_logged(out):
    try:
        with open(out / "metrics.jsonl") as file:
            return sum(1 for line in file if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def final_state(out):
    model, optimizer, meta = load_checkpoint(str(out / "checkpoint.npz"))
    losses = [record["loss"] for record in map(json.loads, open(out / "metrics.jsonl"))]
    return model, optimizer["momentum_buffers"], meta["step"], losses


def assert_bitwise_equal(a, b):
    model_a, momentum_a, step_a, losses_a = a
    model_b, momentum_b, step_b, losses_b = b
    assert step_a == step_b == STEPS
    assert losses_a == losses_b
    assert sorted(model_a) == sorted(model_b) and sorted(momentum_a) == sorted(momentum_b)
    for name in model_a:
        assert model_a[name].tobytes() == model_b[name].tobytes(), name
    for index in momentum_a:
        assert momentum_a[index].tobytes() == momentum_b[index].tobytes(), index


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final state of an uninterrupted run, per thread count."""
    states = {}

    def state(threads):
        if threads not in states:
            out = tmp_path_factory.mktemp(f"whole-{threads}")
            assert finish(start(out, *RUN, "--threads", str(threads)))[0] == 0
            states[threads] = final_state(out)
        return states[threads]
    return state


def interrupt_at_random(out, threads, signals, rng, first_step=0):
    """Start a run, wait until it has logged a random number of steps (at least first_step),
    then a random part of a step more, send `signals` (a little apart), and return
    (exit status, stderr)."""
    process = start(out, *RUN, "--threads", str(threads))
    after = int(rng.integers(first_step, STEPS - 1))
    started = time.monotonic()
    while steps_logged(out) < max(after, 1) and process.poll() is None:
        time.sleep(0.002)
    if after == 0:  # anywhere in the first step, which includes compiling nothing but is slower
        time.sleep(rng.uniform(0, 0.2))
    else:
        step_time = (time.monotonic() - started) / max(after, 1)
        time.sleep(rng.uniform(0, min(step_time, 0.5)))
    for index, signum in enumerate(signals):
        if index:
            time.sleep(rng.uniform(0, 0.05))
        if process.poll() is None:
            process.send_signal(signum)
    if signals == [signal.SIGKILL]:
        process.communicate(timeout=300)
        return process.returncode, ""
    return finish(process)


def resume_to_end(out, threads):
    code, stderr = finish(start(out, "--resume", str(out), "--threads", str(threads)))
    assert code == 0, stderr
    assert not [name for name in os.listdir(out) if name.endswith(".part")]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_a_random_moment_stops_with_a_checkpoint_that_resumes_bitwise(
        tmp_path, uninterrupted, threads, signum):
    rng = numpy.random.default_rng([threads, signum])
    for trial in range(TRIALS):
        out = tmp_path / f"trial-{trial}"
        code, stderr = interrupt_at_random(out, threads, [signum], rng)
        print(f"trial: signal {signum}, {threads} threads: exit status {code}")  # pytest -s
        assert code == 128 + signum, stderr  # two steps at least were left: it was interrupted
        assert "checkpoint saved at step" in stderr, stderr
        resume_to_end(out, threads)
        assert_bitwise_equal(final_state(out), uninterrupted(threads))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_second_signal_stops_at_once_and_leaves_a_whole_checkpoint(
        tmp_path, uninterrupted, threads):
    rng = numpy.random.default_rng([threads, 99])
    for trial in range(TRIALS):
        out = tmp_path / f"trial-{trial}"
        # after the first epoch's checkpoint, so that there is one to keep
        code, stderr = interrupt_at_random(out, threads, [signal.SIGINT, signal.SIGINT], rng,
                                           first_step=STEPS_PER_EPOCH + 1)
        print(f"trial: two signals, {threads} threads: exit status {code}, "
              f"{'saved' if 'checkpoint saved' in stderr else 'not saved'}")
        assert code == 130, stderr
        resume_to_end(out, threads)
        assert_bitwise_equal(final_state(out), uninterrupted(threads))


def test_a_kill_at_a_random_moment_leaves_the_last_checkpoint_and_no_temporaries(
        tmp_path, uninterrupted):
    rng = numpy.random.default_rng(7)
    for trial in range(TRIALS):
        out = tmp_path / f"trial-{trial}"
        code, _ = interrupt_at_random(out, 1, [signal.SIGKILL], rng, first_step=STEPS_PER_EPOCH + 1)
        assert code == -signal.SIGKILL
        print(f"trial: SIGKILL: exit status {code}, "
              f"{len([name for name in os.listdir(out) if name.endswith('.part')])} temporaries")
        resume_to_end(out, 1)
        assert_bitwise_equal(final_state(out), uninterrupted(1))


def test_a_run_stopped_at_once_says_its_step_was_lost_and_which_checkpoint_is_kept():
    import io
    import types

    from simclr.training.interrupts import Interrupted
    from simclr.training.runfolder import Checkpoints
    run = types.SimpleNamespace(step=7, source="somewhere")   # resumed at step 7, none since
    checkpoints, stream = Checkpoints("unused.npz", run, stop=None), io.StringIO()
    checkpoints.say_if_unsaved(Interrupted(2, saved=True), stream)
    assert stream.getvalue() == ""
    checkpoints.say_if_unsaved(Interrupted(2, saved=False), stream)
    assert stream.getvalue() == ("stopped at once: step 8 was not finished; the checkpoint of "
                                 "step 7 is kept\n")
