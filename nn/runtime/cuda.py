"""The launcher of our CUDA kernels: each kernel beside its NumPy twin, one block size, one grid.

A GPU step is fast when it asks the GPU for few, large pieces of work: every kernel launch
costs the host microseconds of Python and CuPy, and every pass over memory costs bandwidth. So
where CuPy would take many small kernels for one op (batch norm as a dozen elementwise
passes and reductions, LARS as a dozen per parameter), a kernel of ours does the work in one.

A `Kernel` is CUDA C source and a NumPy function, its twin, that computes the same thing
from the same arguments (arrays and scalars, outputs written in place), as plainly as NumPy
allows. The twin is what a reader reads first, what runs when a kernel is called with NumPy
arrays, and what the GPU tests hold the CUDA to. `Kernel.run(xp, ...)` launches the CUDA on
CuPy's arrays and calls the twin on NumPy's.

The source is compiled by CuPy (NVRTC) once per device and per set of types: it is written
with the type names of `types` (e.g. data_t), which `run` defines by typedefs in front of it
(float or double), so one source serves float32 and float64. CuPy keeps compiled kernels in
its cache directory (CUPY_CACHE_DIR, ~/.cupy/kernel_cache by default), so a second run does
not compile again.

The rule for a kernel's source: nothing from a C header, not even a constant. NVRTC, the
compiler CuPy calls, has no C library headers, so INFINITY, HUGE_VAL, NAN, DBL_MAX, FLT_MAX,
INT_MAX and M_PI are undefined there, and nothing is #included. (nvcc includes math.h by
itself and accepts them: a kernel that compiles with nvcc can still fail on the GPU.) CUDA's
own device functions (exp, log, sqrt, fmax, floor, min, ...) are built into NVRTC and are
fine. Where a constant is wanted, derive it from the data (ce_rows starts a row's maximum at
the row's first element, not at minus infinity) or write the literal. tests/test_cuda_compile.py
enforces the rule: it compiles every variant of every kernel with NVRTC and CuPy's options.

A launch is checked before it reaches CUDA, against the kernel's C parameter list: a kernel
reads raw memory, so a float64 array where it reads float, a strided view where it reads one
run of memory, or a Python int where it reads a 4-byte int would be read as garbage, silently.
Each array must be C-contiguous and of its parameter's dtype, each scalar a NumPy scalar of its
parameter's type, and the count must match; a launch with nothing to do (a grid or block
dimension of 0) returns before reaching CUDA. The twin is held to the same contract.

One block size and one grid for every kernel. A block has THREADS = 256 threads (a multiple
of the 32 of a warp, and a block size at which a GPU keeps several blocks per multiprocessor
busy; the kernels that reduce in shared memory declare arrays of that many values, so their
source says 256 too). A kernel over `count` elements is written as a grid-stride loop (each
thread takes element i, then i + the grid's threads, ...), so any number of blocks covers any
count: grid(count) gives one thread per element, ceil(count / THREADS) blocks, but at most
MAX_BLOCKS. A million blocks of 256 threads are hundreds of times what a GPU runs at once,
so beyond that more blocks only cost the scheduler; the cap also keeps far inside CUDA's limit
of 2^31 - 1 blocks.

KERNELS: name -> Kernel, every kernel defined (the tests compile each, every variant).
"""
import math
import re

import numpy

KERNELS = {}
# no fused multiply-adds: each product and sum rounded as NumPy rounds it, so a kernel's results
# stay within a rounding or two of its twin's (the kernels here are bound by memory, not by
# arithmetic, and lose nothing measurable)
OPTIONS = ("--fmad=false",)
# the C type of each dtype a kernel's memory or scalars may hold (and a type name may stand for)
C_TYPES = {numpy.dtype("float32"): "float", numpy.dtype("float64"): "double",
           numpy.dtype("uint8"): "unsigned char", numpy.dtype("int32"): "int",
           numpy.dtype("int64"): "long long"}
