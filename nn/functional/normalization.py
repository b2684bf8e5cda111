"""Normalisation: batch norm over the channels of a batch, and L2 normalisation of vectors."""
from autograd import Function, Tensor, array_module, parallel
from autograd.backend import device_of

TILE_BYTES = 64 * 2**10  # batch norm's per-channel vectors, repeated to about this size


def channel_rows(x):
    """x (N, C, *) as a 2-D (M, C) array, M = x.size / C, one row per value of each channel.

    A free view when x has channels-last strides (the output of conv2d), else one copy."""
    moved = array_module(x).moveaxis(x, 1, -1)          # (N, *, C)
    if not moved.flags.c_contiguous:
        moved = parallel.copy(moved)
    return moved.reshape(-1, x.shape[1])


def from_channel_rows(rows, shape):
    """The inverse of channel_rows: (M, C) -> an (N, C, *) view with channels-last strides."""
    xp = array_module(rows)
    return xp.moveaxis(rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


class BatchNorm(Function):
    """y = gamma * x_hat + beta with x_hat = (x - mu) / sqrt(var + eps), per channel c;
    optionally followed by `+ residual` and a ReLU: what ends each block of a ResNet.

    x is (N, C, *); mu and var are taken over every axis but the channel axis 1, of
    n = x.size / C values each. In training mode they are the batch's own mean and biased
    variance, so they depend on x and the input gradient has three terms:

        dx = gamma / (n sigma) * (n g - sum(g) - x_hat * sum(g * x_hat)),  sigma = sqrt(var + eps)

    (sums per channel). In evaluation mode they are constants and dx = gamma g / sigma.
    Either way dgamma = sum(g * x_hat) and dbeta = sum(g). With the ReLU, g is first masked
    where the output is 0 (the ReLU's derivative); the residual's gradient is that masked g.

    How it is fast: the arrays are worked on as (n, C) matrices (channel_rows), free views of
    channels-last conv outputs, in blocks of rows small enough to stay in the CPU's cache and
    spread over threads (autograd.parallel). Each pass reads memory once however many NumPy
    calls it makes on a block:
      forward   1. per block: its mean and its sum of squared deviations, from its sums of x
                   and x^2 (or, where that would lose precision, of (x - mean)^2: see
                   _batch_moments); the blocks are then combined exactly (Chan et al.'s
                   pairwise formula, in float64), without a second read of x;
                2. y = max((x - mu_r) * scale + shift + residual, 0), scale = gamma / sigma,
                   shift = beta - (mu - mu_r) * scale, mu_r = mu rounded to x's precision.
      backward  1. g = g * (y > 0) and its per-channel sums sum(g), sum(g * (x - mu_r));
                2. dx = a g + b x + c, with sum(g * x_hat) = (sum(g * (x - mu_r))
                   + (mu_r - mu) sum(g)) / sigma.

    How it is accurate in float32 (as PyTorch's, or more: tests/test_float32_accuracy.py):
      - every sum over rows is one 8-term float32 sum per value, then float64
        (_Blocks.column_sums): a float32 sum of m rows added one after another errs about
        sqrt(m) roundings, which at m = 2048 rows of a block was 5x PyTorch's error in dbeta;
      - no sum that cancels is formed in float32. With a mean of 10 standard deviations,
        as after a ReLU, sum(g x) - mu sum(g) subtracts two numbers 10x larger than their
        difference (dgamma erred 20x PyTorch's), and so does x * scale - mu * scale in the
        output (2x). So x is centred first, on mu_r: x - mu_r is as accurate as x (exact
        where x lies within a factor 2 of mu_r), and the rounding mu - mu_r comes back in
        the float64 terms (mu_r - mu) sum(g) and shift. (dx's b x + c still cancels, but
        b = -a sum(g x_hat) / (n sigma) is about 1 / sqrt(n) of a / sigma: at |mu| = 10
        sigma and n = 256 its rounding is a fifth of one rounding of a g, less for larger n);
      - the per-channel constants (mu, var, 1 / sigma, scale, shift, a, b, c) are computed in
        float64 and rounded once.
    The centring costs one more in-cache pass per block in the output and in the backward's
    sums; the moments centre only the channels that need it (_batch_moments).
    It saves x (which the graph keeps anyway) rather than x_hat, and y (the next layer's
    input, kept anyway) rather than a mask.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, *residual, running_mean, running_var, use_batch_stats,
                momentum, eps, relu=False):
        xp = array_module(x)
        rows = channel_rows(x)                                 # (n, C)
        n, C = rows.shape
        blocks = _Blocks(rows)
        residual_rows = channel_rows(residual[0]) if residual else None
        f64 = xp.float64
        if use_batch_stats:
            mean, var = _batch_moments(rows, blocks)           # (C,) float64
            if running_mean is not None:
                running_mean *= 1 - momentum
                running_mean += momentum * mean
                running_var *= 1 - momentum
                running_var += (momentum * n / (n - 1)) * var  # unbiased: / (n - 1)
        else:
            mean, var = running_mean.astype(f64), running_var.astype(f64)
        # the per-channel constants in float64, each rounded once to x's precision: x is
        # centred on mu rounded, mu_r, and the shift makes up for the rounding
        inv_std = 1 / xp.sqrt(var + eps)                       # (C,)
        scale = weight.astype(f64) * inv_std
        mean_rounded = mean.astype(x.dtype)
        shift = bias - (mean - mean_rounded) * scale
        means, scales, shifts = (blocks.tile(v.astype(x.dtype))
                                 for v in (mean_rounded, scale, shift))
        zeros = blocks.zeros()
        out = xp.empty_like(rows)

        def normalize_block(start, stop):                      # out = (x - mu_r) scale + shift
            block = blocks.view(out, start, stop)
            t = block.shape[1]
            xp.subtract(blocks.view(rows, start, stop), means[:t], out=block)
            block *= scales[:t]
            block += shifts[:t]
            if residual_rows is not None:
                block += blocks.view(residual_rows, start, stop)  # ... + residual
            if relu:
                xp.maximum(block, zeros[:t], out=block)        # ... then max(., 0)
        blocks.map(normalize_block)
        ctx.use_batch_stats, ctx.shape, ctx.relu = use_batch_stats, x.shape, relu
        ctx.save_for_backward(rows, out if relu else None, mean, inv_std, weight)  # float64 stats
        return from_channel_rows(out, x.shape)

    @staticmethod
    def backward(ctx, grad):
        rows, out, mean, inv_std, gamma = ctx.saved
        xp = array_module(grad)
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        needs_residual = len(ctx.needs_input_grad) == 4 and ctx.needs_input_grad[3]
        g = channel_rows(grad)                                 # (n, C)
        n, C = g.shape
        blocks = _Blocks(g)
        # the ReLU's derivative: 1 where the output is positive, else 0
        g_masked = xp.empty_like(g) if ctx.relu else g
        # x is centred on mu rounded to x's precision, mu_r; sum(g (x - mu)) is then
        # sum(g (x - mu_r)) + (mu_r - mu) sum(g), the second term exact in float64
        mean_rounded = mean.astype(g.dtype)
        mean_tile = blocks.tile(mean_rounded)

        def masked_sums(start, stop):
            block = g[start:stop]
            if ctx.relu:  # the mask as 1.0 and 0.0, times g: 0.7x the time of g * (out > 0)
                mask = xp.greater(out[start:stop], 0, out=g_masked[start:stop])
                block = xp.multiply(mask, block, out=mask)
            centered = blocks.centered(rows, start, stop, mean_tile)   # x - mu_r, in cache
            return blocks.column_sums(block), blocks.column_sums(block, centered)
        sums = blocks.map(masked_sums)
        sum_g = _total([s[0] for s in sums], xp)                       # (C,) float64
        sum_g_centered = _total([s[1] for s in sums], xp) + (mean_rounded - mean) * sum_g
        sum_g_x_hat = sum_g_centered * inv_std                         # sum(g x_hat)
        grad_x = None
        if needs_x:
            a = gamma.astype(xp.float64) * inv_std
            b = c = None
            if ctx.use_batch_stats:
                b = -a * inv_std * sum_g_x_hat / n             # the x_hat * sum(g x_hat) term
                c = -a * sum_g / n - mean * b                  # the sum(g) term, and b's -mu
            a, b, c = (None if v is None else blocks.tile(v.astype(g.dtype)) for v in (a, b, c))
            # dx may overwrite the masked g unless that is also the residual's gradient
            grad_rows = xp.empty_like(g) if (needs_residual or not ctx.relu) else g_masked

            def input_grad_block(start, stop):                 # dx = a g + b x + c
                block = blocks.view(grad_rows, start, stop)
                t = block.shape[1]
                xp.multiply(blocks.view(g_masked, start, stop), a[:t], out=block)
                if b is not None:
                    x_block = blocks.view(rows, start, stop)
                    block += xp.multiply(x_block, b[:t], out=blocks.buffer(x_block))
                    block += c[:t]
            blocks.map(input_grad_block)
            grad_x = from_channel_rows(grad_rows, ctx.shape)
        sum_g_x_hat, sum_g = sum_g_x_hat.astype(g.dtype), sum_g.astype(g.dtype)
        grads = (grad_x, sum_g_x_hat if needs_weight else None, sum_g if needs_bias else None)
        if len(ctx.needs_input_grad) == 4:
            grads += (from_channel_rows(g_masked, ctx.shape) if needs_residual else None,)
        return grads


class _Blocks:
    """The blocks of rows of an (n, C) array that one batch norm call's passes work on, spread
    over the threads (autograd.parallel), and what its passes share on the CPU:

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
    - a buffer of a block's size per thread, for a block's centred copy or products (buffer).
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
        size = max(t, parallel.block_rows(self.row_bytes) // t * t)
        whole = n // size * size
        self.ranges = [(start, start + size) for start in range(0, whole, size)]
        if n - whole >= t:  # what is left: a multiple of t rows, then fewer than t
            self.ranges.append((whole, whole + (n - whole) // t * t))
        if (n - whole) % t:
            self.ranges.append((n - (n - whole) % t, n))
        self.ones = self.xp.ones((2, size // t), rows.dtype)  # 2 rows: see above
        self.block_size, self.scratch = min(n, size), {}  # buffer(): one per thread

    def map(self, fn):
        """[fn(start, stop) for each block], the blocks spread over threads."""
        return parallel.map_ranges(fn, self.ranges, self.rows.size * self.rows.itemsize,
                                   self.rows)

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
        thread = parallel.thread_index()
        if thread not in self.scratch:
            self.scratch[thread] = self.xp.empty(self.block_size * self.rows.shape[1],
                                                 self.rows.dtype)
        return self.scratch[thread][:like.size].reshape(like.shape)

    def centered(self, array, start, stop, mean_tile):
        """array[start:stop] - mean, seen as view() sees it (m / t, t, C), in buffer()."""
        block = self.view(array, start, stop)
        return self.xp.subtract(block, mean_tile[:block.shape[1]], out=self.buffer(block))

    def column_sums(self, block, other=None):
        """sum(block) or sum(block * other) over the rows of a block (m, C) (or of its view,
        (m / t, t, C)) -> (C,), in float64.

        In float32, m values added one after another have an error that grows with m: each
        addition rounds the running total, and a BLAS product or NumPy's sum over axis 0
        adds a block's rows that way. So the rows are added in two steps: the block's m / t
        tiles onto one tile in float32 (at most BLOCK_BYTES / TILE_BYTES = 8 terms per value:
        one product with rows of ones, or one einsum for the products, read from cache), then
        that tile's t rows in float64. Each value passes through one 8-term float32 sum, so
        its rounding stays within a few units of float32's last place, and the t partial sums
        of a channel round independently, so their errors partly cancel. (Folding the tile 8
        rows onto 1 in float32 first, to add fewer in float64, was 2-3% faster but put
        dbias at 1.7x PyTorch's error where it is now 0.9x.)
        On the GPU: one reduction, in float64."""
        xp, C = self.xp, block.shape[-1]
        if not self.on_cpu:
            values = block if other is None else block * other
            return values.reshape(-1, C).sum(axis=0, dtype=xp.float64)
        m = block.size // C
        t = min(m, self.tile_rows)
        tiles = block.reshape(m // t, t * C)
        if other is None:
            partial = (self.ones[:, :m // t] @ tiles)[0]                     # (t * C,)
        else:
            partial = xp.einsum("kr,kr->r", tiles, other.reshape(m // t, t * C))
        return partial.reshape(t, C).sum(axis=0, dtype=xp.float64)


RAW_MOMENTS_LIMIT = 4  # a block's sums of x and x^2 are trusted where mu_b^2 <= this * var_b


def _batch_moments(rows, blocks):
    """The per-channel mean and biased variance of rows (n, C), in float64, reading rows once.

    Each block of rows gives its count m_b, mean mu_b and sum of squared deviations M2_b;
    then, in float64, mu = sum_b m_b mu_b / n and M2 = sum_b M2_b + sum_b m_b (mu_b - mu)^2
    (Chan, Golub and LeVeque 1979), exact in exact arithmetic. Within a block (in cache),
    mu_b = sum(x) / m_b, and M2_b about a centre c (0, or mu_b rounded to x's precision):

        M2_b = sum((x - c)^2) - m_b (mu_b - c)^2,

    all sums by _Blocks.column_sums, whose relative error e is well below float32's rounding.
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
        block_mean = blocks.column_sums(block) / m                            # (C,) float64
        rounded = block_mean.astype(rows.dtype)                               # c = mu_b rounded
        if not blocks.on_cpu:
            centered = blocks.centered(rows, start, stop, blocks.tile(rounded))
            return m, block_mean, (blocks.column_sums(centered, centered)
                                   - m * (block_mean - rounded) ** 2)
        m2 = blocks.column_sums(block, block) - m * block_mean ** 2           # c = 0
        redo = xp.flatnonzero((block_mean ** 2 > RAW_MOMENTS_LIMIT / m * m2) | (m2 < 0))
        if len(redo) > C // 4:
            centered = blocks.centered(rows, start, stop, blocks.tile(rounded))
            m2 = blocks.column_sums(centered, centered) - m * (block_mean - rounded) ** 2
        elif len(redo):
            centered = block[:, redo]                                          # a copy
            centered -= rounded[redo]
            m2[redo] = (blocks.column_sums(centered, centered)
                        - m * (block_mean[redo] - rounded[redo]) ** 2)
        return m, block_mean, m2
    parts = blocks.map(block_moments)
    counts = xp.asarray([p[0] for p in parts], dtype=f64)[:, None]          # (blocks, 1)
    means = xp.stack([p[1] for p in parts])                                 # (blocks, C)
    mean = (counts * means).sum(axis=0) / n
    m2 = xp.stack([p[2] for p in parts]).sum(axis=0) + (counts * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / n


def _total(parts, xp):
    """The sum of per-block (C,) float64 partial sums, in list order, in float64."""
    return xp.stack(parts).sum(axis=0, dtype=xp.float64)


def batch_norm_reference(x, weight, bias, eps=1e-5, residual=None, relu=False):
    """Training-mode batch norm (+ residual, + ReLU) written with plain Tensor ops, the way the
    formula reads; the engine differentiates it op by op. The reference that tests hold the
    fused BatchNorm above to (it keeps no running statistics).

    x (N, C, *), weight and bias (C,) Tensors -> relu?(weight * (x - mu) / sqrt(var + eps)
    + bias + residual?), mu and the biased var taken over every axis but 1."""
    from .activation import relu as relu_op
    axes = (0,) + tuple(range(2, x.ndim))
    per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)          # broadcasts over N, H, W
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    y = centered / (var + eps).sqrt() * weight.reshape(*per_channel) + bias.reshape(*per_channel)
    if residual is not None:
        y = y + residual
    return relu_op(y) if relu else y


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, residual=None, relu=False):
    """Batch normalisation, as torch.nn.functional.batch_norm.

    y = weight * (x - mean) / sqrt(var + eps) + bias, per channel, for x of shape (N, C) or
    (N, C, H, W) (any (N, C, *) works): statistics are taken over every axis but axis 1.

    training=True: normalise with the batch mean and biased variance, and update the running
    statistics in place, as PyTorch: running = (1 - momentum) * running + momentum * batch,
    with the unbiased batch variance (times n / (n - 1)) for running_var.
    training=False: normalise with running_mean and running_var.
    running_mean, running_var: plain arrays (C,) (not Tensors), or both None to always use
    the batch statistics (as a BatchNorm layer with track_running_stats=False).
    weight, bias: Tensors (C,), or None for 1 and 0.
    residual, relu: not in PyTorch's batch_norm; they fuse what follows batch norm in a ResNet:
    the result is relu(y + residual) (relu=True, residual a Tensor of x's shape), relu(y) or
    y + residual, computed in the same passes over memory as y itself.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm: x is a {type(x).__name__}, expected a Tensor")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input has shape {x.shape}, expected (N, C) or "
                         f"(N, C, H, W)")
    channels = x.shape[1]
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: pass both running_mean and running_var, or neither")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is None:
            continue
        if isinstance(stat, Tensor) or not hasattr(stat, "shape"):
            raise TypeError(f"batch_norm: {name} is a {type(stat).__name__}, expected a plain "
                            f"array (numpy or cupy), which is updated in place in training")
        if stat.shape != (channels,):
            raise ValueError(f"batch_norm: {name} has shape {stat.shape}, expected ({channels},) "
                             f"for input of shape {x.shape} ({channels} channels)")
        array_module(x.data, stat)  # raises a clear error if x and the statistic are on two devices
    use_batch_stats = training or running_mean is None
    if use_batch_stats and x.size // channels <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {x.shape}")
    affine = []
    for name, value, default in (("weight", weight, 1), ("bias", bias, 0)):
        if value is None:
            value = Tensor(x.xp.full((channels,), default, dtype=x.dtype))
        elif not isinstance(value, Tensor):
            raise TypeError(f"batch_norm: {name} is a {type(value).__name__}, expected a Tensor")
        elif value.shape != (channels,):
            raise ValueError(f"batch_norm: {name} has shape {value.shape}, expected "
                             f"({channels},) for input of shape {x.shape}")
        elif value.dtype != x.dtype:
            raise TypeError(f"batch_norm: {name} has dtype {value.dtype} but the input has "
                            f"{x.dtype}; convert one so that both have the same precision")
        affine.append(value)
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"batch_norm: residual is a {type(residual).__name__}, expected a "
                            f"Tensor")
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"batch_norm: residual has shape {residual.shape} and dtype "
                             f"{residual.dtype}, expected the input's {x.shape} and {x.dtype}")
        affine.append(residual)
    return BatchNorm.apply(x, *affine, running_mean=running_mean, running_var=running_var,
                           use_batch_stats=use_batch_stats, momentum=momentum, eps=eps,
                           relu=bool(relu))


class Normalize(Function):
    """y = x / max(||x||, eps), the L2 norm taken along `dim`.

    Where ||x|| >= eps, y = x / ||x|| and dx = (g - y * sum(g * y)) / ||x|| (the component of g
    along y is removed: scaling x does not change y). Where ||x|| < eps the divisor is the
    constant eps and dx = g / eps.
    """

    @staticmethod
    def forward(ctx, x, dim, eps):
        xp = array_module(x)
        norm = xp.sqrt((x * x).sum(axis=dim, keepdims=True))  # (..., 1, ...): dim kept as 1
        divisor = xp.maximum(norm, eps)
        out = x / divisor
        ctx.dim = dim
        ctx.save_for_backward(out, divisor, norm >= eps)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, divisor, scaled_by_norm = ctx.saved
        along_out = (grad * out).sum(axis=ctx.dim, keepdims=True) * scaled_by_norm
        return (grad - out * along_out) / divisor


def normalize(x, p=2.0, dim=1, eps=1e-12):
    """x / max(||x||_2, eps) along `dim`, as torch.nn.functional.normalize (only p = 2).

    x: any shape with at least one axis; the output has x's shape, unit L2 norm along dim.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"normalize: x is a {type(x).__name__}, expected a Tensor")
    if p != 2:
        raise ValueError(f"normalize: p={p!r} is not supported; only the L2 norm (p=2)")
    if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"normalize: dim={dim!r} is out of range for input of shape {x.shape}")
    return Normalize.apply(x, dim=dim, eps=eps)
