"""Using every CPU core: NumPy work split over rows and run in threads.

NumPy releases Python's global lock inside its loops (ufuncs, reductions, copies, matmul), so
Python threads that each work on their own rows of an array run truly in parallel. A NumPy
call by itself uses one core, except matmul, which OpenBLAS spreads over its own threads.
Those threads spin for a while after each product, waiting for the next one, so a core that
has just helped OpenBLAS is not free for an elementwise pass that follows. We therefore run
*every* large pass in our own threads (products included, each thread multiplying its rows)
and set OpenBLAS to one thread while ours are in use: one pool, no spinning, every pass on
every core.

    run(fn, ranges)         -> [fn(start, stop), ...], computed in parallel (in order)
    for_rows(fn, n, ...)    fn(start, stop) on pieces of range(n), in the threads
    add(a, b)               a + b, the first axis split over the threads
    total(arrays)           arrays[0] + arrays[1] + ..., added in that order, split likewise
    copy(a)                 a C-contiguous copy of a, split likewise
    matmul(a, b, out)       a @ b, the larger side of the result cut into pieces for the threads
    matmul_transposed(a, b) a.T @ b, a long sum over rows cut likewise, the parts added in order
                            (a short one: in runs of 64+ rows, for accuracy)
    map_ranges(fn, ranges)  fn on many pieces, each thread taking the next free piece
    set_num_threads(n)      how many threads (default: $OMP_NUM_THREADS, else the cores)

CuPy arrays never go through the pool: a GPU kernel is already parallel, so their work is one
piece, run in the calling thread. With one thread, or when OpenBLAS's thread count cannot be
set (NumPy built on another BLAS), everything runs in the calling thread and the BLAS keeps
its own threads.
"""
import ctypes
import glob
import itertools
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy

from .backend import array_module, is_cupy_array

MIN_BYTES_PER_THREAD = 256 * 2**10  # smaller passes are not worth a thread hand-off
BLOCK_BYTES = 512 * 2**10  # block_rows: a block of rows that stays in cache (batch norm)
PIECE_BYTES = 4 * 2**20  # matmul: rows of about this size (of its widest operand) per piece
PIECES_PER_THREAD = 2  # and at least this many pieces per thread, taken as threads come free
SHRINK_TO = 8  # the last pieces of a product shrink to 1/SHRINK_TO of the others (shrinking_ranges)
MIN_PIECE = 512  # but never below this many rows (or columns): each piece's product packs the
                 # whole other operand into BLAS's buffers again
SUM_RUNS = 8  # matmul_transposed: a sum over rows in at least this many runs (_summed_runs),
MIN_RUN_ROWS = 64  # of at least this many rows, where that makes runs shorter than
MAX_RUN_ROWS = 256  # this (BLAS's own float32 blocks) and their partial products
RUNS_BYTES = 2**20  # take at most this many bytes in all

_state = {"threads": None, "pool": None, "blas_setter": None}
_lock = threading.Lock()
_local = threading.local()  # .index: which of our threads this is (0: the caller)


def _default_threads():
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _openblas_function(name, argtypes, restype):
    """OpenBLAS's function `name` (e.g. "set_num_threads"), from the copy NumPy loaded, under
    any of the names its builds export, or None (NumPy uses another BLAS)."""
    candidates = []
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            candidates += sorted(set(re.findall(r"(/\S*openblas\S*\.so[\.\d]*)", maps.read())))
    package = os.path.dirname(numpy.__file__)
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        candidates += sorted(glob.glob(os.path.join(package, pattern)))
    for path in candidates:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for exported in (f"scipy_openblas_{name}64_", f"scipy_openblas_{name}",
                         f"openblas_{name}64_", f"openblas_{name}"):
            function = getattr(library, exported, None)
            if function is not None:
                function.argtypes, function.restype = argtypes, restype
                return function
    return None


def _openblas_thread_setter():
    """OpenBLAS's set_num_threads, or None (another BLAS)."""
    return _openblas_function("set_num_threads", [ctypes.c_int], None)


