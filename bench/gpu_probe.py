"""python -m bench.gpu_probe PATH: the probe stage of bench.gpu_check, run on the GPU.

The versions, the device, and two timed kernels, written to PATH as JSON (and printed).
"""
import json
import os
import sys


def probe(path):
    """The versions, the device, and two timed kernels (an elementwise a*x+1 over 2^26 float32
    and a 4096x4096 float32 GEMM): the first call apart (it compiles, or loads from the kernel
    cache: a first call of a few ms says the cache worked), then the median of 10 after a
    synchronised warm-up. Printed, and written to `path` as JSON."""
    import importlib.metadata

    import cupy
    import numpy

    from bench.common import repeat_timed, summary, synchronizer, timed

    sync = synchronizer("cupy")
    device = cupy.cuda.Device()
    properties = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = properties["name"]
    free, total = cupy.cuda.runtime.memGetInfo()
    result = {"device": name.decode() if isinstance(name, bytes) else name,
              "compute_capability": device.compute_capability,
              "memory_total_mib": total / 2 ** 20, "memory_free_mib": free / 2 ** 20,
              "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
              "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
              "numpy": numpy.__version__, "cupy": cupy.__version__,
              "CUPY_TF32": os.environ.get("CUPY_TF32", "unset"),
              "CUPY_CACHE_DIR": os.environ.get("CUPY_CACHE_DIR", "unset")}
    try:
        result["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        result["torch"] = "not installed"

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
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(result, file, indent=1)
    return 0




if __name__ == "__main__":
    sys.exit(probe(sys.argv[1]))
