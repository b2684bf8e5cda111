"""What every benchmark shares: child processes with equal thread counts, clocks that wait for
the GPU, medians, peak memory, the machine's GEMM rate and a description of the machine.

Each measured side (ours, PyTorch in one layout) runs in its own child process, started with
the same thread settings, and reports a JSON dict back through a file. One process per side
matters on a CPU: OpenBLAS's worker threads keep spinning after a NumPy call and would steal
a core from PyTorch's threads (and the other way round) if both ran in one process. A side
whose child fails is recorded as failed, with the last lines of its stderr, and the other
sides are still measured (run_sides): one broken side never hides the other's numbers.
"""
import collections
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Set by `python -m bench.rehearse` for its process and every child: a program on the CPU's
# rehearsal of the device path starts its own children through that wrapper too.
REHEARSAL_VARIABLE = "BENCH_REHEARSAL"
# A file that bench.gpu_check names for each stage: lines appended to it (note()) join the
# stage's status in the summary (a side that failed, something not rehearsed).
NOTES_VARIABLE = "GPU_CHECK_NOTES"
NOT_REHEARSED = 97    # bench.rehearse's exit status when the rehearsal cannot stand in
CHILD_TAIL_LINES = 3  # the last lines of a failed child's stderr that its failure quotes


SIDES = {"ours": "ours", "torch-nchw": "PyTorch NCHW",
         "torch-channels-last": "PyTorch channels_last"}


def run_sides(module, args, argv, failures=None):
    """Measure every side in its own child process, alternating them round after round
    (ours, torch, torch channels_last, ours, ...) so that all see the same noise.
    Returns ({side: [one result per round]}, the children's argv).

    With a dict `failures`, each side fails alone: a side whose child fails is recorded there
    ({side: "failed: exit status 1: its last lines"}, or "not rehearsed: ..."), dropped from
    the results and not run again, and the other sides are still measured. Without it, the
    first failure raises ChildFailed."""
    sides = ["ours"]
    if args.compare == "torch":
        if torch_available():
            sides += ["torch-nchw", "torch-channels-last"]
        else:
            print("PyTorch is not installed: measuring ours only", file=sys.stderr)
    child_argv = list(sys.argv[1:] if argv is None else argv)
    results = {side: [] for side in sides}
    for round_index in range(args.rounds):
        for side in sides:
            if failures is not None and side in failures:
                continue
            print(f"round {round_index + 1}/{args.rounds}: {SIDES[side]}", file=sys.stderr,
                  flush=True)
            try:
                results[side].append(run_child(module, child_argv + ["--child", side],
                                               args.threads, args.tf32 == "on",
                                               getattr(args, "side_timeout", None)))
            except ChildFailed as failure:
                if failures is None:
                    raise
                failures[side] = str(failure)
                note(f"{SIDES[side]}: {failure}")
    for side in failures or {}:
        results.pop(side, None)
    return results, child_argv


def default_threads():
    """The number of cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def torch_available():
    """True when PyTorch can be imported (checked without importing it here)."""
    return importlib.util.find_spec("torch") is not None


def child_environment(threads, tf32=False):
    """The environment of a child: every BLAS and OpenMP pool sized to `threads`, and CuPy's
    TF32 switch (CuPy reads CUPY_TF32 once, at import)."""
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    env["CUPY_TF32"] = "1" if tf32 else "0"
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class ChildFailed(RuntimeError):
    """A measuring child ended without a result. Its message: "failed: " and how (exit status,
    timeout) with the last lines of its stderr, or "not rehearsed: " and why, when the CPU's
    rehearsal of the GPU could not stand in for what the child needed (PyTorch's CUDA)."""


def python_command(module, argv):
    """The command line of `python -m module *argv`; on the rehearsal (REHEARSAL_VARIABLE
    set), started through bench.rehearse, so that the child rehearses too."""
    wrapper = ["bench.rehearse"] if os.environ.get(REHEARSAL_VARIABLE) else []
    return [sys.executable, "-m", *wrapper, module, *argv]


def run_child(module, argv, threads, tf32=False, timeout=None):
    """Run `python -m module *argv --result FILE` in a fresh process and return the dict the
    child wrote to FILE. The child's stderr (its progress) passes through, its last lines
    kept: when the child fails, runs past `timeout` seconds, or writes no result, ChildFailed
    says so with them."""
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result_path = os.path.join(folder, "result.json")
        command = python_command(module, [*argv, "--result", result_path])
        env = child_environment(threads, tf32)
        env.pop(NOTES_VARIABLE, None)   # the parent notes what its children met
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE,
                                   text=True, errors="replace")
        killed = []

        def kill():   # past its timeout
            killed.append(True)
            process.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        last = collections.deque(maxlen=CHILD_TAIL_LINES)
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                last.append(line.strip())
        status = process.wait()
        if timer:
            timer.cancel()
        if status == 0 and os.path.isfile(result_path):
            with open(result_path) as file:
                return json.load(file)
    if status == NOT_REHEARSED:   # bench.rehearse's last line says what could not be
        raise ChildFailed("not rehearsed: "
                          + (last[-1].split("not rehearsed: ", 1)[-1] if last else "?"))
    how = (f"timed out after {timeout:g} s" if killed
           else f"exit status {status}" if status else "no result written")
    raise ChildFailed(f"failed: {how}: " + " | ".join(last))