def blas_description():
    """What OpenBLAS says of itself at run time, e.g. "OpenBLAS 0.3.31 ... SkylakeX ...": the
    CPU kernels it chose on this machine (NumPy's build information names the build target
    instead). None when NumPy's BLAS is not OpenBLAS."""
    get_config = _openblas_function("get_config", [], ctypes.c_char_p)
    return get_config().decode(errors="replace").strip() if get_config else None


def set_num_threads(n):
    """Use n threads for the large array passes of our ops (1: all in the calling thread).

    With n > 1, OpenBLAS is set to one thread, as our threads do the splitting; with n == 1 it
    gets the one thread too. If OpenBLAS's thread count cannot be set, our pool stays at one
    thread and the BLAS keeps its own."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    with _lock:
        if _state["blas_setter"] is None:
            _state["blas_setter"] = _openblas_thread_setter() or False
        setter = _state["blas_setter"]
        if not setter:
            n = 1
        else:
            setter(1)
        if _state["pool"] is not None:
            _state["pool"].shutdown()
        _state["threads"] = n
        _state["pool"] = ThreadPoolExecutor(n - 1, initializer=_name_worker,
                                            initargs=(iter(range(1, n)),)) if n > 1 else None


def _name_worker(indices):
    _local.index = next(indices)


def _forget_pool_after_fork():
    """A forked child has none of its parent's threads: start a new pool there when needed
    (the old one would queue work for a thread that does not exist, and wait forever)."""
    _state["threads"] = _state["pool"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def get_num_threads():
    """The number of threads `run` splits work over (the pool is started on first use)."""
    if _state["threads"] is None:
        set_num_threads(_default_threads())
    return _state["threads"]


def thread_index():
    """0 in the calling thread, 1..n-1 in the pool's threads: a key for per-thread buffers."""
    return getattr(_local, "index", 0)


