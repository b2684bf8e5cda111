"""bench/gpu_check.sh, the one command for a lent GPU, as CI sees it: without a GPU every stage
is skipped and the summary says so. And the driver's own machinery, which a GPU run relies on
and which runs the same on a CPU: a stage's clock, its timeout (its child processes ended
too), its failures, and the kernel archive with its size limit. Last, the arithmetic of the
GPU peak memory that bench.step reports, on a stand-in for CuPy's memory pool."""
import json
import os
import subprocess
import sys
import tarfile
import time
from types import SimpleNamespace

import pytest

from autograd import Function
from bench import common, gpu_check, gpu_out
from bench.gpu_stages import Stage

SCRIPT = os.path.join(gpu_check.REPO_ROOT, "bench", "gpu_check.sh")
STAGE_NAMES = [stage.name for stage in gpu_check.plan("", "python", set())]


def run_script(*args, env=None):
    environment = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", SCRIPT, *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=60)


def read_summary(out):
    return json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text()


def test_without_a_gpu_every_stage_is_skipped_and_the_summary_names_each(tmp_path):
    if gpu_check.find_gpu(sys.executable)[0]:
        pytest.skip("this machine has a GPU: the check would really run")
    out = tmp_path / "out"
    finished = run_script(out, "--deadline", "60")
    assert finished.returncode == 0, finished.stderr
    summary, markdown = read_summary(out)
    assert [stage["name"] for stage in summary["stages"]] == STAGE_NAMES
    assert all(stage["status"] == "skipped: no GPU" for stage in summary["stages"])
    for name in STAGE_NAMES:
        assert f"| {name} | skipped: no GPU |" in markdown
    assert summary["finished"] and summary["gpu"].startswith("none: ")
    # the device tool brings back at most 8 files from OUT
    assert sorted(os.listdir(out)) == ["logs.tar.gz", "summary.json", "summary.md"]


def test_cupy_without_a_usable_device_also_skips_every_stage(tmp_path):
    fake = tmp_path / "fake" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "class cuda:\n"
        "    class runtime:\n"
        "        @staticmethod\n"
        "        def getDeviceCount():\n"
        "            raise RuntimeError('cudaErrorNoDevice: no CUDA-capable device')\n")
    out = tmp_path / "out"
    finished = run_script(out, "--deadline", "60", env={"PYTHONPATH": str(tmp_path / "fake")})
    assert finished.returncode == 0, finished.stderr
    summary, _ = read_summary(out)
    assert "no CUDA GPU is usable" in summary["gpu"] and "cudaErrorNoDevice" in summary["gpu"]
    assert {stage["status"] for stage in summary["stages"]} == {"skipped: no GPU"}


@pytest.mark.parametrize("args, message", [
    ([], "usage: bash bench/gpu_check.sh OUT"),
    (["{file}"], "is a file, not a folder"),
    (["{out}", "--only", "tests,nonsense"], "no stage named nonsense"),
    (["{out}", "--deadline", "10"], "--deadline must be more than"),
])
def test_a_bad_argument_is_one_line_and_exit_status_2(tmp_path, args, message):
    (tmp_path / "file").write_text("")
    args = [arg.format(file=tmp_path / "file", out=tmp_path / "out") for arg in args]
    finished = run_script(*args)
    assert finished.returncode == 2
    assert message in finished.stderr and len(finished.stderr.strip().splitlines()) == 1


def test_a_stage_gets_its_budget_and_the_slack_the_later_stages_leave():
    assert gpu_check.stage_timeout(500, 60, later_budgets=200) == 300  # slack borrowed
    assert gpu_check.stage_timeout(250, 60, later_budgets=200) == 60   # its own budget
    assert gpu_check.stage_timeout(40, 60, later_budgets=200) == 40    # never past the deadline
    assert gpu_check.stage_timeout(-3, 60, later_budgets=0) == 0