DTYPES = {c_type: dtype for dtype, c_type in C_TYPES.items()}
# CUDA's limits on a launch's shape, for every GPU since compute capability 3.0
GRID_LIMITS, BLOCK_LIMITS, THREADS_PER_BLOCK = (2 ** 31 - 1, 65535, 65535), (1024, 1024, 64), 1024
THREADS = 256  # threads per block, for every kernel (see the module docstring)
MAX_BLOCKS = 65535 * 16  # grid(): at most this many blocks of a grid-stride loop


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
        self.parameters = parameters_of(name, source, type_names)
        self.variant_dtypes = {tuple(numpy.dtype(types[name]) for name in type_names)
                               for types in self.variants}
        self._compiled, self._expected = {}, {}
        KERNELS[name] = self

    def dtypes(self, types):
        """{type name: numpy dtype} from `types`, every type name given, each a C type."""
        missing = set(self.type_names) - set(types)
        if missing:
            raise ValueError(f"kernel {self.name}: no dtype given for {sorted(missing)}")
        dtypes = {name: numpy.dtype(types[name]) for name in self.type_names}
        for name, dtype in dtypes.items():
            if dtype not in C_TYPES:
                raise TypeError(f"kernel {self.name}: {name} = {dtype}; expected one of "
                                f"{', '.join(str(d) for d in C_TYPES)}")
        return dtypes

    def check_variant(self, dtypes):
        """Refuse types that are not among `variants`: the tests compile those alone, so
        another set of types would meet the compiler first on the GPU."""
        if tuple(dtypes.values()) not in self.variant_dtypes:
            given = ", ".join(f"{name}={dtype}" for name, dtype in dtypes.items())
            raise TypeError(f"kernel {self.name}: types {given} are not among its variants "
                            f"{self.variants}; add them to variants (the tests compile those)")

    def expected(self, types):
        """What each argument must be for `types`: (its C declaration, dtype, is an array)
        per parameter (worked out once per set of types)."""
        key = tuple(types.get(name) for name in self.type_names)
        if key not in self._expected:
            dtypes = self.dtypes(types)
            self.check_variant(dtypes)
            self._expected[key] = [
                (f"{c_type}{'*' if pointer else ''} {name}",
                 dtypes[c_type] if c_type in dtypes else DTYPES[c_type], pointer)
                for name, c_type, pointer in self.parameters]
        return self._expected[key]

    def code(self, types):
        """The source for `types` ({type name: numpy dtype}): typedefs, then the kernel."""
        typedefs = "".join(f"typedef {C_TYPES[dtype]} {name};\n"
                           for name, dtype in self.dtypes(types).items())
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
        must be given as numpy.int64), checked against the kernel's parameters first (see the
        module's docstring); a launch with nothing to do does nothing. A kernel that reads a
        table of device addresses takes its twin's arguments apart, as `twin_args` (the
        arrays the addresses point to)."""
        if not check_launch(self, xp, grid, block, args, types):
            return None
        twin_args = args if twin_args is None else twin_args
        if xp is numpy:
            return self.twin(*twin_args)
        return launch(self, xp, grid, block, args, types, shared_mem, twin_args)


def parameters_of(name, source, type_names=()):
    """The parameters of `extern "C" __global__ void name(...)` in `source`, in order: (C
    name, C type without const, is a pointer) each, e.g. ("logits", "data_t", True)."""
    declaration = re.search(r'extern\s+"C"\s+__global__\s+void\s+' + re.escape(name)
                            + r"\s*\(([^)]*)\)", source)
    if declaration is None:
        raise ValueError(f'kernel {name}: its source declares no extern "C" __global__ void '
                         f'{name}(...)')
    parameters = []
    for text in declaration.group(1).split(","):
        words = text.replace("*", " * ").split()
        c_type = " ".join(word for word in words[:-1] if word not in ("const", "*"))
        if c_type not in DTYPES and c_type not in type_names:
            raise ValueError(f"kernel {name}: parameter {text.strip()!r} has a type a launch "
                             f"cannot check; expected one of {', '.join(DTYPES)} or "
                             f"{', '.join(type_names)}")
        parameters.append((words[-1], c_type, "*" in words))
    return parameters


def check_launch(kernel, xp, grid, block, args, types):
    """Whether to launch `kernel` (False when a grid or block dimension is 0: nothing to do).
    Raises, naming the kernel and the argument, where the kernel would read an argument as
    garbage: an array of another dtype than its parameter's, or not C-contiguous (an output
    would never be written back to a copy), a scalar of another type, a count that differs;
    or where CUDA would refuse the launch's shape."""
    grid = _launch_shape(kernel, "grid", grid, GRID_LIMITS)
    block = _launch_shape(kernel, "block", block, BLOCK_LIMITS)
    threads = math.prod(block)
    if threads > THREADS_PER_BLOCK:
        raise ValueError(f"kernel {kernel.name}: block {block} has {threads} threads; "
                         f"expected at most {THREADS_PER_BLOCK}")
    if len(args) != len(kernel.parameters):
        raise TypeError(f"kernel {kernel.name}: {len(args)} arguments given; expected "
                        f"{len(kernel.parameters)} "
                        f"({', '.join(name for name, _, _ in kernel.parameters)})")
    for value, (declared, dtype, pointer) in zip(args, kernel.expected(types)):
        if pointer:
            _check_array(kernel, xp, declared, value, dtype)
        elif not (isinstance(value, numpy.generic) and value.dtype == dtype):
            raise TypeError(f"kernel {kernel.name}: argument {declared} is {_described(value)}; "
                            f"expected a numpy.{dtype} scalar")
    return 0 not in grid + block