def _threads_for(pieces, total_bytes, array):
    """How many threads to split `pieces` pieces of work (total_bytes in all) over: one when
    the work is small (under MIN_BYTES_PER_THREAD per thread), on the GPU, or when called from
    inside a parallel section (a nested split would wait for a pool thread that is waiting)."""
    threads = get_num_threads()
    nested = thread_index() != 0 or getattr(_local, "busy", False)
    if threads == 1 or is_cupy_array(array) or nested:
        return 1
    return int(max(1, min(threads, pieces, total_bytes // MIN_BYTES_PER_THREAD)))


def run(fn, ranges):
    """[fn(start, stop) for (start, stop) in ranges], the first range in the calling thread and
    the others in the pool, all at once. Exceptions propagate to the caller, but only once
    every range has finished: a range still running after its call returned would write into
    that call's arrays while the next call runs."""
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    _local.busy = True
    futures = []
    try:
        futures = [_state["pool"].submit(fn, *r) for r in ranges[1:]]
        first = fn(*ranges[0])
        return [first] + [future.result() for future in futures]
    finally:
        wait(futures)
        _local.busy = False


def for_rows(fn, rows, row_bytes, array):
    """fn(start, stop) on pieces of range(rows) (row_bytes each), in the threads (map_ranges):
    PIECES_PER_THREAD pieces per thread, the last ones shrinking (shrinking_ranges), none
    under a quarter of MIN_BYTES_PER_THREAD. Returns the results, in order of rows."""
    threads = _threads_for(rows, rows * row_bytes, array)
    if threads == 1:
        return [fn(0, rows)]
    largest = -(-rows // (threads * PIECES_PER_THREAD))
    smallest = max(largest // SHRINK_TO, -(-MIN_BYTES_PER_THREAD // (4 * row_bytes)))
    return map_ranges(fn, shrinking_ranges(rows, largest, threads, smallest),
                      rows * row_bytes, array)


def map_ranges(fn, ranges, total_bytes, array):
    """[fn(start, stop) for (start, stop) in ranges], in order, the threads each taking the
    next range as soon as they finish one: a slow range or a busy core delays nobody."""
    threads = _threads_for(len(ranges), total_bytes, array)
    if threads == 1:
        return [fn(*r) for r in ranges]
    results = [None] * len(ranges)
    next_index = itertools.count().__next__  # atomic under the GIL: each index taken once

    def take_ranges(_start, _stop):
        index = next_index()
        while index < len(ranges):
            results[index] = fn(*ranges[index])
            index = next_index()
    run(take_ranges, [(0, 0)] * threads)
    return results


def block_rows(row_bytes):
    """How many rows of row_bytes make one block of about BLOCK_BYTES: a piece of work on which
    several NumPy calls in a row read memory once (it stays in cache between them)."""
    return max(1, BLOCK_BYTES // row_bytes)


def add(a, b):
    """a + b for two arrays of one shape (any strides), as a new array of a's layout, the
    first axis split over the threads."""
    array_module(a, b)  # a clear error if they are on two devices
    return total([a, b])


def total(arrays):
    """arrays[0] + arrays[1] + ... for arrays of one shape, as a new array: each thread adds up
    its own rows of all of them, in list order, so the result does not depend on the threads."""
    first, rest = arrays[0], arrays[1:]
    if not rest or first.ndim == 0:
        return sum(rest, first.copy(order="K"))
    xp = array_module(first)
    out = xp.empty_like(first)

    def add_rows(start, stop):
        rows = out[start:stop]
        xp.add(first[start:stop], rest[0][start:stop], out=rows)
        for array in rest[1:]:
            rows += array[start:stop]
    for_rows(add_rows, first.shape[0], first[:1].nbytes * len(arrays), first)
    return out


def copy(a):
    """A C-contiguous copy of a (any strides), the first axis split over the threads."""
    xp = array_module(a)
    if a.ndim == 0:
        return a.copy()
    out = xp.empty(a.shape, dtype=a.dtype)
    for_rows(lambda start, stop: xp.copyto(out[start:stop], a[start:stop]),
             a.shape[0], a[:1].nbytes, a)
    return out


def shrinking_ranges(length, largest, threads, smallest=1):
    """range(length) cut into (start, stop) pieces for `threads` threads that each take the
    next piece as they come free (map_ranges): pieces of `largest` units while much is left,
    then a (2 * threads)-th of what remains, down to `smallest`. A section ends when its last
    piece does; with equal pieces one thread may start the last one as the others run out of
    work, and they all wait for it. Shrinking pieces (OpenMP's "guided" schedule) make that
    wait a small piece's time. With one thread nobody waits: pieces of `largest` throughout."""
    largest, smallest = max(1, largest), max(1, min(smallest, largest))
    if threads <= 1:
        smallest = largest
    ranges, start = [], 0
    while start < length:
        size = min(largest, max(smallest, -(-(length - start) // (2 * threads))))
        ranges.append((start, min(length, start + size)))
        start += size
    return ranges


def _pieces(length, unit_bytes, array):
    """range(length) cut into pieces for map_ranges to balance over the threads: about
    PIECE_BYTES (unit_bytes per unit) and at least PIECES_PER_THREAD per thread, shrinking
    towards the end (shrinking_ranges); one piece when the work stays in the calling thread."""
    threads = _threads_for(length, length * unit_bytes, array)
    if threads == 1:
        return [(0, length)]
    largest = min(-(-PIECE_BYTES // unit_bytes), -(-length // (threads * PIECES_PER_THREAD)))
    largest = max(largest, min(MIN_PIECE, -(-length // threads)))
    return shrinking_ranges(length, largest, threads,
                            smallest=max(largest // SHRINK_TO, min(MIN_PIECE, largest)))


def matmul(a, b, out=None):
    """a (M, K) @ b (K, F) -> (M, F), written into `out` when given. The larger side of the
    result is cut into pieces (_pieces) that the threads take as they come free: the rows of a
    (a conv's many pixels) or the columns of b (a linear layer's outputs for a few rows, where
    splitting rows would make every thread read all of b)."""
    xp = array_module(a)
    if out is None:
        out = xp.empty((a.shape[0], b.shape[1]), dtype=xp.result_type(a, b))
    M, K = a.shape
    F = b.shape[1]
    if M >= F:
        def rows(start, stop):
            xp.matmul(a[start:stop], b, out=out[start:stop])
        map_ranges(rows, _pieces(M, max(K, F) * a.itemsize, a), M * K * a.itemsize, a)
    else:
        def columns(start, stop):
            xp.matmul(a, b[:, start:stop], out=out[:, start:stop])
        map_ranges(columns, _pieces(F, K * a.itemsize, a), F * K * a.itemsize, a)
    return out


def matmul_transposed(a, b):
    """a.T @ b for a (M, F) and b (M, K) -> (F, K). When M is the long side (a weight gradient
    summed over a conv's pixels), the threads multiply pieces of the rows and the partial
    products are added in order (parallel.total); otherwise each thread computes its own rows
    of the result. A short sum with small partial products is taken in runs instead, for
    accuracy (_run_rows, _sum_of_runs)."""
    xp = array_module(a)
    M, F = a.shape
    K = b.shape[1]
    run = _run_rows(M, F * K * a.itemsize)
    if run is not None:
        return _sum_of_runs(a, b, run)
    if M < F + K:
        out = xp.empty((F, K), dtype=xp.result_type(a, b))

        def rows(start, stop):
            xp.matmul(a[:, start:stop].T, b, out=out[start:stop])
        map_ranges(rows, _pieces(F, M * a.itemsize, a), F * M * a.itemsize, a)
        return out
    parts = map_ranges(lambda start, stop: a[start:stop].T @ b[start:stop],
                       _pieces(M, max(F, K) * a.itemsize, a), M * (F + K) * a.itemsize, a)
    return total(parts)


def _run_rows(M, part_bytes):
    """Rows per run for a.T @ b over M rows whose (F, K) result takes part_bytes: M cut into
    SUM_RUNS runs of at least MIN_RUN_ROWS rows; None where that makes one run, runs of
    MAX_RUN_ROWS or more, or partial products of more than RUNS_BYTES in all.

    Why: BLAS adds a product's terms one after another in float32, in blocks of a few hundred
    (on SkylakeX a product over 512 rows erred exactly as two over 256 added), so a sum over
    512 rows in two pieces, one per thread, erred 2.2-2.7x more than PyTorch's, which adds
    the 64 pixels of each image in a product of its own. In runs of 64 rows, their products
    added in float32, it errs as PyTorch's. Each run costs one more (F, K) partial product,
    written and added, so runs are taken only while they are few and their partials fit in
    cache, and only where they are shorter than BLAS's blocks: a long sum keeps its pieces
    (_pieces), whose error measured 0.6-0.75x PyTorch's at 65536 rows and 1.2-1.4x at 4096,
    and which 8 runs of 8192 rows made 2-3% slower on one thread."""
    rows = max(MIN_RUN_ROWS, -(-M // SUM_RUNS))
    count = -(-M // rows)
    if count <= 1 or rows >= MAX_RUN_ROWS or count * part_bytes > RUNS_BYTES:
        return None
    return rows


def _sum_of_runs(a, b, rows):
    """a.T @ b = sum_p a_p.T @ b_p over the runs a_p, b_p of `rows` rows (the last one may be
    shorter): the P products in one batched product (P, F, K), the threads taking runs of it
    (for_rows), then added in order (a sum over the first axis), so the result does not
    depend on the threads. One batched product, not a product per run: a product per run
    (map_ranges) made a (512, 64)^T (512, 256) product 1.3-1.8x slower than one over all
    the rows, the batched one at most 1.25x (50 us), measured at 512-1984 rows."""
    xp = array_module(a)
    M, F = a.shape
    K = b.shape[1]
    whole, P = M - M % rows, M // rows                               # rows in whole runs
    parts = xp.empty((-(-M // rows), F, K), dtype=xp.result_type(a, b))
    a_runs = a[:whole].reshape(P, rows, F).transpose(0, 2, 1)       # (P, F, rows)
    b_runs = b[:whole].reshape(P, rows, K)                          # (P, rows, K)

    def multiply(start, stop):
        xp.matmul(a_runs[start:stop], b_runs[start:stop], out=parts[start:stop])
    for_rows(multiply, P, rows * (F + K) * a.itemsize, a)
    if whole < M:
        xp.matmul(a[whole:].T, b[whole:], out=parts[P])
    return parts.sum(axis=0)