def test_the_budgets_fit_the_default_deadline_and_each_stage_needs_an_earlier_one():
    stages = gpu_check.plan("/work", "python", {"xdist", "pytest_timeout"})
    assert sum(stage.budget for stage in stages) <= (gpu_check.DEADLINE_SECONDS
                                                     - gpu_check.RESERVE_SECONDS)
    assert len(set(STAGE_NAMES)) == len(STAGE_NAMES)
    for index, stage in enumerate(stages):
        assert stage.needs is None or stage.needs in STAGE_NAMES[:index], stage.name
    tests = next(stage for stage in stages if stage.name == "tests").commands[0]
    assert tests[tests.index("-n") + 1] == "8" and tests[tests.index("--timeout") + 1] == "60"
    assert "-v" in tests and "--durations" in tests   # every test named, the slowest listed
    assert tests[tests.index("--ignore") + 1] == "tests/test_cuda_kernels.py"
    without = next(s for s in gpu_check.plan("/w", "python", set()) if s.name == "tests")
    assert "-n" not in without.commands[0] and "--timeout" not in without.commands[0]
    # what a tight first call must bring back comes before anything optional
    assert STAGE_NAMES[:6] == ["probe", "kernels", "selfcheck", "train",
                               "step-resnet50-tf32-off", "tests"]


def test_the_micro_batch_stage_runs_last_resnet50_at_4096_in_128s_and_tiny_in_ci():
    from bench.gpu_stages import TINY
    full, tiny = (gpu_check.plan("/w", "py", set(), sizes=s)[-1].commands[0] for s in [
        gpu_check.FULL, TINY])
    flags = "--archs resnet50 --width 1 --batches 4096 --micro-batch 128 --plain-up-to 128"
    assert full[:3] == ["py", "-m", "bench.micro_batch"] and flags in " ".join(full)
    assert "--archs resnet18 --width 0.0625 --batches 8 --micro-batch 4" in " ".join(tiny)
    assert full[-2:] == ["--json", "/w/micro-batch/micro-batch.json"]


def test_a_stage_that_hangs_costs_only_its_own_time_and_each_result_reaches_out(
        tmp_path, monkeypatch):
    """The whole driver with a stand-in GPU and stand-in stages: the one that hangs is ended
    at its budget, the next still runs (and adds a kernel, which is archived into OUT), the
    one that needs the hung stage is skipped; with no time left, every stage is skipped."""
    python = sys.executable
    add_kernel = ("import os; folder = os.environ['CUPY_CACHE_DIR']; "
                  "os.makedirs(folder, exist_ok=True); "
                  "open(os.path.join(folder, 'k_2.cubin'), 'w').write('kernel')")

    def stand_in_plan(work, python_, plugins, *settings):
        return [Stage("hangs", 1.5, [[python, "-c", "import time; time.sleep(60)"]]),
                Stage("after", 1.5, [[python, "-c", add_kernel]]),
                Stage("needs-hangs", 1.5, [[python, "-V"]], needs="hangs")]

    monkeypatch.setattr(gpu_check, "plan", stand_in_plan)
    monkeypatch.setattr(gpu_check, "find_gpu", lambda python_: (True, "Stand-in GPU"))
    monkeypatch.setattr(gpu_check, "KERNEL_CACHE_DIR", str(tmp_path / "cache" / "cupy"))
    monkeypatch.setattr(gpu_check, "KERNEL_ARCHIVE", str(tmp_path / "cache" / "kernels.tar.gz"))
    monkeypatch.setattr(gpu_check, "RESERVE_SECONDS", 0)
    monkeypatch.setattr(gpu_check, "MIN_STAGE_SECONDS", 0.5)

    out = tmp_path / "out"
    assert gpu_check.Check(str(out), deadline=4).run() == 1
    summary, markdown = read_summary(out)
    status = {stage["name"]: stage["status"] for stage in summary["stages"]}
    assert status["hangs"].startswith("timed out after 2 s"), status
    assert status["after"] == "passed"
    assert status["needs-hangs"] == "skipped: hangs did not pass"
    assert summary["finished"] and "1 kernel file saved" in markdown
    assert sorted(os.listdir(out)) == ["kernels.tar.gz", "logs.tar.gz", "summary.json",
                                       "summary.md"]
    with tarfile.open(out / "kernels.tar.gz") as tar:
        assert tar.getnames() == ["k_2.cubin"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"hangs/log.txt", "after/log.txt"} <= set(tar.getnames())

    late = tmp_path / "late"
    assert gpu_check.Check(str(late), deadline=0.3).run() == 0
    summary, _ = read_summary(late)
    assert [stage["status"] for stage in summary["stages"]] == [
        "skipped: deadline", "skipped: deadline", "skipped: hangs did not pass"]


