"""nn/runtime/threads.py, the CPU's thread pool and its one policy for cutting work into
pieces, through its public functions: who works (threads_for), how work is cut (split), how
pieces run (run, map_ranges, for_pieces); and memory.py's reuse_freed_memory. The operations
built on them are in tests/test_runtime_parallel.py, the ops that split in each op's own test
file.

Tests that need several threads skip where NumPy's BLAS is not OpenBLAS (the pool then keeps
one thread). The `threads` fixture (conftest.py) restores the thread count; it is named with
usefixtures here, as a parameter it would hide the module `threads`."""
import os
import threading
import time

import numpy
import pytest

from nn.runtime import threads
from nn.runtime.memory import reuse_freed_memory
from nn.runtime.parallel import matmul

ARRAY = numpy.zeros(1)  # split and map_ranges only ask it where the work runs: the CPU


def use_threads(n):
    """set_num_threads(n), skipping the test where NumPy's BLAS is not OpenBLAS (one thread)."""
    threads.set_num_threads(n)
    if threads.get_num_threads() != n:
        pytest.skip("NumPy's BLAS is not OpenBLAS here: nn/functional/cpu runs one thread")


def sizes(pieces):
    return [stop - start for start, stop in pieces]


def covers_in_order(pieces, length):
    """The pieces are range(length), each unit once, in order, none empty: each starts where
    the one before stopped, the first at 0, the last stopping at length."""
    bounds = [0] + [bound for piece in pieces for bound in piece] + [length]
    return (bounds[0::2] == bounds[1::2]
            and all(stop > start for start, stop in pieces))


# ----- who works ----------------------------------------------------------------------------

@pytest.mark.usefixtures("threads")
def test_small_work_stays_in_the_calling_thread():
    """Under MIN_BYTES_PER_THREAD a thread a hand-off costs more than it saves: one piece, run by
    the caller (thread 0). One piece of work, however large, is one thread's too."""
    use_threads(2)
    small = threads.MIN_BYTES_PER_THREAD
    assert threads.threads_for(100, 2 * small - 1, ARRAY) == 1
    assert threads.threads_for(100, 2 * small, ARRAY) == 2
    assert threads.threads_for(1, 100 * small, ARRAY) == 1
    seen = threads.for_pieces(lambda start, stop: (start, stop, threads.thread_index()),
                              small, 1, ARRAY)
    assert seen == [(0, small, 0)]
    assert len(threads.split(4 * small, 1, ARRAY)) > 1


# ----- how pieces run -----------------------------------------------------------------------

@pytest.mark.usefixtures("threads")
def test_run_takes_the_first_range_in_the_caller_and_the_others_in_the_pool_at_once():
    """Each range waits for the other at a barrier: they can only both finish if they run at
    the same time, the first in the calling thread (index 0), the second in the pool."""
    use_threads(2)
    barrier = threading.Barrier(2, timeout=30)

    def meet(start, stop):
        barrier.wait()
        return start, stop, threads.thread_index()
    assert threads.run(meet, [(0, 5), (5, 9)]) == [(0, 5, 0), (5, 9, 1)]


@pytest.mark.usefixtures("threads")
def test_run_raises_only_once_every_range_has_finished():
    """A range still running after run raised would write into the arrays of a call that has
    returned: the caller's range fails at once, the pool's ends 0.3 s later, and the error
    must arrive after it. An error in a pool range reaches the caller too, and a failed run
    leaves the caller outside any parallel section (its next work splits again)."""
    use_threads(2)
    finished = []

    def caller_fails(start, stop):
        if start == 0:
            raise ArithmeticError(f"rows {start}..{stop}")
        time.sleep(0.3)
        finished.append((start, stop))
    with pytest.raises(ArithmeticError, match="rows 0..5"):
        threads.run(caller_fails, [(0, 5), (5, 9)])
    assert finished == [(5, 9)]

    def pool_fails(start, stop):
        if start != 0:
            raise ArithmeticError(f"rows {start}..{stop}")
    with pytest.raises(ArithmeticError, match="rows 5..9"):
        threads.run(pool_fails, [(0, 5), (5, 9)])
    assert threads.threads_for(2, 100 * threads.MIN_BYTES_PER_THREAD, ARRAY) == 2


@pytest.mark.usefixtures("threads")
def test_a_split_inside_a_split_runs_serially(monkeypatch):
    """A nested split would wait for a pool thread that is itself waiting: inside a parallel
    section, in the calling thread as in a pool thread, work is one piece."""
    use_threads(2)
    monkeypatch.setattr(threads, "MIN_BYTES_PER_THREAD", 1)
    assert len(threads.split(8, 1, ARRAY)) > 1                       # outside: split
    inner = threads.run(lambda start, stop: threads.split(8, 1, ARRAY), [(0, 1), (1, 2)])
    assert inner == [[(0, 8)], [(0, 8)]]                            # caller, pool thread
    nested = threads.for_pieces(
        lambda start, stop: threads.for_pieces(lambda a, b: (a, b), 8, 1, ARRAY), 8, 1, ARRAY)
    assert len(nested) > 1 and all(pieces == [(0, 8)] for pieces in nested)


