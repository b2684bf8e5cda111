"""Batch norm's CPU kernel parts (cpu/batch_norm.py's BatchNormBlocked runs on them): the
cache-sized blocks of rows its passes work on, spread over the threads (RowBlocks); which
channels it centres before it multiplies (Centring); and the per-channel moments of a batch,
read once (batch_moments).
"""
import numpy

from nn.runtime.threads import map_ranges, thread_index

BLOCK_BYTES = 512 * 2**10  # a block of rows, read by several passes in turn while in cache
TILE_BYTES = 64 * 2**10  # batch norm's per-channel vectors, repeated to about this size


class RowBlocks:
    """The blocks of rows of an (n, C) array that one batch norm call's passes work on, spread
    over the threads (nn/runtime/threads.py), and what its passes share:

    - tiles: a per-channel vector repeated to t rows (about TILE_BYTES), and each block of m
      rows seen as (m / t, t, C) (`view`; m is a multiple of t, or less than t). An operation of
      a block with a tile then runs as fast as one of two same-shape arrays, because NumPy's
      inner loop covers a whole tile, where broadcasting a (C,) vector runs it once per row,
      a short loop with its overhead at every row.
    - rows of ones: a sum over rows is fastest as a matrix product, and two rows of ones make
      it one: OpenBLAS computes a one-row product with its matrix-vector routine, which does
      not speed up on a second thread, and a two-row product with its matrix routine, which
      does.
    - buffers of each thread's own, reused from block to block: one of a block's size, for a
      block's centred copy or products (buffer), and a tile's, in float32 and in float64, for
      the column sums (partial_buffers)."""

    def __init__(self, rows):
        self.rows = rows
        n, C = rows.shape
        self.row_bytes = C * rows.itemsize
        t = self.tile_rows = min(n, max(1, TILE_BYTES // self.row_bytes))
        size = max(t, max(1, BLOCK_BYTES // self.row_bytes) // t * t)
        whole = n // size * size
        self.ranges = [(start, start + size) for start in range(0, whole, size)]
        if n - whole >= t:  # what is left: a multiple of t rows, then fewer than t
            self.ranges.append((whole, whole + (n - whole) // t * t))
        if (n - whole) % t:
            self.ranges.append((n - (n - whole) % t, n))
        self.ones = numpy.ones((2, size // t), rows.dtype)  # 2 rows: see above
        self.block_size, self.scratch = min(n, size), {}  # buffer(): one per thread
        self.ones64 = numpy.ones(t)

    def map(self, fn):
        """[fn(start, stop) for each block], the blocks spread over threads."""
        return map_ranges(fn, self.ranges, self.rows.size * self.rows.itemsize, self.rows)

    def view(self, array, start, stop):
        """The block array[start:stop] (m, C) of a C-contiguous (n, C) array, as a free
        (m / t, t, C) view, t = min(m, tile rows): it broadcasts with a tile sliced [:t]."""
        m = stop - start
        t = min(m, self.tile_rows)
        return array[start:stop].reshape(m // t, t, array.shape[1])

    def tile(self, vector):
        """A (C,) vector repeated to a (t, C) tile, to slice [:t]."""
        return numpy.ascontiguousarray(numpy.broadcast_to(vector, (self.tile_rows, len(vector))))

    def zeros(self):
        return self.tile(numpy.zeros(self.rows.shape[1], self.rows.dtype))

    def buffer(self, like):
        """An array of like's shape and dtype (a block or its view) in a block-sized buffer of
        the calling thread's own, reused from block to block."""
        thread = thread_index()
        if thread not in self.scratch:
            self.scratch[thread] = numpy.empty(self.block_size * self.rows.shape[1],
                                               self.rows.dtype)
        return self.scratch[thread][:like.size].reshape(like.shape)

    def centered(self, array, start, stop, mean_tile):
        """array[start:stop] - mean, seen as view() sees it (m / t, t, C), in buffer()."""
        block = self.view(array, start, stop)
        return numpy.subtract(block, mean_tile[:block.shape[1]], out=self.buffer(block))

    def column_sums(self, block, other):
        """sum(block) and sum(block * other) over the rows of a block (m, C) (or of its view,
        (m / t, t, C)) -> (2, C), in float64.

        In float32, m values added one after another have an error that grows with m: each
        addition rounds the running total, and a BLAS product or NumPy's sum over axis 0
        adds a block's rows that way. So the rows are added in two steps:
          1. the block's m / t tiles onto one tile, in float32 and in cache (at most
             BLOCK_BYTES / TILE_BYTES = 8 terms per value): one product with rows of ones
             for sum(block), one einsum for sum(block * other), into one (2, t C) buffer;
          2. that tile's t rows in float64: both sums cast at once into a float64 buffer and
             added by one product with a row of ones.
        Each value passes through one 8-term float32 sum, so its rounding stays within a few
        units of float32's last place, and the t partial sums of a channel round
        independently, so their errors partly cancel. Step 2 is what the accuracy costs (a
        cast of the tile to float64, a sizeable share of step 1), so the two sums share one
        cast and one product, in buffers of the thread's own, where two reductions with
        dtype=float64 would cast twice. Folding the tile further in float32 first (its two
        halves, or 8 rows onto 1) would cast less, but with more float32 terms per value
        it loses the accuracy this is for."""
        C = block.shape[-1]
        m = block.size // C
        t = min(m, self.tile_rows)
        tiles, others = block.reshape(m // t, t * C), other.reshape(m // t, t * C)
        partial, wide = self.partial_buffers(t * C)
        numpy.matmul(self.ones[:, :m // t], tiles, out=partial)   # 1. sum(block), twice ...
        numpy.einsum("kr,kr->r", tiles, others, out=partial[1])   # ... and sum(block * other)
        wide = wide[:2 * t * C].reshape(2, t, C)
        wide[...] = partial.reshape(2, t, C)                      # 2. in float64
        return numpy.matmul(self.ones64[:t], wide)                # (2, C)

    def partial_buffers(self, size):
        """A (2, size) float32 and a (2 size,) float64 array of the calling thread's own."""
        thread = thread_index()
        key = ("partial", thread)
        if key not in self.scratch:
            r = self.tile_rows * self.rows.shape[1]
            self.scratch[key] = (numpy.empty(2 * r, self.rows.dtype), numpy.empty(2 * r))
        narrow, wide = self.scratch[key]
        return narrow[:2 * size].reshape(2, size), wide


CENTRE_LIMIT = 1  # the output and the backward's sums centre x where mu^2 > this * var ...
FEW_CENTRED = 16  # ... column by column where at most C / this channels need it


class Centring:
    """Where batch norm centres x before it multiplies: in the output, (x - c) * scale, and
    in the backward's sums, sum(g * (x - c)). One per call, the same in both passes.

    centres (C,) float64: c = mu rounded to x's precision for the channels with
    mu^2 > CENTRE_LIMIT * var, whose products with x would round |mu| / sigma times worse
    than centred ones (BatchNormBlocked's docstring), and c = 0 elsewhere, where they round at
    most sqrt(1 + CENTRE_LIMIT) = 1.4 times worse.
    How, from the cheapest:
      - no channel: the passes are those of a plain x * scale + shift, nothing is centred;
      - at most C / FEW_CENTRED channels (few_channels, their indices): the plain passes,
        then those channels' columns again from a centred copy of them (centred_columns). A
        column copy costs many times what a whole in-cache pass costs per value, so beyond
        1/16 of the channels the whole block is cheaper;
      - else (whole_blocks): each block is centred whole (x - c, c = 0 in some channels),
        with tile, c's tile. In a real network, after ReLUs, a sizeable share of the channels
        have mu^2 > var: most batch norms take this way, which is the accurate code's full
        price."""

    def __init__(self, mean, var, dtype, blocks, centres=None):
        C = len(mean)
        if centres is None:
            far = mean ** 2 > CENTRE_LIMIT * var
            centres = numpy.where(far, mean.astype(dtype), 0).astype(numpy.float64)
        self.centres, self.few_channels, self.blocks = centres, None, blocks
        count = int(numpy.count_nonzero(centres))
        self.whole_blocks = count > C // FEW_CENTRED
        self.tile = blocks.tile(centres.astype(dtype)) if self.whole_blocks else None
        if 0 < count <= C // FEW_CENTRED:
            self.few_channels = numpy.flatnonzero(centres)
            self.few_centres = centres[self.few_channels].astype(dtype)

    def centred_columns(self, rows, start, stop):
        """rows[start:stop, few_channels] - c[few_channels]: a new (m, len(few_channels))
        array, the few channels' columns centred."""
        columns = rows[start:stop, self.few_channels]
        columns -= self.few_centres
        return columns


RAW_MOMENTS_LIMIT = 4  # a block's sums of x and x^2 are trusted where mu_b^2 <= this * var_b


def batch_moments(rows, blocks):
    """The per-channel mean and biased variance of rows (n, C), in float64, reading rows once.

    Each block of rows gives its count m_b, mean mu_b and sum of squared deviations M2_b;
    then, in float64, mu = sum_b m_b mu_b / n and M2 = sum_b M2_b + sum_b m_b (mu_b - mu)^2
    (Chan, Golub and LeVeque 1979), exact in exact arithmetic. Within a block (in cache),
    mu_b = sum(x) / m_b, and M2_b about a centre c (0, or mu_b rounded to x's precision):

        M2_b = sum((x - c)^2) - m_b (mu_b - c)^2,

    all sums by Blocks.column_sums, whose relative error e is well below float32's rounding.
      - first c = 0: M2_b = sum(x^2) - m_b mu_b^2, no centred copy. The subtraction cancels:
        M2_b's relative error is e (1 + mu_b^2 / var_b).
      - so the channels with mu_b^2 > RAW_MOMENTS_LIMIT * var_b (values far from zero against
        their spread, as a ReLU's or a shifted input's) are done again with c = mu_b rounded:
        x - c is as accurate as x, each term is a square, nothing cancels, and the second
        term is tiny and exact. Their columns are copied out, or, when they are more than a
        quarter of the channels, the whole block is centred in a buffer.
    M2_b's error is thus at most 1 + RAW_MOMENTS_LIMIT times e. In a real network few channels
    of a block pass the limit, so the second pass is rare and short."""
    n, C = rows.shape
    f64 = numpy.float64

    def block_moments(start, stop):
        m, block = stop - start, rows[start:stop]
        sums = blocks.column_sums(block, block)                                # sum(x), sum(x^2)
        block_mean = sums[0] / m                                              # (C,) float64
        m2 = sums[1] - sums[0] * block_mean                                   # c = 0
        # mu_b^2 > LIMIT * M2_b / m_b, or M2_b < 0 (which implies it), multiplied out:
        # sum(x) mu_b > LIMIT / (1 + LIMIT) * sum(x^2), three small operations, not seven
        limit = RAW_MOMENTS_LIMIT / (1 + RAW_MOMENTS_LIMIT)
        redo = numpy.flatnonzero(sums[0] * block_mean > limit * sums[1])
        if len(redo):
            rounded = block_mean.astype(rows.dtype)                           # c = mu_b rounded
        if len(redo) > C // 4:
            centered = blocks.centered(rows, start, stop, blocks.tile(rounded))
            sums = blocks.column_sums(centered, centered)
            m2 = sums[1] - m * (block_mean - rounded) ** 2
        elif len(redo):
            centered = block[:, redo]                                          # a copy
            centered -= rounded[redo]
            m2[redo] = (blocks.column_sums(centered, centered)[1]
                        - m * (block_mean[redo] - rounded[redo]) ** 2)
        return m, block_mean, m2
    parts = blocks.map(block_moments)
    counts = numpy.asarray([p[0] for p in parts], dtype=f64)[:, None]       # (blocks, 1)
    means = numpy.stack([p[1] for p in parts])                              # (blocks, C)
    mean = (counts * means).sum(axis=0) / n
    m2 = numpy.stack([p[2] for p in parts]).sum(axis=0) + (counts * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / n


def total(parts):
    """The sum of per-block float64 partial sums, in list order, in float64."""
    return numpy.stack(parts).sum(axis=0, dtype=numpy.float64)