def alive(pid):
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_stage_past_its_timeout_is_ended_with_the_processes_it_started(tmp_path):
    sleeper = ("import subprocess, sys, time\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
               "print('pid:', child.pid, flush=True)\n"
               "time.sleep(60)\n")
    stage = Stage("sleepy", 10, [[sys.executable, "-c", sleeper], [sys.executable, "-V"]])
    start = time.monotonic()
    gpu_check.run_stage(stage, str(tmp_path), timeout=1.5)
    assert time.monotonic() - start < 1.5 + gpu_check.KILL_GRACE_SECONDS + 2
    assert stage.status.startswith("timed out after 2 s (command 1 of 2")
    log = (tmp_path / "sleepy" / "log.txt").read_text()
    pid = int(next(line for line in log.splitlines() if line.startswith("pid: "))[5:])
    ends = time.monotonic() + 5
    while alive(pid) and time.monotonic() < ends:
        time.sleep(0.05)
    assert not alive(pid), "the stage's own child outlived its timeout"
    assert "Python 3" not in log  # the second command never started


def test_a_failed_command_stops_its_stage_unless_the_stage_keeps_going(tmp_path):
    commands = [[sys.executable, "-c", "raise SystemExit(3)"],
                [sys.executable, "-c", "print('second ran')"],
                ["no-such-program-gpu-check"]]
    stopping = Stage("stopping", 10, commands)
    gpu_check.run_stage(stopping, str(tmp_path), timeout=30)
    assert stopping.status.startswith("failed: exit status 3 (command 1 of 3")
    assert "second ran" not in (tmp_path / "stopping" / "log.txt").read_text()
    going = Stage("going", 10, commands, keep_going=True)
    gpu_check.run_stage(going, str(tmp_path), timeout=30)
    log = (tmp_path / "going" / "log.txt").read_text()
    assert "second ran" in log and "cannot start no-such-program-gpu-check" in log
    assert "exit status 3" in going.status and "exit status 127 (command 3 of 3" in going.status
    passing = Stage("passing", 10, [[sys.executable, "-c", "print('fine')"]])
    gpu_check.run_stage(passing, str(tmp_path), timeout=30)
    assert passing.status == "passed" and passing.seconds >= 0


def test_the_kernel_archive_round_trips_and_a_too_large_one_keeps_the_old(tmp_path):
    cache, archive = tmp_path / "cupy", tmp_path / "keep" / "kernels.tar.gz"
    (cache / "sub").mkdir(parents=True)
    kernels = {"a_2.cubin": os.urandom(20_000), "sub/b_2.cubin": os.urandom(30_000)}
    for name, content in kernels.items():
        (cache / name).write_bytes(content)
    saved, line = gpu_out.save_kernels(str(cache), str(archive), limit=2 ** 20)
    assert saved, line
    before = archive.read_bytes()

    restored = tmp_path / "restored"
    assert "2 kernel files (" in gpu_out.restore_kernels(str(archive), str(restored))
    assert {name: (restored / name).read_bytes() for name in kernels} == kernels

    (cache / "c_2.cubin").write_bytes(os.urandom(40_000))  # random bytes do not compress
    saved, line = gpu_out.save_kernels(str(cache), str(archive), limit=60_000)
    assert not saved and "over the" in line
    assert archive.read_bytes() == before and not os.path.exists(str(archive) + ".partial")
    assert not gpu_out.save_kernels(str(tmp_path / "empty"), str(archive))[0]
    assert "no archive" in gpu_out.restore_kernels(str(tmp_path / "none.tar.gz"),
                                                     str(restored))