@pytest.mark.usefixtures("threads")
def test_for_pieces_hands_out_pieces_as_threads_come_free_and_returns_them_in_order(
        monkeypatch):
    """The first piece blocks until the last one is done: only a thread that takes the next
    piece as it comes free gets through the others meanwhile (with fixed shares the last piece
    could sit behind the first). The first piece ends last, yet comes back first."""
    use_threads(2)
    monkeypatch.setattr(threads, "MIN_BYTES_PER_THREAD", 1)
    pieces = threads.split(64, 1, ARRAY, fewest=1)
    assert len(pieces) > 4
    last_done = threading.Event()

    def piece(start, stop):
        if start == 0:
            assert last_done.wait(timeout=30), "the last piece waited behind the first"
        elif stop == 64:
            last_done.set()
        return start, stop, threads.thread_index()
    results = threads.for_pieces(piece, 64, 1, ARRAY, fewest=1)
    assert [(start, stop) for start, stop, _ in results] == pieces
    first, others = results[0][2], {index for _, _, index in results[1:]}
    assert len(others) == 1 and first not in others


@pytest.mark.usefixtures("threads")
def test_map_ranges_returns_results_in_the_order_of_the_given_ranges():
    use_threads(2)
    ranges = [(5, 9), (0, 5), (9, 10)]
    many_bytes = 100 * threads.MIN_BYTES_PER_THREAD
    assert threads.map_ranges(lambda start, stop: (start, stop), ranges, many_bytes,
                              ARRAY) == ranges


# ----- how work is cut ----------------------------------------------------------------------

