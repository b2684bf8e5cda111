"""The benchmark harness runs end to end on tiny settings. Speed is never asserted: these
tests only check that every program runs and reports what it promises."""
import json
import math
import time

import numpy
import pytest

import nn
from autograd import Function, Tensor
from bench import ops, pair, profile, step
from bench.flops import forward_flops

TINY_STEP = ["--arch", "resnet18", "--width", "0.0625", "--batch-size", "4", "--warmup", "1",
             "--steps", "2", "--gemm-size", "128"]


def test_step_harness_reports_a_tiny_resnet18_step(tmp_path, capsys):
    path = tmp_path / "step.json"
    assert step.main(TINY_STEP + ["--json", str(path)]) == 0
    result = json.loads(path.read_text())
    run, ours = result["runs"]["ours"][0], result["summary"]["ours"]
    assert len(run["step_times"]) == 2 and len(run["augment_times"]) == 2
    assert math.isfinite(run["loss"])
    for key in ("images_per_s", "gflops", "gemm_gflops", "peak_rss_mib", "flops_per_step"):
        assert ours[key] > 0, key
    assert ours["images_per_s"] == 4 / ours["seconds_per_step"]["median"]
    assert "images/s" in capsys.readouterr().out


def test_forward_flops_count_two_per_multiply_add_of_convolutions_and_linears():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=0), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5, rng=0))
    conv = 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)   # 2 * outputs * window size
    linear = 2 * (2 * 5) * (4 * 8 * 8)        # 2 * outputs * in_features
    assert forward_flops(model, (2, 3, 8, 8)) == conv + linear
    assert "forward" not in model[0].__dict__ and model.training


def test_ops_harness_times_every_layer_forward_and_backward(tmp_path):
    path = tmp_path / "ops.json"
    argv = ["--batch-size", "4", "--warmup", "1", "--repeats", "2", "--compare", "none"]
    assert ops.main(argv + ["--json", str(path)]) == 0
    times = json.loads(path.read_text())["runs"]["ours"][0]
    assert set(times) == set(ops.LAYERS)
    assert all(len(seconds) == 2 and min(seconds) > 0 for seconds in times.values())


def test_op_profiler_charges_convolutions_by_kernel_and_restores_every_op():
    originals = {cls: (cls.__dict__.get("forward"), cls.__dict__.get("backward"))
                 for cls in profile._subclasses(Function)}
    x = Tensor(numpy.ones((2, 3, 6, 6), "float32"), requires_grad=True)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False, rng=0)
    with profile.OpProfiler(lambda: None) as profiler:
        conv(x).sum().backward()
    labels = {label for label, _ in profiler.seconds}
    assert any("conv" in label.lower() and label.endswith("3x3/2") for label in labels), labels
    assert all(seconds >= 0 for seconds in profiler.seconds.values())
    assert {cls: (cls.__dict__.get("forward"), cls.__dict__.get("backward"))
            for cls in profile._subclasses(Function)} == originals


def test_profile_harness_runs_a_tiny_resnet18_step(capsys):
    assert profile.main(TINY_STEP + ["--steps", "1"]) == 0
    assert "rest: engine" in capsys.readouterr().out


def test_thread_use_counts_sections_and_the_wait_at_their_end(monkeypatch):
    from nn.runtime import threads

    before = threads.get_num_threads()
    threads.set_num_threads(2)
    try:
        if threads.get_num_threads() != 2:
            pytest.skip("NumPy's BLAS is not OpenBLAS here: the CPU kernels run one thread")
        original = threads.run
        with profile.ThreadUse(lambda: ("Conv2d 3x3", "backward")) as use:
            # the caller's share is instant, the other thread's takes 50 ms: the caller waits
            threads.run(lambda start, stop: start and time.sleep(0.05), [(0, 1), (1, 2)])
            threads.run(lambda start, stop: None, [(0, 1)])  # one range: not a section
        assert threads.run is original
        assert use.count == 1
        assert 0.04 < use.waiting <= use.sections < 1
        assert dict(use.waiting_by) == {("Conv2d 3x3", "backward"): use.waiting}
    finally:
        threads.set_num_threads(before)


def _in_a_git_checkout():
    import subprocess
    from bench.common import REPO_ROOT
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("op", ["batch_norm", "conv2d", "max_pool2d"])
def test_pair_harness_times_the_op_at_two_revisions_in_pairs(op, capsys):
    if not _in_a_git_checkout():
        pytest.skip("bench.pair reads old versions with git show")
    assert pair.main(["--op", op, "--old", "HEAD", "--repeats", "2", "--batch-size", "2",
                      "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(pair.cases(op, 2, numpy.random.default_rng(0)))
    assert "geometric mean" in lines[-1]


def test_pair_summary_sums_medians_and_averages_ratios_geometrically():
    results = {"fast": {"old": [1.0, 3.0, 2.0], "new": [1.0, 1.0, 1.0], "ratios": [1, 0.5, 0.25]},
               "slow": {"old": [2.0], "new": [4.0], "ratios": [2.0]}}
    total, geometric = pair.summarize(results)
    assert total == (1.0 + 4.0) / (2.0 + 2.0)
    assert geometric == pytest.approx(1.0)  # sqrt(0.5 * 2)
    timed = pair.paired_ratios(lambda side: {"old": 2.0, "new": 1.0}[side], 3)
    assert timed["ratios"] == [0.5, 0.5, 0.5] and len(timed["old"]) == 3


def test_scaling_harness_measures_one_and_two_ranks_and_projects(tmp_path, capsys):
    import importlib.util
    import shutil
    import sys
    import os
    from bench import scaling
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if importlib.util.find_spec("mpi4py") is None or not os.path.exists(mpiexec):
        pytest.skip("mpiexec or mpi4py is not installed (the mpi extra)")
    path = tmp_path / "scaling.json"
    assert scaling.main(["--arch", "resnet18", "--batch-size", "4", "--warmup", "1",
                         "--steps", "1", "--json", str(path)]) == 0
    results = json.loads(path.read_text())["results"]
    assert [r["ranks"] for r in results] == [1, 2]
    assert results[0]["collectives"] == {}
    two = results[1]["collectives"]
    assert two["gradients: all-reduce"]["bytes"] == results[1]["gradient_bytes"]
    assert "Projection" in capsys.readouterr().out