def note(line):
    """Print `line` to stderr and, under bench.gpu_check, add it to the stage's notes: the
    summary shows them beside the stage's status."""
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get(NOTES_VARIABLE)
    if path:
        with open(path, "a") as file:
            file.write(" ".join(line.split()) + "\n")


def write_result(path, result):
    """A child's last act: hand its measurements to the parent."""
    with open(path, "w") as file:
        json.dump(result, file)


def synchronizer(device):
    """A function that waits until the device has finished its queued work: a no-op on the
    CPU; on a GPU kernels run asynchronously, so a clock read without it measures nothing."""
    if device == "cupy":
        import cupy
        return cupy.cuda.Device().synchronize
    if device == "torch-cuda":
        import torch
        return torch.cuda.synchronize
    return lambda: None


def timed(function, sync):
    """Seconds that function() takes, from a synchronised start to a synchronised end."""
    sync()
    start = time.perf_counter()
    function()
    sync()
    return time.perf_counter() - start


def repeat_timed(function, warmup, repeats, sync, label=None):
    """Run function() `warmup` times untimed, then `repeats` times timed; the list of seconds.
    The warm-up takes what only a first call pays (on a GPU: compiling each kernel, creating
    library handles); its queued work is waited for before the first clock (timed()).
    With a label, print each timed run to stderr (long steps should show progress)."""
    for _ in range(warmup):
        function()
    times = []
    for index in range(repeats):
        times.append(timed(function, sync))
        if label:
            print(f"  {label}: {index + 1}/{repeats} {times[-1]:.3f} s", file=sys.stderr,
                  flush=True)
    return times


def summary(times):
    """{"median", "min", "max"} of a list of seconds."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def peak_rss_mib():
    """The largest resident set this process has had, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_memory_mib(function, device):
    """Run function() once, untimed (a step after the timed ones), and return the device memory
    it took, in MiB:
    {"peak": the most bytes in live arrays at any moment (its inputs, the model and the
    optimiser state included), "held": what the library's allocator holds from the device}.

    Both libraries keep freed blocks in a pool of their own, so the device's free memory
    (memGetInfo, nvidia-smi) shows the pool, not the arrays. PyTorch counts the peak itself
    (max_memory_allocated; held: max_memory_reserved). CuPy's pool only knows its current use,
    and reading it before and after a step misses the peak, which lies inside the step (the
    activations kept for backward are freed by its end). So a MemoryHook follows every
    allocation and release from the pool during this one step; it slows allocations, which is
    why it runs on an extra step and never on a timed one. Held: the pool's total_bytes, which
    only grows (CuPy returns blocks to the device only when asked to, or when out of memory)."""
    mib = 2 ** 20
    if device == "torch-cuda":
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        function()
        torch.cuda.synchronize()
        return {"peak": torch.cuda.max_memory_allocated() / mib,
                "held": torch.cuda.max_memory_reserved() / mib}
    if device != "cupy":
        raise ValueError(f"device memory of {device!r}: expected 'cupy' or 'torch-cuda'")
    import cupy

    pool = cupy.get_default_memory_pool()

    class PoolPeak(cupy.cuda.MemoryHook):
        """The largest pool.used_bytes() between entering and leaving the `with` block."""
        name = "bench.common.PoolPeak"

        def __init__(self):
            self.used = self.peak = pool.used_bytes()

        def malloc_postprocess(self, mem_size, mem_ptr, **details):
            if mem_ptr:  # 0 when the allocation failed
                self.used += mem_size
                self.peak = max(self.peak, self.used)

        def free_postprocess(self, mem_size, **details):
            self.used -= mem_size

    cupy.cuda.Device().synchronize()
    with PoolPeak() as hook:
        function()
        cupy.cuda.Device().synchronize()
    return {"peak": hook.peak / mib, "held": pool.total_bytes() / mib}


