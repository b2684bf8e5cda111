"""Whole-array operations on every core: sums, copies and matrix products, cut by threads.py.

    add(a, b)               a + b, the first axis split over the threads
    total(arrays)           arrays[0] + arrays[1] + ..., added in that order, split likewise
    copy(a)                 a C-contiguous copy of a, split likewise
    matmul(a, b, out)       a @ b, the larger side of the result cut into pieces for the threads
    matmul_transposed(a, b) a.T @ b, a long sum over rows cut likewise, the parts added in order
                            (a short one: in runs of 64+ rows, for accuracy)
    column_sum(rows)        rows.sum(axis=0), in runs of 64 rows added in float64

Each is the NumPy expression in its name: to the last bit for add, copy and total, whose
threads only share out rows of elementwise work; as accurate for the products, whose pieces
BLAS rounds as it rounds any product (a row at a piece's edge may differ in its last bit from
the same row of one product), and whose sums over rows are added in a fixed order (see
matmul_transposed). They take any array module's arrays: a GPU's run as one piece, the same
arithmetic in the same order (for matmul_transposed and column_sum, the same runs).

    use_threaded_gradients()  makes the engine sum and copy gradients with add and copy

A program calls use_threaded_gradients() once at its start (simclr.train does): the engine
itself runs no threads, and importing this module changes nothing in it.
"""
import autograd
from autograd.backend import array_module

from .threads import for_pieces, map_ranges, split

MIN_PIECE = 512  # a product's pieces have at least this many rows (or columns): each packs the
                 # whole other operand into BLAS's buffers again
SUM_RUNS = 8  # matmul_transposed: a sum over rows in at least this many runs (run_rows),
MIN_RUN_ROWS = 64  # of at least this many rows, where that makes runs shorter than
MAX_RUN_ROWS = 256  # this (BLAS's own float32 blocks) and their partial products
RUNS_BYTES = 2**20  # take at most this many bytes in all
COLUMN_SUM_RUN = 64  # column_sum adds runs of this many rows in the array's dtype


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
    for_pieces(add_rows, first.shape[0], first[:1].nbytes * len(arrays), first)
    return out


def copy(a):
    """A C-contiguous copy of a (any strides), the first axis split over the threads."""
    xp = array_module(a)
    if a.ndim == 0:
        return a.copy()
    out = xp.empty(a.shape, dtype=a.dtype)
    for_pieces(lambda start, stop: xp.copyto(out[start:stop], a[start:stop]),
               a.shape[0], a[:1].nbytes, a)
    return out


def matmul(a, b, out=None):
    """a (M, K) @ b (K, F) -> (M, F), written into `out` when given. The larger side of the
    result is cut into pieces (threads.split) that the threads take as they come free: the rows
    of a (a conv's many pixels) or the columns of b (a linear layer's outputs for a few rows, where
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
    products are added in order (total); otherwise each thread computes its own rows
    of the result. A short sum with small partial products is taken in runs instead, for
    accuracy (run_rows, _sum_of_runs)."""
    xp = array_module(a)
    M, F = a.shape
    K = b.shape[1]
    run = run_rows(M, F * K * a.itemsize)
    if run is not None:
        return _sum_of_runs(a, b, run)
    if M < F + K:
        out = xp.empty((F, K), dtype=xp.result_type(a, b))

        def rows(start, stop):
            xp.matmul(a[:, start:stop].T, b, out=out[start:stop])
        map_ranges(rows, _pieces(F, M * a.itemsize, a), F * M * a.itemsize, a)
        return out
    parts = map_ranges(lambda start, stop: a[start:stop].T @ b[start:stop],
                       _pieces(M, max(F, K) * a.itemsize, a),
                       M * (F + K) * a.itemsize, a)
    return total(parts)


def _pieces(length, unit_bytes, a):
    """A product's pieces along an axis of `length` (threads.split: at most PIECE_BYTES, at
    least MIN_PIECE rows)."""
    return split(length, unit_bytes, a, fewest=MIN_PIECE, product=True)