def _launch_shape(kernel, what, dimensions, limits):
    dimensions = tuple(dimensions)
    if not 1 <= len(dimensions) <= 3 or not all(
            isinstance(d, (int, numpy.integer)) and 0 <= d <= limit
            for d, limit in zip(dimensions, limits)):
        raise ValueError(f"kernel {kernel.name}: {what} {dimensions}; expected 1 to 3 ints, "
                         f"each from 0 up to CUDA's limits {limits}")
    return dimensions


def _described(value):
    """value in a few words: its type, and its dtype and shape or its value."""
    kind = f"{type(value).__module__}.{type(value).__name__}"
    if hasattr(value, "shape") and not isinstance(value, numpy.generic):
        return f"a {kind} of {value.dtype}, shape {value.shape}"
    return f"{value!r:.40} ({kind})"


def _check_array(kernel, xp, declared, value, dtype):
    if not isinstance(value, xp.ndarray):
        raise TypeError(f"kernel {kernel.name}: argument {declared} is {_described(value)}; "
                        f"expected an array of {xp.__name__} of {dtype}")
    if value.dtype != dtype:
        raise TypeError(f"kernel {kernel.name}: argument {declared} is an array of "
                        f"{value.dtype}, shape {value.shape}; expected {dtype}")
    if not value.flags.c_contiguous:
        raise ValueError(f"kernel {kernel.name}: argument {declared} (shape {value.shape}, "
                         f"strides {value.strides}) is not C-contiguous; expected one run of "
                         f"memory (xp.ascontiguousarray for an input, xp.empty for an output)")


def launch(kernel, xp, grid, block, args, types, shared_mem=0, twin_args=None):
    """Launch `kernel` on the GPU: the one place where our kernels meet CuPy."""
    kernel.compiled(xp, types)(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)


def blocks_for(count, per_block):
    """How many blocks of per_block items cover count items (at least 1)."""
    return max(1, -(-int(count) // int(per_block)))


def grid(count):
    """(grid, block) for a grid-stride loop over `count` elements: THREADS threads a block,
    one thread per element up to MAX_BLOCKS blocks (see the module docstring)."""
    return (min(blocks_for(count, THREADS), MAX_BLOCKS),), (THREADS,)