def gemm_gflops(library, size=2048, repeats=5):
    """The float32 matrix-multiply rate, GFLOP/s: the best of `repeats` (size x size) @
    (size x size) products (2 size^3 FLOPs each) with `library` ("numpy", "cupy" or
    "torch-cuda"). The best, not the median: this is the ceiling a step is compared with."""
    if library == "torch-cuda":
        import torch
        a = torch.randn(size, size, device="cuda")
        b = torch.randn(size, size, device="cuda")
    else:
        xp = __import__(library)
        rng = xp.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=xp.float32)
        b = rng.standard_normal((size, size), dtype=xp.float32)
    sync = synchronizer(library)
    if library == "numpy":  # rows split over our threads, as the step's products are
        from nn.runtime import parallel
        out = xp.empty((size, size), dtype=xp.float32)
        best = min(repeat_timed(lambda: parallel.matmul(a, b, out), 1, repeats, sync))
    else:
        best = min(repeat_timed(lambda: a @ b, 1, repeats, sync))
    return 2 * size ** 3 / best / 1e9


def _first_line(path, prefix):
    try:
        with open(path) as file:
            for line in file:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def numpy_blas():
    """NumPy's BLAS as "name version (configuration)": OpenBLAS's own description at run time
    (it names the CPU kernels chosen here), else numpy.show_config's build information."""
    import numpy

    from nn.runtime.threads import blas_description
    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError):
        blas = {}
    configuration = blas_description() or blas.get("openblas configuration", "")
    return f"{blas.get('name', 'unknown')} {blas.get('version', '')} ({configuration})"


def machine(program, argv):
    """The facts a reader needs to compare a result: CPU, cores, load, library versions, date,
    and the command (`program` is the module run, e.g. "bench.step", with arguments `argv`)."""
    import numpy
    facts = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _first_line("/proc/cpuinfo", "model name"),
        "cores": default_threads(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numpy_blas": numpy_blas(),
        "command": " ".join(["python -m", program] + list(argv)),
    }
    if torch_available():
        facts["torch"] = importlib.metadata.version("torch")  # without importing torch here
    gpu = gpu_description()
    if gpu:
        facts["gpu"] = gpu
    return facts


def gpu_description():
    """Each NVIDIA GPU as "NAME, driver D, M MiB", from nvidia-smi; None where there is none.
    Asked of nvidia-smi rather than CuPy or PyTorch: this process then holds no CUDA context."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    gpus = []
    for line in found.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3:
            gpus.append(f"{parts[0]}, driver {parts[1]}, {parts[2]}")
    return "; ".join(gpus) if found.returncode == 0 and gpus else None


def describe_machine(facts):
    """Two lines about the machine for the top of a report (three with a GPU)."""
    return (f"{facts['cpu']}, {facts['cores']} cores, load {facts['load_average']}, "
            f"{facts['date']}\nNumPy {facts['numpy']} with {facts['numpy_blas']}"
            + (f"; PyTorch {facts['torch']}" if "torch" in facts else "")
            + (f"\nGPU: {facts['gpu']}" if "gpu" in facts else ""))


def format_table(header, rows):
    """A Markdown table with columns padded to their widest cell."""
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"
             for row in cells]
    lines.insert(1, "| " + " | ".join("-" * width for width in widths) + " |")
    return "\n".join(lines)
