"""bench/gpu_check.sh --rehearse, the dry run that runs: every stage of the GPU check on the
CPU's rehearsal of a GPU (bench/rehearse.py), so that the stages' commands, paths, timeouts,
needs and summaries have run before a GPU is lent. And the wrapper itself: a program on the
rehearsal, what it says where the rehearsal cannot stand in, and carried wheels found first.
Last, bench.micro_batch, the micro-batch stage's program, on stand-in measurements: what a run
stopped part way keeps, and which failures are errors."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from bench import gpu_check, micro_batch
from bench.common import NOT_REHEARSED, NOTES_VARIABLE
from bench.gpu_stages import rehearsed

SCRIPT = os.path.join(gpu_check.REPO_ROOT, "bench", "gpu_check.sh")


def run_script(*args, env=None, timeout=240):
    environment = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", SCRIPT, *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=timeout)


def rehearse(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "bench.rehearse", *argv], capture_output=True,
                          text=True, cwd=gpu_check.REPO_ROOT, env=dict(os.environ, **(env or {})),
                          timeout=60)


def test_the_rehearsal_runs_every_stage_to_its_end_and_out_holds_each(tmp_path):
    out = tmp_path / "out"
    finished = run_script(out, "--rehearse", "--tiny", "--deadline", "200")
    summary = json.loads((out / "summary.json").read_text())
    markdown = (out / "summary.md").read_text()
    status = {stage["name"]: stage["status"] for stage in summary["stages"]}
    report = "\n".join(f"{name}: {text}" for name, text in status.items()) + finished.stderr
    assert summary["finished"] and summary["rehearsal"] == gpu_check.REHEARSAL, report
    assert "**rehearsal: numbers are NumPy's, not a GPU's**" in markdown
    # without the mpi extra (no mpiexec on PATH) the nccl stage skips, and says why
    no_mpi = shutil.which("mpiexec") is None
    assert all(text.startswith(("passed", "not rehearsed")) for name, text in status.items()
               if not (name == "nccl" and no_mpi)), report
    assert finished.returncode == 0, report
    assert all(stage["seconds"] is not None and stage["timeout_s"] for stage in
               summary["stages"] if not stage["status"].startswith("skipped"))
    # what the rehearsal cannot stand in for is said, stage by stage
    assert status["nccl"].startswith("skipped: no MPI runtime" if no_mpi
                                     else "not rehearsed: cupy.cuda.nccl"), report
    assert "PyTorch NCHW: not rehearsed: PyTorch on CUDA" in status["step-resnet18"]
    assert "not rehearsed: nvidia-smi (a program, not Python)" in status["probe"]
    assert "not rehearsed: cupy.show_config" in status["probe"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
        tests_log = tar.extractfile("tests/log.txt").read().decode()
        step = json.load(tar.extractfile("step-resnet18/step.json"))
        micro = json.load(tar.extractfile("micro-batch/micro-batch.json"))
    assert {f"{name}/log.txt" for name, text in status.items()
            if not text.startswith("skipped")} <= names
    assert {"probe/probe.json", "run/metrics.jsonl", "tests/junit.xml"} <= names
    assert "::test_" in tests_log and " PASSED" in tests_log and "slowest" in tests_log
    assert step["failed"]["torch-nchw"].startswith("not rehearsed")
    assert "bench.rehearse" in summary["stages"][0]["commands"][0]
    # the micro-batch table ends its log in summary.md; its bench.step processes rehearsed too
    assert re.search(r"\| resnet18 \| 8 \| [\d.]+ +\| [\d.]+ +\| [\d.]+ +\| -?\d+% +\|"
                     r"( \d+ +\|){3} \d\.\d\dx +\|", markdown), markdown[-2000:]
    assert micro["finished"] and all(
        result["command"].startswith("python -m bench.rehearse bench.step ")
        for result in micro["rows"][0].values() if isinstance(result, dict))


def test_a_program_on_the_rehearsal_says_what_it_cannot_stand_in_for(tmp_path):
    notes = tmp_path / "notes.txt"
    for argv, what in [(["--program", "nvidia-smi"], "nvidia-smi (a program, not Python)"),
                       (["-c", "from cupy.cuda import nccl"], "cupy.cuda.nccl (CuPy's own"),
                       (["-c", "import cupy; cupy.show_config()"], "cupy.show_config")]:
        finished = rehearse(*argv, env={NOTES_VARIABLE: str(notes)})
        assert finished.returncode == NOT_REHEARSED, finished.stderr
        assert finished.stderr.strip().splitlines()[-1].startswith(f"not rehearsed: {what}")
    assert len(notes.read_text().splitlines()) == 3
    finished = rehearse("-c", "import cupy, numpy; x = cupy.ones(3); print(float(x.sum()), "
                              "type(x).__module__, hasattr(cupy, 'ElementwiseKernel'))")
    assert finished.returncode == 0 and finished.stdout.split() == ["3.0", "cupy._core.core",
                                                                   "False"]
    assert "1 host synchronisations" in finished.stderr


def test_a_test_that_needs_what_the_rehearsal_lacks_is_skipped_with_the_reason(tmp_path):
    (tmp_path / "test_needs.py").write_text(
        "import cupy\n"
        "def test_memory_pool():\n"
        "    cupy.get_default_memory_pool()\n"
        "def test_arrays():\n"
        "    assert float(cupy.arange(4).sum()) == 6\n")
    finished = rehearse("pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        str(tmp_path / "test_needs.py"))
    assert finished.returncode == 0, finished.stdout
    assert "1 passed, 1 skipped" in finished.stdout
    assert "not rehearsed: cupy.get_default_memory_pool (CuPy's own)" in finished.stdout


def test_commands_take_the_wrapper_where_python_runs():
    python = "/usr/bin/python3"
    assert rehearsed([python, "-m", "nn.selfcheck", "--backend", "cupy"], python) == [
        python, "-m", "bench.rehearse", "nn.selfcheck", "--backend", "cupy"]
    assert rehearsed([python, "-c", "code"], python) == [python, "-m", "bench.rehearse", "-c",
                                                         "code"]
    assert rehearsed(["/bin/mpiexec", "-n", "1", python, "-m", "simclr.train"], python) == [
        "/bin/mpiexec", "-n", "1", python, "-m", "bench.rehearse", "simclr.train"]
    assert rehearsed(["nvidia-smi"], python) == [python, "-m", "bench.rehearse", "--program",
                                                 "nvidia-smi"]


def test_the_nccl_stage_needs_mpiexec_and_asks_open_mpi_alone_to_oversubscribe():
    def nccl(mpi):
        return next(s for s in gpu_check.plan("/w", "py", set(), mpi) if s.name == "nccl")

    assert nccl(None).skip.startswith("skipped: no MPI runtime")
    open_mpi = nccl({"mpiexec": "/x/mpiexec", "flavour": "Open MPI"})
    assert open_mpi.skip is None and open_mpi.commands[0][:4] == [
        "/x/mpiexec", "--oversubscribe", "-n", "1"]
    assert nccl({"mpiexec": "/y/mpiexec", "flavour": "MPICH"}).commands[0][:3] == [
        "/y/mpiexec", "-n", "1"]


def fake_mpi_wheel(folder):
    """A wheel whose one script is an `mpiexec` of MPICH's kind that runs its command."""
    script = ('#!/bin/sh\nif [ "$1" = --version ]; then echo "HYDRA build details:"; '
              'echo "    Version: 4.2.0 (a stand-in for MPICH)"; exit 0; fi\n'
              'while [ "$1" != -n ]; do shift; done; shift 2; exec "$@"\n')
    path = folder / "fake_mpi-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("fake_mpi/__init__.py", "")
        executable = zipfile.ZipInfo("fake_mpi-1.0.data/scripts/mpiexec")
        executable.external_attr = 0o100755 << 16   # a file, rwxr-xr-x: pip keeps that mode
        wheel.writestr(executable, script)
        wheel.writestr("fake_mpi-1.0.dist-info/METADATA",
                       "Metadata-Version: 2.1\nName: fake-mpi\nVersion: 1.0\n")
        wheel.writestr("fake_mpi-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                       "Root-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("fake_mpi-1.0.dist-info/RECORD", "")
    return path


def test_carried_wheels_come_first_and_the_mpi_they_bring_decides_the_nccl_command(tmp_path):
    (tmp_path / "wheels").mkdir()
    fake_mpi_wheel(tmp_path / "wheels")
    out = tmp_path / "out"
    finished = run_script(out, "--rehearse", "--tiny", "--only", "probe,nccl",
                          env={"GPU_CHECK_WHEELS": str(tmp_path / "wheels")})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wheels"].startswith("1 wheel(s) from "), finished.stderr
    nccl = next(stage for stage in summary["stages"] if stage["name"] == "nccl")
    mpiexec, *flags = nccl["commands"][0].split()[:3]
    assert mpiexec.startswith(summary["wheels"].split(" into ")[1]) and flags == ["-n", "1"]
    assert nccl["status"].startswith("not rehearsed: cupy.cuda.nccl"), nccl
    with tarfile.open(out / "logs.tar.gz") as tar:
        probe = json.load(tar.extractfile("probe/probe.json"))
    assert probe["mpi"]["runtime"]["flavour"] == "MPICH"


def stand_in_measure(fail=(), stop_at=None):
    """bench.micro_batch.measure without processes: ("micro" or "plain", B) in `fail` fails
    (out of memory), at `stop_at` the run is stopped (the stage's timeout)."""
    def measure(args, arch, batch, micro_batch=None):
        kind = "plain" if micro_batch is None else "micro"
        if (kind, batch) == stop_at:
            raise KeyboardInterrupt
        if (kind, batch) in fail:
            return {"failed": "out of memory", "command": "python -m bench.step"}
        return {"images_per_s": 100.0 if kind == "plain" else 75.0, "peak_of": "GPU",
                "peak_mib": float(batch if kind == "plain" else 4), "command": "python -m ..."}
    return measure


def test_bench_micro_batch_keeps_what_it_measured_and_fails_on_its_own_steps_alone(
        tmp_path, monkeypatch, capsys):
    argv = ["--archs", "resnet50", "--batches", "8,16", "--micro-batch", "4", "--plain-up-to",
            "16", "--json", str(tmp_path / "micro.json")]
    monkeypatch.setattr(micro_batch, "measure", stand_in_measure(fail={("plain", 16)}))
    assert micro_batch.main(argv) == 0   # a plain step of B that does not fit is no error
    printed = capsys.readouterr()
    table = [" ".join(line.split()) for line in printed.out.splitlines()]
    assert "| resnet50 | 16 | 75.0 | failed | 100.0 | - | 4 | failed | 4 | 1.00x |" in table
    assert "| resnet50 | 8 | 75.0 | 100.0 | 100.0 | 33% | 4 | 8 | 4 | 1.00x |" in table
    assert "GPU peak MiB (M)" in printed.out
    assert "resnet50 B = 16, plain: failed: out of memory" in printed.err
    monkeypatch.setattr(micro_batch, "measure", stand_in_measure(fail={("micro", 16)}))
    assert micro_batch.main(argv) == 1
    monkeypatch.setattr(micro_batch, "measure", stand_in_measure(stop_at=("micro", 16)))
    with pytest.raises(KeyboardInterrupt):
        micro_batch.main(argv)
    kept = json.loads((tmp_path / "micro.json").read_text())
    assert not kept["finished"] and [row["batch"] for row in kept["rows"]] == [8]
    assert kept["plain_of_m"]["resnet50"]["images_per_s"] == 100.0


@pytest.mark.parametrize("argv, message", [
    (["--batches", "8,12", "--micro-batch", "8"],
     "--micro-batch 8: expected a divisor of every batch (at least 2) in --batches, not of 12"),
    (["--archs", "resnet50,resnet51"], "no architecture named resnet51"),
    (["--batches", "8,x"], "--batches 8,x: expected a comma list of whole numbers"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
])
def test_bench_micro_batch_mistakes_are_one_line_naming_the_flag(argv, message, capsys):
    from simclr import cli
    assert cli.run(micro_batch.main, argv, prog="python -m bench.micro_batch") == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and message in said, said
