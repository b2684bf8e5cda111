"""Batch norm's CPU kernel parts (cpu/batch_norm.py's BatchNormBlocked runs on them): the
cache-sized blocks of rows its passes work on, spread over the threads; which channels it
centres before it multiplies; and the per-channel moments of a batch, read once. On the GPU
a block is all the rows and every channel is centred.
"""
from autograd import array_module
from autograd.backend import device_of

from .threads import map_ranges, thread_index

BLOCK_BYTES = 512 * 2**10  # a block of rows, read by several passes in turn while in cache
TILE_BYTES = 64 * 2**10  # batch norm's per-channel vectors, repeated to about this size


class Blocks:
    """The blocks of rows of an (n, C) array that one batch norm call's passes work on, spread
    over the threads (threads.py), and what its passes share on the CPU:

    - tiles: a per-channel vector repeated to t rows (about TILE_BYTES), and each block of m
      rows seen as (m / t, t, C) (`view`; m is a multiple of t, or less than t). An operation of
      a block with a tile then runs as fast as one of two same-shape arrays, because NumPy's
      inner loop covers a whole tile, where broadcasting a (C,) vector runs it once per row:
      an in-place multiply of a 512 KiB block ran at 30 GB/s with a 64 KiB tile, 17 with a
      16 KiB one and 13-16 with the vector (C = 64-1024, best of 300 runs).
    - rows of ones: a sum over rows is fastest as a matrix product, and two rows of ones make
      it one: OpenBLAS computes a one-row product with its matrix-vector routine, which ran
      no faster on two threads than on one (10.2 and 10.9 us per 512 KiB block, where two
      rows took 11.7 and 6.9).
    - buffers of each thread's own, reused from block to block: one of a block's size, for a
      block's centred copy or products (buffer), and a tile's, in float32 and in float64, for
      the column sums (partial_buffers).
    On the GPU a block is all rows and a vector's tile is a (1, C) view that broadcasts."""

    def __init__(self, rows):
        self.xp, self.rows = array_module(rows), rows
        n, C = rows.shape
        self.row_bytes = C * rows.itemsize
        self.on_cpu = device_of(rows) == "cpu"
        if not self.on_cpu:
            self.tile_rows, self.ranges, self.ones = n, [(0, n)], None
            return
        t = self.tile_rows = min(n, max(1, TILE_BYTES // self.row_bytes))
        size = max(t, max(1, BLOCK_BYTES // self.row_bytes) // t * t)
        whole = n // size * size
        self.ranges = [(start, start + size) for start in range(0, whole, size)]
        if n - whole >= t:  # what is left: a multiple of t rows, then fewer than t
            self.ranges.append((whole, whole + (n - whole) // t * t))
        if (n - whole) % t:
            self.ranges.append((n - (n - whole) % t, n))
        self.ones = self.xp.ones((2, size // t), rows.dtype)  # 2 rows: see above
        self.block_size, self.scratch = min(n, size), {}  # buffer(): one per thread
        self.ones64 = self.xp.ones(t)

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
        """A (C,) vector repeated to a (t, C) tile, to slice [:t] (on the GPU: a (1, C) view,
        which slices to itself and broadcasts as well)."""
        if not self.on_cpu:
            return vector[None, :]
        return self.xp.ascontiguousarray(self.xp.broadcast_to(vector,
                                                              (self.tile_rows, len(vector))))

    def zeros(self):
        return self.tile(self.xp.zeros(self.rows.shape[1], self.rows.dtype))

    def buffer(self, like):
        """An array of like's shape and dtype (a block or its view) in a block-sized buffer of
        the calling thread's own, reused from block to block (on the GPU: a new array)."""
        if not self.on_cpu:
            return self.xp.empty_like(like)
        thread = thread_index()
        if thread not in self.scratch:
            self.scratch[thread] = self.xp.empty(self.block_size * self.rows.shape[1],
                                                 self.rows.dtype)
        return self.scratch[thread][:like.size].reshape(like.shape)

    def centered(self, array, start, stop, mean_tile):
        """array[start:stop] - mean, seen as view() sees it (m / t, t, C), in buffer()."""
        block = self.view(array, start, stop)
        return self.xp.subtract(block, mean_tile[:block.shape[1]], out=self.buffer(block))

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
        independently, so their errors partly cancel. Step 2 is what the accuracy costs:
        NumPy casts float32 to float64 at about 0.3 ns a value (5 us a 64 KiB tile, a
        third of step 1), so the two sums share one cast and one product, in buffers of the
        thread's own (two reductions with dtype=float64 took twice as long). Adding the
        tile's two halves in float32 first halves the cast but doubled the error of the
        variance at a mean of 1000 standard deviations (and put dgamma at 0.96x PyTorch's
        error, not 0.82x); folding 8 rows onto 1 put dbias at 1.7x, not 0.9x.
        On the GPU: one reduction each, in float64."""
        xp, C = self.xp, block.shape[-1]
        if not self.on_cpu:
            block, other = block.reshape(-1, C), other.reshape(-1, C)
            return xp.stack([block.sum(axis=0, dtype=xp.float64),
                             (block * other).sum(axis=0, dtype=xp.float64)])
        m = block.size // C
        t = min(m, self.tile_rows)
        tiles, others = block.reshape(m // t, t * C), other.reshape(m // t, t * C)
        partial, wide = self.partial_buffers(t * C)
        xp.matmul(self.ones[:, :m // t], tiles, out=partial)      # 1. sum(block), twice ...
        xp.einsum("kr,kr->r", tiles, others, out=partial[1])      # ... and sum(block * other)
        wide = wide[:2 * t * C].reshape(2, t, C)
        wide[...] = partial.reshape(2, t, C)                      # 2. in float64
        return xp.matmul(self.ones64[:t], wide)                   # (2, C)

    def partial_buffers(self, size):
        """A (2, size) float32 and a (2 size,) float64 array of the calling thread's own."""
        thread = thread_index()
        key = ("partial", thread)
        if key not in self.scratch:
            r = self.tile_rows * self.rows.shape[1]
            self.scratch[key] = (self.xp.empty(2 * r, self.rows.dtype), self.xp.empty(2 * r))
        narrow, wide = self.scratch[key]
        return narrow[:2 * size].reshape(2, size), wide


CENTRE_LIMIT = 1  # the output and the backward's sums centre x where mu^2 > this * var ...
FEW_CENTRED = 16  # ... column by column where at most C / this channels need it


class Centring:
    """Where batch norm centres x before it multiplies: in the output, (x - c) * scale, and
    in the backward's sums, sum(g * (x - c)). One per call, the same in both passes.

    centres (C,) float64: c = mu rounded to x's precision for the channels with
    mu^2 > CENTRE_LIMIT * var, whose products with x would round |mu| / sigma times worse
    than centred ones (BatchNorm's docstring), and c = 0 elsewhere, where they round at most
    sqrt(1 + CENTRE_LIMIT) = 1.4 times worse (measured: dgamma at 1.4x PyTorch's error at
    |mu| = sigma, 2.1x at 1.5 sigma, 2.5x at 2 sigma, never centred).
    How, from the cheapest:
      - no channel: the passes are those of a plain x * scale + shift, nothing is centred;
      - at most C / FEW_CENTRED channels (few, their indices): the plain passes, then those
        channels' columns again from a centred copy of them (columns). A column copy
        costs about 2.5 ns a value against 0.15 for a whole in-cache pass, so beyond
        1/16 of the channels the whole block is cheaper;
      - else (everywhere): each block is centred whole (x - c, c = 0 in some channels),
        with tile, c's tile. At the batch norms of a ResNet-18 in SimCLR training
        (CIFAR-10), mu^2 > var held in 16-19% of the channels of a block: most of a real
        network's layers take this way, which is the accurate code's full price.
    On the GPU every channel is centred (choosing would wait for the device)."""

    def __init__(self, mean, var, dtype, blocks, centres=None):
        xp, C = blocks.xp, len(mean)
        if centres is None:
            far = xp.ones(C, bool) if not blocks.on_cpu else mean ** 2 > CENTRE_LIMIT * var
            centres = xp.where(far, mean.astype(dtype), 0).astype(xp.float64)
        self.centres, self.few, self.blocks = centres, None, blocks
        count = C if not blocks.on_cpu else int(xp.count_nonzero(centres))
        self.everywhere = count > C // FEW_CENTRED
        self.tile = blocks.tile(centres.astype(dtype)) if self.everywhere else None
        if 0 < count <= C // FEW_CENTRED:
            self.few = xp.flatnonzero(centres)
            self.few_centres = centres[self.few].astype(dtype)

    def columns(self, rows, start, stop):
        """rows[start:stop, few] - c[few]: a new (m, len(few)) array, centred columns."""
        columns = rows[start:stop, self.few]
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
    M2_b's error is thus at most 1 + RAW_MOMENTS_LIMIT times e. At the batch norms of a
    ResNet-18 in SimCLR training (CIFAR-10, at steps 0 and 60), mu_b^2 / var_b exceeded 1 in
    16-19% of the channels of a block, 4 in 2% and 16 in 0.02-0.05%. (On the GPU every
    channel is centred: choosing would wait for the device.)"""
    xp = array_module(rows)
    n, C = rows.shape
    f64 = xp.float64

    def block_moments(start, stop):
        m, block = stop - start, rows[start:stop]
        if not blocks.on_cpu:
            block_mean = block.sum(axis=0, dtype=f64) / m
            rounded = blocks.tile(block_mean.astype(rows.dtype))              # c = mu_b rounded
            centered = blocks.centered(rows, start, stop, rounded)
            sums = blocks.column_sums(centered, centered)                     # sum(x - c), ...
            return m, block_mean, sums[1] - sums[0] ** 2 / m
        sums = blocks.column_sums(block, block)                                # sum(x), sum(x^2)
        block_mean = sums[0] / m                                              # (C,) float64
        m2 = sums[1] - sums[0] * block_mean                                   # c = 0
        # mu_b^2 > LIMIT * M2_b / m_b, or M2_b < 0 (which implies it), multiplied out:
        # sum(x) mu_b > LIMIT / (1 + LIMIT) * sum(x^2), three small operations, not seven
        limit = RAW_MOMENTS_LIMIT / (1 + RAW_MOMENTS_LIMIT)
        redo = xp.flatnonzero(sums[0] * block_mean > limit * sums[1])
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
    counts = xp.asarray([p[0] for p in parts], dtype=f64)[:, None]          # (blocks, 1)
    means = xp.stack([p[1] for p in parts])                                 # (blocks, C)
    mean = (counts * means).sum(axis=0) / n
    m2 = xp.stack([p[2] for p in parts]).sum(axis=0) + (counts * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / n


def total(parts, xp):
    """The sum of per-block float64 partial sums, in list order, in float64."""
    return xp.stack(parts).sum(axis=0, dtype=xp.float64)
