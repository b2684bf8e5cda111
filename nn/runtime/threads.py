"""The CPU's threads: NumPy work cut into pieces and run on every core, by one policy.

NumPy releases Python's global lock inside its loops (ufuncs, reductions, copies, matmul), so
Python threads that each work on their own piece of an array run truly in parallel. A NumPy
call by itself uses one core, except matmul, which OpenBLAS spreads over its own threads.
Those threads spin for a while after each product, waiting for the next one, so a core that
has just helped OpenBLAS is not free for an elementwise pass that follows. We therefore run
*every* large pass in our own threads (products included, each thread multiplying its rows)
and set OpenBLAS to one thread while ours are in use: one pool, no spinning, every pass on
every core.

The policy, all of it here:
- Who works: `threads_for` gives one thread (the caller's) to small work (under
  MIN_BYTES_PER_THREAD a thread), to arrays of another module than NumPy (a GPU's, whose
  operations are parallel already) and to work started inside a parallel section (a nested
  split would wait for a pool thread that is waiting); otherwise every thread of the pool.
- How work is cut: work that comes in pieces of its own (parameters, the 16 positions of a
  Winograd tile, batch norm's cache-sized blocks) keeps them; a long axis is cut by `split`,
  at least PIECES_PER_THREAD pieces a thread, the last ones shrinking, down to SHRINK_TO
  times smaller (OpenMP's "guided" schedule: the section ends as its last piece does, and a
  small last piece keeps the others' wait short). A matrix product's pieces are also at most
  PIECE_BYTES (BLAS packs the other operand once per piece, and pieces that size balance
  well); an elementwise pass streams through memory and takes no such bound, as more pieces
  would only cost more hand-offs. A caller whose piece fills a buffer of its own (a
  convolution's column matrix) bounds it by that buffer, on one thread too.
- How pieces run: `map_ranges`, each thread taking the next piece as it comes free, so a slow
  piece or a busy core delays nobody; results come back in the order of the pieces, and
  callers that add them up do so in that order. The pieces depend only on the sizes and the
  number of threads, never on timing, so a computation repeats bit for bit at one thread
  count. (Across thread counts the last bit may differ: where a sum is cut, and even where
  only a product's rows are shared out, as BLAS rounds the rows at a block's edge its own
  way.)

    split(length, unit_bytes, array, ...)   the pieces of range(length), by the policy above
    for_pieces(fn, length, unit_bytes, array, ...)   [fn(start, stop), ...] over those pieces
    map_ranges(fn, ranges, total_bytes, array)       [fn(start, stop), ...] over given pieces
    run(fn, ranges)         one range per thread, all at once (what map_ranges runs on)
    set_num_threads(n)      how many threads (default: $OMP_NUM_THREADS, else the cores)

With one thread, or when OpenBLAS's thread count cannot be set (NumPy built on another
BLAS), everything runs in the calling thread and the BLAS keeps its own threads. The
whole-array operations that use this (sums, copies, products) are in parallel.py.
"""
import ctypes
import glob
import itertools
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy

from autograd.backend import array_module

MIN_BYTES_PER_THREAD = 256 * 2**10  # smaller passes are not worth a thread hand-off
PIECE_BYTES = 4 * 2**20  # a product's pieces: at most this size (of the widest operand) ...
PIECES_PER_THREAD = 2  # ... and at least this many pieces per thread, taken as threads come free
SHRINK_TO = 8  # the last pieces shrink to 1/SHRINK_TO of the others ...
MIN_PIECE_BYTES = 64 * 2**10  # ... but not below this size, unless the caller says otherwise

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


def threads_for(pieces, total_bytes, array):
    """How many threads to split `pieces` pieces of work (total_bytes in all) over: one when
    the work is small (under MIN_BYTES_PER_THREAD per thread), for an array that is not
    NumPy's (a GPU's), or when called from inside a parallel section (a nested split would
    wait for a pool thread that is waiting)."""
    threads = get_num_threads()
    nested = thread_index() != 0 or getattr(_local, "busy", False)
    if threads == 1 or array_module(array) is not numpy or nested:
        return 1
    return int(max(1, min(threads, pieces, total_bytes // MIN_BYTES_PER_THREAD)))


def run(fn, ranges):
    """[fn(start, stop) for (start, stop) in ranges], the first range in the calling thread and
    the others in the pool, all at once. Exceptions propagate to the caller, but only once
    every range has finished: a range still running after its call returned would write into
    that call's arrays while the next call runs."""
    if len(ranges) <= 1 or _state["pool"] is None:  # nothing to share, or one thread
        return [fn(*r) for r in ranges]
    _local.busy = True
    futures = []
    try:
        futures = [_state["pool"].submit(fn, *r) for r in ranges[1:]]
        first = fn(*ranges[0])
        return [first] + [future.result() for future in futures]
    finally:
        wait(futures)
        _local.busy = False


def map_ranges(fn, ranges, total_bytes, array):
    """[fn(start, stop) for (start, stop) in ranges], in order, the threads each taking the
    next range as soon as they finish one: a slow range or a busy core delays nobody."""
    threads = threads_for(len(ranges), total_bytes, array)
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


def split(length, unit_bytes, array, buffer_bytes=None, fewest=None, product=False):
    """range(length) (unit_bytes a unit) cut into (start, stop) pieces, by the module's policy.

    On several threads: pieces of at most buffer_bytes (and PIECE_BYTES for a `product`), at
    least PIECES_PER_THREAD a thread, shrinking towards the end to a SHRINK_TO-th, never under
    `fewest` units unless that would leave a thread without one (the last piece may be
    shorter). On one thread: pieces of buffer_bytes, or the whole range where no buffer
    bounds it. A `fewest` given by the caller wins over buffer_bytes; the default is
    MIN_PIECE_BYTES (or buffer_bytes, where smaller)."""
    unit_bytes = max(1, unit_bytes)  # an empty row (a (5, 0) array) still makes pieces
    threads = threads_for(length, length * unit_bytes, array)
    largest = length if buffer_bytes is None else buffer_bytes // unit_bytes
    if threads > 1:
        largest = min(largest, -(-length // (threads * PIECES_PER_THREAD)))
        if product:
            largest = min(largest, -(-PIECE_BYTES // unit_bytes))
    if fewest is None:
        fewest = -(-min(MIN_PIECE_BYTES, buffer_bytes or MIN_PIECE_BYTES) // unit_bytes)
    fewest = max(1, min(fewest, -(-length // threads)))
    largest = max(largest, fewest)
    smallest = max(largest // SHRINK_TO, fewest) if threads > 1 else largest
    pieces, start = [], 0
    while start < length:  # a (2 * threads)-th of what is left, between smallest and largest
        size = min(largest, max(smallest, -(-(length - start) // (2 * threads))))
        pieces.append((start, min(length, start + size)))
        start += size
    return pieces


def for_pieces(fn, length, unit_bytes, array, buffer_bytes=None, fewest=None):
    """[fn(start, stop) for each piece of split(length, ...)], in order, in the threads."""
    return map_ranges(fn, split(length, unit_bytes, array, buffer_bytes, fewest),
                      length * unit_bytes, array)