def test_an_archive_that_points_outside_the_cache_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "payload", arcname="../escaped")
    line = gpu_out.restore_kernels(str(archive), str(tmp_path / "cache"))
    assert "could not unpack" in line and not (tmp_path / "escaped").exists()


def test_the_log_tail_keeps_the_last_drawing_of_a_redrawn_line(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("first\nepoch 1 [#...]\repoch 1 [####]\nlast\n")
    assert gpu_out.log_tail(str(log), lines=2) == "epoch 1 [####]\nlast"
    assert gpu_out.log_tail(str(tmp_path / "missing.txt")) == ""


def test_device_memory_follows_the_pool_to_its_peak_inside_the_step(monkeypatch):
    hooks = []

    class MemoryHook:  # CuPy's: registered for the `with` block, called on every malloc/free
        def __enter__(self):
            hooks.append(self)
            return self

        def __exit__(self, *exc_info):
            hooks.remove(self)

    class Pool:
        used = 1000  # the model and the optimiser's state, there before the step

        def used_bytes(self):
            return self.used

        def total_bytes(self):
            return 8192

        def malloc(self, size, fails=False):
            self.used += 0 if fails else size
            for hook in hooks:
                hook.malloc_postprocess(device_id=0, size=size, mem_size=size,
                                        mem_ptr=0 if fails else 1, pmem_id=1)

        def free(self, size):
            self.used -= size
            for hook in hooks:
                hook.free_postprocess(device_id=0, mem_size=size, mem_ptr=1, pmem_id=1)

    pool = Pool()
    device = SimpleNamespace(synchronize=lambda: None)
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace(
        get_default_memory_pool=lambda: pool,
        cuda=SimpleNamespace(MemoryHook=MemoryHook, Device=lambda: device)))

    def step():  # activations kept for backward, freed by the end: the peak is inside
        pool.malloc(300)
        pool.malloc(200)
        pool.malloc(5000, fails=True)
        pool.free(300)
        pool.malloc(100)
        pool.free(200)

    memory = common.device_memory_mib(step, "cupy")
    assert memory == {"peak": 1500 / 2 ** 20, "held": 8192 / 2 ** 20}
    assert hooks == []  # the hook is gone after the step


# ----- whatever fails, something useful comes back ------------------------------------------

FAKE_BENCH = '''
import json, sys, time
side = sys.argv[sys.argv.index("--child") + 1]
if side == "ours":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("CUDADriverError: planted: no kernel image for this device", file=sys.stderr)
    sys.exit(3)
if side == "torch-channels-last":
    time.sleep(60)
with open(sys.argv[sys.argv.index("--result") + 1], "w") as file:
    json.dump({"side": side, "step_times": [0.5]}, file)
'''


def test_each_side_of_a_comparison_fails_alone_and_says_why(tmp_path, monkeypatch, capsys):
    """A planted failure of ours (exit status 3) and a hang of channels_last (past the side's
    timeout): both recorded with why, and PyTorch NCHW still measured in every round."""
    if not common.torch_available():
        pytest.skip("the comparison's other sides need PyTorch")
    (tmp_path / "fake_bench.py").write_text(FAKE_BENCH)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    args = SimpleNamespace(compare="torch", rounds=2, threads=1, tf32="off", side_timeout=2)
    failures = {}
    results, _ = common.run_sides("fake_bench", args, [], failures)
    assert list(results) == ["torch-nchw"] and len(results["torch-nchw"]) == 2
    assert failures["ours"].startswith("failed: exit status 3: ")
    assert "CUDADriverError: planted" in failures["ours"]
    assert failures["torch-channels-last"].startswith("failed: timed out after 2 s")
    assert "planted" in capsys.readouterr().err   # the child's stderr passed through
    with pytest.raises(common.ChildFailed, match="exit status 3"):
        common.run_sides("fake_bench", args, [])   # without a record, the first failure raises


