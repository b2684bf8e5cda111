"""Data-parallel training over real MPI processes (mpiexec, Open MPI from PyPI; skipped where
mpiexec or mpi4py is missing): 2 and 3 ranks equal one process with the global batch in
float64; `mpiexec python -m simclr.train --distributed` trains, resumes and writes its folder
from rank 0 alone; a rank's failure ends the job in bounded time; without mpi4py,
--distributed says how to install it."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy
import pytest

from helpers import relative_error

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
MPIEXEC = shutil.which("mpiexec") or (
    os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")) else None)
needs_mpi = pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                               reason="mpiexec or mpi4py is not installed (the mpi extra)")


def mpiexec(ranks, *command, timeout=300):
    """`command` on `ranks` processes, one CPU thread each, more ranks than cores allowed;
    as root too (Open MPI refuses root unless told, as in a container)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONPATH=REPO,
               OMPI_MCA_rmaps_base_oversubscribe="1")
    return subprocess.run([MPIEXEC, "--oversubscribe", "-n", str(ranks), sys.executable,
                           *command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_ranks_over_mpi_equal_one_process_with_the_global_batch(tmp_path, size, threads):
    """tests/mpi/steps.py: three LARS steps of test_distributed's tiny model, every rank with
    its share of the views, against the same steps in this process on all of them: the loss,
    the averaged gradients, the running statistics and the weights, to 1e-10 in float64."""
    import test_distributed as steps
    from nn.runtime import threads as cpu_threads
    finished = mpiexec(size, os.path.join(TESTS, "mpi", "steps.py"), str(tmp_path))
    assert finished.returncode == 0, finished.stderr[-3000:]
    cpu_threads.set_num_threads(1)
    losses, grads, buffers, weights = steps._steps(steps._views(size))
    ranks = [numpy.load(tmp_path / f"rank{rank}.npz") for rank in range(size)]
    assert relative_error(numpy.mean([r["losses"] for r in ranks], axis=0), losses) < 1e-10
    scale = max(numpy.abs(g).max() for g in grads)
    weight_scale = max(numpy.abs(w).max() for w in weights)
    for r in ranks:
        for i, grad in enumerate(grads):
            assert numpy.abs(r[f"grad{i}"] - grad).max() < 1e-10 * scale
        for i, weight in enumerate(weights):
            assert numpy.abs(r[f"weight{i}"] - weight).max() < 1e-10 * weight_scale
        for name, buffer in buffers.items():
            assert relative_error(r[f"buffer:{name}"], buffer) < 1e-10, name


TINY = ["--dataset", "synthetic", "--synthetic-size", "64", "--arch", "resnet18", "--width",
        "0.0625", "--batch-size", "16", "--epochs", "2", "--val-fraction", "0.25",
        "--knn-every", "1", "--seed", "3"]


def _losses(folder):
    return [r["loss"] for r in map(json.loads, open(folder / "metrics.jsonl")) if "loss" in r]


@needs_mpi
def test_simclr_train_on_two_ranks_trains_resumes_and_writes_from_rank_0(tmp_path):
    """Two ranks of 8 images against one process of 16: the same losses (float32, other sums),
    one folder written by rank 0, a k-NN record per epoch, and a resume on two ranks that
    continues where the run stopped; the same run resumed by one process (another number of
    ranks) continues it as well."""
    one = subprocess.run([sys.executable, "-m", "simclr.train", *TINY, "--threads", "1",
                          "--out", str(tmp_path / "one")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = mpiexec(2, "-m", "simclr.train", *TINY, "--distributed", "--max-steps", "3",
                  "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    alone = subprocess.run([sys.executable, "-m", "simclr.train", "--resume",
                            str(tmp_path / "two"), "--out", str(tmp_path / "alone"),
                            "--threads", "1"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert relative_error(numpy.array(_losses(tmp_path / "alone")),
                          numpy.array(_losses(tmp_path / "one"))) < 1e-4
    assert sorted(os.listdir(tmp_path / "two")) == [".lock", "checkpoint.npz", "config.json",
                                                    "loss.png", "metrics.jsonl"]
    assert "distributed" not in json.load(open(tmp_path / "two" / "config.json"))
    resumed = mpiexec(2, "-m", "simclr.train", "--resume", str(tmp_path / "two"),
                      "--distributed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert relative_error(numpy.array(_losses(tmp_path / "two")),
                          numpy.array(_losses(tmp_path / "one"))) < 1e-4
    records = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert sum("knn_accuracy" in r for r in records) == 2
    assert two.stderr.count("trained steps") == 1  # rank 0 alone speaks


@needs_mpi
def test_a_mistake_is_one_line_from_rank_0_and_every_rank_stops(tmp_path):
    bad = mpiexec(2, "-m", "simclr.train", *TINY, "--distributed", "--batch-size", "15",
                  "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.startswith("python -m")]
    assert lines == ["python -m simclr.train: error: --batch-size 15 is not a multiple of the "
                     "2 ranks: each rank takes an equal share of every batch"]


@needs_mpi
def test_a_rank_that_fails_during_training_ends_the_job_naming_it(tmp_path):
    start = time.monotonic()
    crashed = mpiexec(2, os.path.join(TESTS, "mpi", "crash.py"), *TINY, "--distributed",
                      "--out", str(tmp_path / "run"), timeout=120)
    assert time.monotonic() - start < 120
    assert crashed.returncode != 0
    assert "rank 1 of 2 failed: ArithmeticError: the third step of rank 1 failed" in \
        crashed.stderr


def test_distributed_without_mpi4py_says_how_to_install(tmp_path, monkeypatch, capsys):
    from simclr import train
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    status = train.main(TINY + ["--distributed", "--out", str(tmp_path / "run")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[mpi]'" in err and "mpiexec" in err
