"""Our CUDA kernels, each beside its NumPy twin.

A GPU step is fast when it asks the GPU for few, large pieces of work: every kernel launch
costs the host 5-20 us of Python and CuPy, and every pass over memory costs bandwidth. So
where CuPy would take many small kernels for one op (batch norm as a dozen elementwise
passes and reductions, LARS as a dozen per parameter), a kernel of ours does the work in one.

A `Kernel` is CUDA C source and a NumPy function, its twin, that computes the same thing
from the same arguments (arrays and scalars, outputs written in place), as plainly as NumPy
allows. The twin is what a reader reads first, what runs when a kernel is called with NumPy
arrays, and what the GPU tests hold the CUDA to. `Kernel.run(xp, ...)` launches the CUDA on
CuPy's arrays and calls the twin on NumPy's.

The source is compiled by CuPy (NVRTC) once per device and per set of types: it is written
with the type names of `types` (e.g. data_t), which `run` defines by typedefs in front of it
(float or double), so one source serves float32 and float64. Nothing is #included: NVRTC has
no C library headers. CuPy keeps compiled kernels in its cache directory
(CUPY_CACHE_DIR, ~/.cupy/kernel_cache by default), so a second run does not compile again.

KERNELS: name -> Kernel, every kernel defined (tests compile each with nvcc).
"""
import numpy

KERNELS = {}
# no fused multiply-adds: each product and sum rounded as NumPy rounds it, so a kernel's results
# stay within a rounding or two of its twin's (the kernels here are bound by memory, not by
# arithmetic, and lose nothing measurable)
OPTIONS = ("--fmad=false",)
C_TYPES = {numpy.dtype("float32"): "float", numpy.dtype("float64"): "double",
           numpy.dtype("uint8"): "unsigned char"}


class Kernel:
    """CUDA C `source` defining extern "C" __global__ void `name`(...), and its NumPy `twin`,
    called with the same arguments. `type_names`: the type names the source uses, each given
    a NumPy dtype at every run (data_t: the arrays' float type, say). `variants`: the sets of
    types it runs with ({type name: dtype}), which the tests compile; by default every type
    name float32, then every one float64."""

    def __init__(self, name, source, twin, type_names=("data_t",), variants=None):
        if name in KERNELS:
            raise ValueError(f"a kernel named {name!r} is defined twice")
        self.name, self.source, self.twin, self.type_names = name, source, twin, type_names
        self.variants = variants or [{type_name: dtype for type_name in type_names}
                                     for dtype in ("float32", "float64")]
        self._compiled = {}
        KERNELS[name] = self

    def code(self, types):
        """The source for `types` ({type name: numpy dtype}): typedefs, then the kernel."""
        missing = set(self.type_names) - set(types)
        if missing:
            raise ValueError(f"kernel {self.name}: no dtype given for {sorted(missing)}")
        typedefs = "".join(f"typedef {C_TYPES[numpy.dtype(types[name])]} {name};\n"
                           for name in self.type_names)
        return typedefs + self.source

    def compiled(self, xp, types):
        """The CuPy RawKernel for `types` on the current device (compiled on first use)."""
        key = (xp.cuda.Device().id,) + tuple(str(numpy.dtype(types[name]))
                                             for name in self.type_names)
        if key not in self._compiled:
            self._compiled[key] = xp.RawKernel(self.code(types), self.name, options=OPTIONS)
        return self._compiled[key]

    def run(self, xp, grid, block, args, types, shared_mem=0, twin_args=None):
        """Launch on CuPy arrays (grid and block: tuples of up to 3 ints), or call the twin on
        NumPy arrays. `args` are arrays and NumPy scalars (typed: a kernel's int64 argument
        must be given as numpy.int64). A kernel that reads a table of device addresses takes
        its twin's arguments apart, as `twin_args` (the arrays the addresses point to)."""
        twin_args = args if twin_args is None else twin_args
        if xp is numpy:
            return self.twin(*twin_args)
        return launch(self, xp, grid, block, args, types, shared_mem, twin_args)


def launch(kernel, xp, grid, block, args, types, shared_mem=0, twin_args=None):
    """Launch `kernel` on the GPU: the one place where our kernels meet CuPy."""
    kernel.compiled(xp, types)(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)


def blocks_for(count, per_block):
    """How many blocks of per_block items cover count items (at least 1)."""
    return max(1, -(-int(count) // int(per_block)))