def test_the_step_report_names_a_failed_side_and_still_shows_the_others():
    from bench import step
    args = step.parse_args(["--backend", "cupy", "--compare", "torch", "--batch-size", "4"])
    run = {"step_times": [0.5, 0.7], "flops_per_step": 1e9, "gemm_gflops": 100.0,
           "peak_rss_mib": 10.0}
    rows = step.summarize(args, {"torch-nchw": [run]})
    facts = {"cpu": "cpu", "cores": 1, "load_average": [0], "date": "today", "numpy": "2",
             "numpy_blas": "blas"}
    text = step.report(args, rows, facts, {"ours": "failed: exit status 1: CUDADriverError"})
    assert "| PyTorch NCHW | 0.600" in text and "ours: failed: exit status 1" in text


class WrongGradient(Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, grad):
        return grad   # should be 2 grad


def test_selfcheck_reports_every_case_and_the_exception_of_each_that_raised(
        monkeypatch, capsys):
    import nn.functional as F
    from nn import selfcheck

    def does_not_compile(*args, **kwargs):
        raise RuntimeError("planted: kernel relu does not compile")

    monkeypatch.setattr(F, "relu", does_not_compile)
    monkeypatch.setattr(F, "log_softmax", lambda a, dim: WrongGradient.apply(a))
    assert selfcheck.main(["--quick"]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert sum(line.startswith(("ok ", "FAIL ", "ERROR ")) for line in lines) == 15
    assert any(line.startswith("ERROR relu") and "RuntimeError: planted" in line
               for line in lines)
    assert any(line.startswith("FAIL  log_softmax") for line in lines)
    assert "15 cases: 13 passed, 1 failed, 1 raised" in out.out
    # the last lines name each case that went wrong, and where a raise came from
    assert lines[-2].startswith("  ERROR relu: RuntimeError: planted")
    assert lines[-2].endswith(f"(at {__file__}:{does_not_compile.__code__.co_firstlineno + 1})")
    assert lines[-1].startswith("  FAIL log_softmax: ")   # the check's own first line
    assert "Traceback" in out.err   # the whole story in the log


def test_a_long_log_keeps_its_head_and_tail_and_a_checkpoint_is_named(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "tests").mkdir(parents=True)
    out.mkdir()
    lines = [f"line {number}: {'x' * 40}" for number in range(2000)]
    (work / "tests" / "log.txt").write_text("\n".join(lines) + "\n")
    (work / "run").mkdir()
    (work / "run" / "checkpoint.npz").write_bytes(os.urandom(20_000))
    monkeypatch.setattr(gpu_out, "BUNDLED_FILE_LIMIT", 10_000)
    monkeypatch.setattr(gpu_out, "LOG_HEAD_BYTES", 1_000)
    monkeypatch.setattr(gpu_out, "LOG_TAIL_BYTES", 2_000)
    gpu_out.bundle(str(work), str(out))
    with tarfile.open(out / "logs.tar.gz") as tar:
        log = tar.extractfile("tests/log.txt").read().decode()
        left_out = tar.extractfile("left-out.txt").read().decode()
    kept = log.splitlines()
    assert kept[0] == lines[0] and kept[-1] == lines[-1]
    mark = next(line for line in kept if "cut here" in line)
    first_cut, last_kept = lines.index(kept[kept.index(mark) - 2]) + 1, kept.index(mark) + 2
    cut_lines = lines.index(kept[last_kept]) - first_cut
    assert f"({cut_lines} lines) cut here" in mark
    cut_bytes = sum(len(line) + 1 for line in lines[first_cut:first_cut + cut_lines])
    assert f"[... {cut_bytes} bytes" in mark
    assert "run/checkpoint.npz: 20000 bytes" in left_out
