"""Every CUDA kernel of ours compiles as CuPy will compile it on the GPU, known before a GPU.

CuPy compiles a RawKernel with NVRTC, the CUDA compiler as a library, which needs no GPU (the
nvidia-cuda-nvrtc wheel carries it; .ci/run installs the version of the GPU machine's CUDA).
NVRTC is not nvcc: it has no C library headers, so a kernel that nvcc compiles (nvcc includes
math.h by itself) can fail there, on every launch, on the first GPU run. So:

- every variant (set of types) of every kernel compiles with NVRTC, through CuPy's bindings
  (cupy.cuda.nvrtc), with the options CuPy passes for a RawKernel on an sm_90 GPU (H100, H200)
  and the kernels' own OPTIONS, and the program holds the kernel by its name;
- the check can fail: a kernel that uses INFINITY or HUGE_VAL fails it, through the same helper;
- those options are CuPy's own: CuPy's compile path, run here up to its call of the compiler,
  passes the same list (a new CuPy that passes others fails this test, not the GPU run);
- nvcc compiles them too, where it is installed: a second opinion.
"""
import importlib
import os
import re
import shutil
import subprocess

import pytest

from nn.runtime.cuda import KERNELS, OPTIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "90"   # the compute capability of the H100 and H200
DEFINES_KERNELS = re.compile(r"^from nn\.runtime\.cuda import .*\bKernel\b", re.MULTILINE)


def kernel_modules():
    """Every module of the library that defines a Kernel, as a dotted name."""
    modules = []
    for package in ("nn", "simclr"):
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for file in sorted(f for f in files if f.endswith(".py")):
                with open(os.path.join(folder, file)) as source:
                    if DEFINES_KERNELS.search(source.read()):
                        path = os.path.relpath(os.path.join(folder, file[:-3]), REPO)
                        modules.append(path.replace(os.sep, "."))
    return sorted(modules)


def all_kernels():
    """name -> Kernel, every kernel the library defines (each module registers its own)."""
    for module in kernel_modules():
        importlib.import_module(module)
    return KERNELS


def nvrtc_module():
    """CuPy's NVRTC bindings, or the test skipped with the reason."""
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as error:  # no CuPy, or no NVRTC library for it to load
        pytest.skip(f"NVRTC is not available through CuPy ({type(error).__name__}: {error}); "
                    f".ci/run installs it (pip install nvidia-cuda-nvrtc==13.0.88)")
    return nvrtc


def cupy_nvrtc_options(options=OPTIONS, arch=ARCH):
    """The options CuPy 14 hands NVRTC for RawKernel(code, name, options) on a GPU of compute
    capability `arch`, with CuPy's defaults (no jitify, no CUPY_* compile variables set):

    1. cupy/_core/core.pyx, compile_with_cache -> assemble_cupy_compiler_options (called
       here): the include folders of CuPy's bundled CCCL, `options`, --std=c++17 (where
       `options` name no standard), CuPy's and CUDA's include folders;
    2. cupy/cuda/compiler.py, _compile_with_cache_cuda: -ftz=true (denormals flushed);
    3. _compile_using_nvrtc_no_warning: -arch=sm_<arch> (a cubin, for an arch this NVRTC
       knows: _get_arch_for_options_for_nvrtc), then --device-as-default-execution-space.

    test_the_options_are_those_of_cupys_own_compile_path holds this list to CuPy's code."""
    nvrtc_module()
    from cupy._core import core
    return core.assemble_cupy_compiler_options(tuple(options)) + (
        "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")