@pytest.mark.usefixtures("threads")
def test_split_cuts_pieces_of_piece_bytes_then_a_quarter_of_the_rest_down_to_an_eighth(
        monkeypatch):
    """A product's 1024 units of 1 byte on 2 threads, PIECE_BYTES = 64: pieces of 64 while at
    least four of them are left, then a (2 * threads)-th of what is left, rounded up (192/4 =
    48, 144/4 = 36, 108/4 = 27, 81/4 -> 21, ...), no smaller than 64 / SHRINK_TO = 8; the last
    piece takes what is left."""
    use_threads(2)
    for name, value in (("MIN_BYTES_PER_THREAD", 1), ("MIN_PIECE_BYTES", 1), ("PIECE_BYTES", 64),
                        ("PIECES_PER_THREAD", 2), ("SHRINK_TO", 8)):
        monkeypatch.setattr(threads, name, value)
    pieces = threads.split(1024, 1, ARRAY, product=True)
    assert covers_in_order(pieces, 1024)
    assert sizes(pieces) == [64] * 13 + [48, 36, 27, 21, 15, 12, 9, 8, 8, 8]
    assert threads.split(0, 1, ARRAY) == []


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.usefixtures("threads")
def test_split_gives_every_thread_at_least_pieces_per_thread_pieces(monkeypatch, n):
    """Work under PIECE_BYTES a piece is still cut into PIECES_PER_THREAD pieces a thread, the
    first a (threads * PIECES_PER_THREAD)-th of the work, so that threads that come free can
    take over the pieces of a busy one."""
    use_threads(n)
    length = threads.PIECE_BYTES                                    # 4 MiB of 1-byte units
    pieces = threads.split(length, 1, ARRAY)
    assert covers_in_order(pieces, length)
    assert pieces[0] == (0, -(-length // (n * threads.PIECES_PER_THREAD)))
    assert len(pieces) >= n * threads.PIECES_PER_THREAD
    monkeypatch.setattr(threads, "MIN_BYTES_PER_THREAD", 1)
    monkeypatch.setattr(threads, "MIN_PIECE_BYTES", 1)
    if n == 2:  # 50 units: a quarter (13), then a quarter of the rest, down to one unit
        assert sizes(threads.split(50, 1, ARRAY)) == [13, 10, 7, 5, 4, 3, 2, 2, 1, 1, 1, 1]


@pytest.mark.usefixtures("threads")
def test_a_products_pieces_are_at_most_piece_bytes_and_an_elementwise_pass_takes_no_bound():
    """A product's 64 MiB in units of 4 KiB: pieces of PIECE_BYTES (1024 units), however many
    that makes; a unit larger than PIECE_BYTES is a piece of its own. The same work as an
    elementwise pass: a (threads * PIECES_PER_THREAD)-th first, then shrinking."""
    use_threads(2)
    unit = 4096
    length = 64 * 2**20 // unit
    pieces = threads.split(length, unit, ARRAY, product=True)
    assert covers_in_order(pieces, length)
    assert pieces[0] == (0, threads.PIECE_BYTES // unit)
    assert max(sizes(pieces)) * unit == threads.PIECE_BYTES
    assert threads.split(10, 2 * threads.PIECE_BYTES, ARRAY, product=True) == [
        (i, i + 1) for i in range(10)]
    streamed = threads.split(length, unit, ARRAY)
    assert covers_in_order(streamed, length)
    assert streamed[0] == (0, length // (2 * threads.PIECES_PER_THREAD))
    assert len(streamed) < len(pieces)


@pytest.mark.usefixtures("threads")
def test_split_never_cuts_under_fewest_unless_a_thread_would_get_none(monkeypatch):
    """500 units, fewest 100, 2 threads: a first piece of a quarter (125), then pieces of 100,
    the last taking what is left. 150 units: two of 75, as pieces of 100 would leave one thread
    without work. The default is MIN_PIECE_BYTES: 2 * MIN_PIECE_BYTES bytes make two pieces,
    not the four that PIECES_PER_THREAD asks for."""
    use_threads(2)
    monkeypatch.setattr(threads, "MIN_BYTES_PER_THREAD", 1)
    assert sizes(threads.split(500, 10, ARRAY, fewest=100)) == [125, 100, 100, 100, 75]
    assert threads.split(150, 10, ARRAY, fewest=100) == [(0, 75), (75, 150)]
    least = threads.MIN_PIECE_BYTES
    assert threads.split(2 * least, 1, ARRAY) == [(0, least), (least, 2 * least)]
    assert threads.split(2 * least, 1, ARRAY, fewest=1)[0] == (0, least // 2)


@pytest.mark.usefixtures("threads")
def test_a_buffer_bounds_the_pieces_on_one_thread():
    """A caller whose piece fills a buffer of its own gets pieces that fit it, in whole units
    (at least one), on one thread too; without a buffer one thread takes the range whole."""
    threads.set_num_threads(1)
    unit = threads.MIN_PIECE_BYTES  # so that the default fewest is one unit
    assert threads.split(10, unit, ARRAY, buffer_bytes=4 * unit) == [(0, 4), (4, 8), (8, 10)]
    assert threads.split(10, unit, ARRAY, buffer_bytes=5 * unit - 1) == [(0, 4), (4, 8),
                                                                         (8, 10)]
    assert threads.split(3, unit, ARRAY, buffer_bytes=unit // 2) == [(0, 1), (1, 2), (2, 3)]
    assert threads.split(10, unit, ARRAY) == [(0, 10)]
    # a buffer smaller than MIN_PIECE_BYTES still bounds the pieces (the default fewest
    # follows it), but a fewest the caller gives wins over it
    assert threads.split(10, 4, ARRAY, buffer_bytes=16) == [(0, 4), (4, 8), (8, 10)]
    assert threads.split(10, 4, ARRAY, buffer_bytes=16, fewest=6) == [(0, 6), (6, 10)]


def test_run_without_a_pool_runs_the_ranges_in_order_in_the_calling_thread(monkeypatch):
    """run with several ranges before any pool exists (one thread, or a forked child that
    has not asked for its threads yet) must not fail for want of a pool."""
    monkeypatch.setitem(threads._state, "pool", None)
    seen = threads.run(lambda start, stop: (start, stop, threading.get_ident()),
                       [(0, 2), (2, 3)])
    assert seen == [(0, 2, threading.get_ident()), (2, 3, threading.get_ident())]
    assert threads.run(lambda start, stop: None, []) == []


@pytest.mark.usefixtures("threads")
def test_a_buffer_bounds_the_pieces_on_several_threads_below_piece_bytes():
    use_threads(2)
    unit = threads.MIN_PIECE_BYTES
    length = 1000
    assert sizes(threads.split(length, unit, ARRAY, product=True))[0] == \
        threads.PIECE_BYTES // unit
    pieces = threads.split(length, unit, ARRAY, buffer_bytes=16 * unit)
    assert covers_in_order(pieces, length)
    assert sizes(pieces)[0] == 16 and max(sizes(pieces)) == 16
    assert min(sizes(pieces)[:-1]) == 16 // threads.SHRINK_TO               # still shrinking


@pytest.mark.usefixtures("threads")
def test_one_thread_without_a_buffer_takes_the_whole_range_as_one_piece():
    threads.set_num_threads(1)
    assert threads.split(2**30, 8, ARRAY) == [(0, 2**30)]
    assert threads.for_pieces(lambda start, stop: (start, stop, threads.thread_index()),
                              2**30, 8, ARRAY) == [(0, 2**30, 0)]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.usefixtures("threads")
def test_split_covers_the_range_in_order_in_pieces_that_shrink_within_bounds(n):
    """The policy's claims over a grid of lengths, unit sizes and buffers, with the real
    constants: the pieces cover range(length) in order and never grow; where the work is
    split (fewest=1, so that only the policy's own bounds act), no piece of a product exceeds
    PIECE_BYTES, none exceeds the buffer (in whole units, at least one), none but the last is
    under a SHRINK_TO-th of the first, and there are PIECES_PER_THREAD a thread (or one a
    unit)."""
    use_threads(n)
    for length in (1, 2, 7, 100, 1000, 12345, 10**6, 3 * 2**20):
        for unit in (1, 8, 4096, 2**16):
            for buffer in (None, 2**20):
                for fewest, product in ((None, True), (1, True), (1, False), (512, False)):
                    case = (length, unit, buffer, fewest, product)
                    pieces = threads.split(length, unit, ARRAY, buffer, fewest, product)
                    assert covers_in_order(pieces, length), case
                    size = sizes(pieces)
                    assert all(a >= b for a, b in zip(size, size[1:])), case
                    working = threads.threads_for(length, length * unit, ARRAY)
                    if fewest != 1 or working == 1:
                        continue
                    if product:
                        assert max(size) <= max(1, -(-threads.PIECE_BYTES // unit)), case
                    if buffer is not None:
                        assert max(size) <= max(1, buffer // unit), case
                    assert min(size[:-1], default=size[0]) >= size[0] // threads.SHRINK_TO, case
                    assert len(pieces) >= min(length, working * threads.PIECES_PER_THREAD), case


# ----- the pool and the BLAS ----------------------------------------------------------------

def _use_the_pool_in_a_child(queue):
    a = numpy.arange(12.0).reshape(6, 2)
    barrier = threading.Barrier(2, timeout=10)

    def meet(start, stop):
        barrier.wait()
        return threads.thread_index()
    count = threads.get_num_threads()
    queue.put((count, threads.run(meet, [(0, 1), (1, 2)]), matmul(a, a.T).tolist()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.usefixtures("threads")
def test_a_forked_child_gets_a_pool_of_its_own(monkeypatch):
    """After fork the parent's pool threads do not exist in the child: work handed to them
    would wait forever. The child must start a pool of its own ($OMP_NUM_THREADS threads),
    whose two threads meet at a barrier, and split a product on it."""
    import multiprocessing
    use_threads(2)
    monkeypatch.setattr(threads, "MIN_BYTES_PER_THREAD", 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    matmul(numpy.ones((4, 2)), numpy.ones((2, 3)))                  # the parent's pool is in use
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_use_the_pool_in_a_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's thread pool")
    assert child.exitcode == 0, "the child failed: see its traceback above"
    a = numpy.arange(12.0).reshape(6, 2)
    assert queue.get(timeout=5) == (2, [0, 1], (a @ a.T).tolist())


def test_blas_description_is_openblas_own_account_exactly_when_numpy_uses_openblas():
    """NumPy's build names its BLAS; where that is OpenBLAS, blas_description is what the
    library loaded says of itself (its version first), and None where it is another BLAS."""
    blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    description = threads.blas_description()
    if "openblas" in blas["name"].lower():
        assert description is not None and description.startswith("OpenBLAS "), description
        assert blas["version"] in description, (blas["version"], description)
    else:
        assert description is None


def test_set_num_threads_rejects_nonsense():
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(ValueError, match="positive int"):
            threads.set_num_threads(bad)


# Run in a fresh process: what glibc's malloc serves by mmap (mallinfo2's hblkhd) for a 64 MiB
# array, then whether its heap (arena) keeps 64 MiB after that array is freed; before
# reuse_freed_memory(), which it calls twice, and after.
MALLOC_PROBE = """
import ctypes, runpy, sys
import numpy

reuse_freed_memory = runpy.run_path(sys.argv[1])["reuse_freed_memory"]  # not the whole of nn

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2

def probe():
    mapped = libc.mallinfo2().hblkhd
    block = numpy.ones(2**23)  # 64 MiB
    mapped = libc.mallinfo2().hblkhd - mapped
    del block
    return [mapped >= 2**26, libc.mallinfo2().arena >= 2**26]

print(probe(), [reuse_freed_memory(), reuse_freed_memory()], probe())
"""


def test_reuse_freed_memory_serves_big_arrays_from_the_heap_and_keeps_them():
    """On glibc: before the call a 64 MiB array is mmapped and its memory goes back to the
    kernel when freed; after it (True, twice), the array comes from the heap and the heap
    keeps its pages. Elsewhere the call is a no-op that says False."""
    import platform
    import subprocess
    import sys
    if platform.libc_ver()[0] != "glibc":
        assert reuse_freed_memory() is False
        return
    from nn.runtime import memory
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", MALLOC_PROBE, memory.__file__], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[True, False] [True, True] [False, True]"