def run_rows(M, part_bytes):
    """Rows per run for a.T @ b over M rows whose (F, K) result takes part_bytes: M cut into
    SUM_RUNS runs of at least MIN_RUN_ROWS rows; None where that makes one run, runs of
    MAX_RUN_ROWS or more, or partial products of more than RUNS_BYTES in all.

    Why: BLAS adds a product's terms one after another in float32, in blocks of a few hundred
    rows, so a short sum over a few hundred rows in one or two pieces adds each term onto a
    long running total and errs several times more than PyTorch's, which adds the 64 pixels
    of each image in a product of its own. In runs of 64 rows, their products added in
    float32, it errs as PyTorch's. Each run costs one more (F, K) partial product, written
    and added, so runs are taken only while they are few and their partials fit in cache,
    and only where they are shorter than BLAS's blocks: a long sum keeps its pieces
    (threads.split), already many partial sums, where runs would only cost time."""
    rows = max(MIN_RUN_ROWS, -(-M // SUM_RUNS))
    count = -(-M // rows)
    if count <= 1 or rows >= MAX_RUN_ROWS or count * part_bytes > RUNS_BYTES:
        return None
    return rows


def _sum_of_runs(a, b, rows):
    """a.T @ b = sum_p a_p.T @ b_p over the runs a_p, b_p of `rows` rows (the last one may be
    shorter): the P products in one batched product (P, F, K), the threads taking runs of it
    (for_pieces), then added in order (a sum over the first axis), so the result does not
    depend on the threads. One batched product, not a product per run: a call per run would
    pay BLAS's set-up and the threads' hand-off once a run, which on products this short
    costs more than the products themselves."""
    xp = array_module(a)
    M, F = a.shape
    K = b.shape[1]
    whole, P = M - M % rows, M // rows                               # rows in whole runs
    parts = xp.empty((-(-M // rows), F, K), dtype=xp.result_type(a, b))
    a_runs = a[:whole].reshape(P, rows, F).transpose(0, 2, 1)       # (P, F, rows)
    b_runs = b[:whole].reshape(P, rows, K)                          # (P, rows, K)

    def multiply(start, stop):
        xp.matmul(a_runs[start:stop], b_runs[start:stop], out=parts[start:stop])
    for_pieces(multiply, P, rows * (F + K) * a.itemsize, a)
    if whole < M:
        xp.matmul(a[whole:].T, b[whole:], out=parts[P])
    return parts.sum(axis=0)


def column_sum(rows):
    """rows.sum(axis=0) of an (M, F) array, as accurately as PyTorch sums a conv's bias
    gradient: sum_p (1^T R_p)[f] over runs R_p of COLUMN_SUM_RUN rows.

    One batched product with a ones vector gives each run's (F,) sum in the array's dtype,
    and those P = M/run partial sums are added in float64 and rounded once. Each float32 sum
    then adds at most COLUMN_SUM_RUN values, where rows.sum(axis=0) adds all M rows one after
    another, its rounding error growing with M (this errs as PyTorch's). The product is also
    a faster pass over the array than the row-by-row sum, and the float64 additions are only
    M/run per column."""
    xp = array_module(rows)
    M, F = rows.shape
    run = max(1, min(M, COLUMN_SUM_RUN))
    whole = M - M % run                                              # rows in whole runs
    ones = xp.ones(run, dtype=rows.dtype)
    partial = xp.matmul(ones, rows[:whole].reshape(-1, run, F))      # (P, F)
    result = partial.sum(axis=0, dtype=xp.float64)
    if whole < M:
        result += rows[whole:].sum(axis=0, dtype=xp.float64)
    return result.astype(rows.dtype)


def use_threaded_gradients(enabled=True):
    """Make autograd's backward pass sum the gradients that meet at a tensor, and copy a
    leaf's first gradient, with add and copy above (enabled=False: the plain expressions
    again). A leaf's gradient can be as large as a batch of images, so on a CPU these two
    passes are worth every core. Returns the previous (add, copy) of the engine."""
    return autograd.set_gradient_passes(add=add if enabled else None,
                                        copy=copy if enabled else None)