def nvrtc_errors(source, name, options):
    """None where NVRTC compiles `source` with `options` into a program that holds the kernel
    `name`; else what went wrong (NVRTC's log)."""
    nvrtc = nvrtc_module()
    program = nvrtc.createProgram(source, f"{name}.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as error:
            return f"{error}\n{nvrtc.getProgramLog(program)}"
        if name.encode() not in nvrtc.getCUBIN(program):
            return f"the compiled program holds no kernel named {name}"
        return None
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("name", sorted(all_kernels()))
def test_every_kernel_compiles_with_nvrtc_as_cupy_compiles_it_for_sm_90(name):
    """Each variant as Kernel.compiled hands it to CuPy: the typedefs, then the source."""
    kernel = all_kernels()[name]
    options = cupy_nvrtc_options()
    failures = {}
    for types in kernel.variants:
        errors = nvrtc_errors(kernel.code(types), kernel.name, options)
        if errors:
            failures[str(types)] = errors
    assert not failures, "\n".join(f"{name} {types}: {log}" for types, log in failures.items())


@pytest.mark.parametrize("constant", ["-INFINITY", "HUGE_VAL"])
def test_the_nvrtc_check_fails_on_a_kernel_that_uses_a_c_header_constant(constant):
    """What nvcc's math.h would define is undefined under NVRTC; the same kernel with a
    literal in its place compiles, so the failure is the constant's."""
    source = r"""
extern "C" __global__ void lowest(double* x) { if (threadIdx.x == 0) x[0] = VALUE; }
"""
    options = cupy_nvrtc_options()
    errors = nvrtc_errors(source.replace("VALUE", constant), "lowest", options)
    assert errors is not None and "is undefined" in errors, errors
    assert constant.lstrip("-") in errors
    assert nvrtc_errors(source.replace("VALUE", "-1e308"), "lowest", options) is None


def test_a_kernel_misnamed_in_its_source_fails_the_nvrtc_check():
    source = 'extern "C" __global__ void other(double* x) { x[0] = 1.0; }'
    assert "no kernel named lowest" in nvrtc_errors(source, "lowest", cupy_nvrtc_options())


def test_the_options_are_those_of_cupys_own_compile_path(monkeypatch):
    """CuPy's compile path from RawKernel's call onwards (core.compile_with_cache, as
    RawKernel calls it), run without a GPU: the GPU's architecture given instead of asked of
    the device, no kernel cache, and the compiler replaced by one that records its options."""
    nvrtc_module()
    from cupy._core import core
    from cupy.cuda import compiler
    calls = []

    class Recorded(Exception):
        pass

    class RecordingProgram:
        def __init__(self, source, *args, **kwargs):
            self.source = source

        def compile(self, options=(), log_stream=None):
            calls.append((self.source, options))
            if self.source == "":   # CuPy's probe of the compiler's version: an empty program
                return b"", None
            raise Recorded()

    class NoCache:
        def load(self, name):
            return None

    monkeypatch.setattr(compiler, "_NVRTCProgram", RecordingProgram)
    monkeypatch.setattr(compiler, "_kernel_cache_backend", NoCache())
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc",
                        lambda arch=None: (f"-arch=sm_{arch}", "cubin"))
    kernel = all_kernels()["ce_rows"]
    code = kernel.code(kernel.variants[0])
    with pytest.raises(Recorded):
        core.compile_with_cache(code, OPTIONS, arch=ARCH, prepend_cupy_headers=False,
                                backend="nvrtc", jitify=False)
    assert [options for source, options in calls if source == code] == [cupy_nvrtc_options()]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_kernel_compiles_with_nvcc_for_sm_90_in_every_variant(tmp_path):
    """The second opinion: nvcc's front end, on the same sources, to PTX (NVRTC's cubins above
    have been through the assembler already). nvcc includes math.h by itself, so it accepts a
    C header's names that NVRTC refuses: alone, it would not catch them."""
    sources = []
    for name, kernel in sorted(all_kernels().items()):
        for number, types in enumerate(kernel.variants):
            sources.append(tmp_path / f"{name}_{number}.cu")
            sources[-1].write_text(f"// {types}\n" + kernel.code(types))
    compiled = subprocess.run(["nvcc", f"-arch=sm_{ARCH}", *OPTIONS, "--ptx"]
                              + [str(source) for source in sources],
                              cwd=tmp_path, capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    assert len(sources) >= 2 * len(all_kernels())


def test_every_module_that_defines_kernels_is_found():
    """The scan above finds the kernels where they live (a new module is found by its import
    of Kernel)."""
    assert {"nn.functional.cuda.batch_norm_kernels", "nn.functional.cuda.conv",
            "nn.functional.cuda.loss", "nn.optim.lars_cuda", "simclr.augment.cuda"} \
        <= set(kernel_modules())
    assert len(all_kernels()) >= 16
