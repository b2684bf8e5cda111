"""Batch norm's CPU kernel: (+ residual + ReLU) in cache-sized blocks of rows, on every core.

The op, its math and its reference are in nn/functional/normalization.py (read that
first); batch_norm runs this kernel on NumPy arrays unless use_reference() asks for the
reference. Its parts (the blocks, the centring of channels far from zero, the moments of a
batch) are in batch_norm_blocks.py. Over a data-parallel group, the global batch's mean and
variance come from every rank's own by nn/distributed/collectives.py's global_moments.
"""
import numpy

from autograd import Function
from nn.distributed.collectives import global_moments
from nn.runtime import parallel

from .batch_norm_blocks import Centring, RowBlocks, batch_moments, total


def update_running_stats(running_mean, running_var, mean, var, n, momentum):
    """In place, as PyTorch: running = (1 - momentum) running + momentum batch, the batch's
    variance unbiased (times n / (n - 1)) for running_var. mean, var: the batch's (C,)."""
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += (momentum * n / (n - 1)) * var


def channel_rows(x):
    """x (N, C, *) as a 2-D (M, C) array, M = x.size / C, one row per value of each channel.

    A free view when x has channels-last strides (the output of conv2d), else one copy."""
    moved = numpy.moveaxis(x, 1, -1)                    # (N, *, C)
    if not moved.flags.c_contiguous:
        moved = parallel.copy(moved)
    return moved.reshape(-1, x.shape[1])


def from_channel_rows(rows, shape):
    """The inverse of channel_rows: (M, C) -> an (N, C, *) view with channels-last strides."""
    return numpy.moveaxis(rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


class BatchNormBlocked(Function):
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
    spread over threads (nn/runtime/threads.py; the blocks: batch_norm_blocks.py). Each pass
    reads memory once however many NumPy calls it makes on a block:
      forward   1. per block: its mean and its sum of squared deviations, from its sums of x
                   and x^2 (or, where that would lose precision, of (x - mean)^2: see
                   batch_moments); the blocks are then combined exactly (Chan et al.'s
                   pairwise formula, in float64), without a second read of x;
                2. y = max((x - c) * scale + shift + residual, 0), scale = gamma / sigma,
                   shift = beta - (mu - c) * scale, c a per-channel centre (Centring).
      backward  1. g = g * (y > 0) and its per-channel sums sum(g), sum(g * (x - c));
                2. dx = a g + b x + c', with sum(g * x_hat) = (sum(g * (x - c))
                   + (c - mu) sum(g)) / sigma.

    How it is accurate in float32 (as PyTorch's, or more: tests/test_float32_accuracy.py):
      - every sum over rows is one 8-term float32 sum per value, then float64
        (RowBlocks.column_sums): a float32 sum of m rows added one after another errs about
        sqrt(m) roundings, many times PyTorch's error at the thousands of rows of a block;
      - no sum that cancels is formed in float32. With a mean of 10 standard deviations,
        as after a ReLU, sum(g x) - mu sum(g) subtracts two numbers 10x larger than their
        difference, and so does x * scale - mu * scale in the output. Summing in float64
        does not cure it: each product g x is rounded to float32 first, with an error of
        |g x| / 2^24, ~|mu| / sigma times that of g (x - mu). So where mu^2 > var, x is
        centred first, on c = mu rounded: x - c is as accurate as x (exact where x lies
        within a factor 2 of c), and the rounding mu - c comes back in the float64 terms
        (c - mu) sum(g) and shift. Elsewhere c = 0, and the
        products' rounding is at most sqrt(1 + mu^2 / var) <= 1.4 times that of centred ones;
        (dx's b x + c' still cancels, but b = -a sum(g x_hat) / (n sigma) is about 1 / sqrt(n)
        of a / sigma: at |mu| = 10 sigma and n = 256 its rounding is a fifth of one rounding
        of a g, less for larger n);
      - the per-channel constants (mu, var, 1 / sigma, scale, shift, a, b, c') are computed
        in float64 and rounded once.
    What the accuracy costs: a float64 step per block and pair of sums (column_sums), and,
    only for the channels with mu^2 > var, the centring: one more in-cache pass per block in
    the output and a centred copy in the backward's sums, or, where at most 1/16 of the
    channels need it, a copy of just their columns (Centring; the moments likewise centre
    only the channels that need it, batch_moments).
    It saves x (which the graph keeps anyway) rather than x_hat, and y (the next layer's
    input, kept anyway) rather than a mask.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, *residual, running_mean, running_var, use_batch_stats,
                momentum, eps, relu=False, group=None):
        rows = channel_rows(x)                                 # (n, C)
        n, C = rows.shape
        blocks = RowBlocks(rows)
        residual_rows = channel_rows(residual[0]) if residual else None
        f64 = numpy.float64
        ctx.count, ctx.group = n, group
        if use_batch_stats:
            mean, var = batch_moments(rows, blocks)           # (C,) float64
            if group is not None:                             # the global batch's, every rank's
                mean, var, ctx.count = global_moments(mean, var, n, group)
            if running_mean is not None:
                update_running_stats(running_mean, running_var, mean, var, ctx.count, momentum)
        else:
            mean, var = running_mean.astype(f64), running_var.astype(f64)
        # the per-channel constants in float64, each rounded once to x's precision: x is
        # centred on c (mu rounded where mu^2 > var, else 0) and the shift makes up for it
        inv_std = 1 / numpy.sqrt(var + eps)                       # (C,)
        scale = weight.astype(f64) * inv_std
        centring = Centring(mean, var, x.dtype, blocks)
        shift = bias - (mean - centring.centres) * scale
        scale, shift = scale.astype(x.dtype), shift.astype(x.dtype)
        scales, shifts = blocks.tile(scale), blocks.tile(shift)
        zeros = blocks.zeros()
        out = numpy.empty_like(rows)

        def normalize_block(start, stop):                      # out = (x - c) scale + shift
            block, x_block = blocks.view(out, start, stop), blocks.view(rows, start, stop)
            t = block.shape[1]
            if centring.whole_blocks:
                numpy.subtract(x_block, centring.tile[:t], out=block)
                block *= scales[:t]
            else:
                numpy.multiply(x_block, scales[:t], out=block)
            block += shifts[:t]
            if residual_rows is not None:
                block += blocks.view(residual_rows, start, stop)  # ... + residual
            if relu:
                numpy.maximum(block, zeros[:t], out=block)        # ... then max(., 0)
            if centring.few_channels is not None:              # the few centred columns again
                few = centring.few_channels
                columns = centring.centred_columns(rows, start, stop)
                columns *= scale[few]
                columns += shift[few]
                if residual_rows is not None:
                    columns += residual_rows[start:stop, few]
                if relu:
                    numpy.maximum(columns, 0, out=columns)
                out[start:stop, few] = columns
        blocks.map(normalize_block)
        ctx.use_batch_stats, ctx.shape, ctx.relu = use_batch_stats, x.shape, relu
        ctx.centres = centring.centres
        ctx.save_for_backward(rows, out if relu else None, mean, inv_std, weight)  # float64 stats
        return from_channel_rows(out, x.shape)

    @staticmethod
    def backward(ctx, grad):
        rows, out, mean, inv_std, gamma = ctx.saved
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        needs_residual = len(ctx.needs_input_grad) == 4 and ctx.needs_input_grad[3]
        g = channel_rows(grad)                                 # (n, C)
        n = ctx.count                                          # values per channel, all ranks
        blocks = RowBlocks(g)
        # the ReLU's derivative: 1 where the output is positive, else 0
        g_masked = numpy.empty_like(g) if ctx.relu else g
        # x is centred on c as in the forward pass; sum(g (x - mu)) is then
        # sum(g (x - c)) + (c - mu) sum(g), the second term in float64
        centring = Centring(mean, None, g.dtype, blocks, ctx.centres)

        def masked_sums(start, stop):
            block = g[start:stop]
            if ctx.relu:  # the mask as 1.0 and 0.0, times g: cheaper than g * (out > 0)
                mask = numpy.greater(out[start:stop], 0, out=g_masked[start:stop])
                block = numpy.multiply(mask, block, out=mask)
            if centring.whole_blocks:
                other = blocks.centered(rows, start, stop, centring.tile)   # x - c, in cache
            else:
                other = rows[start:stop]
            sums = blocks.column_sums(block, other)            # sum(g), sum(g (x - c))
            few = centring.few_channels
            if few is not None:                                # the few centred columns again
                sums[1, few] = blocks.column_sums(block[:, few],
                                                  centring.centred_columns(rows, start, stop))[1]
            return sums
        sum_g, sum_g_centered = total(blocks.map(masked_sums))           # (C,) float64 each
        sum_g_centered += (centring.centres - mean) * sum_g
        sum_g_x_hat = sum_g_centered * inv_std                         # sum(g x_hat)
        grad_gamma, grad_beta = sum_g_x_hat, sum_g   # this rank's share (average_gradients)
        if ctx.group is not None and ctx.use_batch_stats:  # dx needs the global batch's sums
            sums = numpy.stack([sum_g, sum_g_x_hat])
            ctx.group.allreduce(sums)
            sum_g, sum_g_x_hat = sums
        grad_x = None
        if needs_x:
            # dx may overwrite the masked g unless that is also the residual's gradient
            grad_rows = numpy.empty_like(g) if (needs_residual or not ctx.relu) else g_masked
            a = gamma.astype(numpy.float64) * inv_std
            b = c = None
            if ctx.use_batch_stats:
                b = -a * inv_std * sum_g_x_hat / n             # the x_hat * sum(g x_hat) term
                c = -a * sum_g / n - mean * b                  # the sum(g) term, and b's -mu
            _input_gradient(grad_rows, g_masked, rows, blocks, a, b, c)
            grad_x = from_channel_rows(grad_rows, ctx.shape)
        grads = (grad_x, grad_gamma.astype(g.dtype) if needs_weight else None,
                 grad_beta.astype(g.dtype) if needs_bias else None)
        if len(ctx.needs_input_grad) == 4:
            grads += (from_channel_rows(g_masked, ctx.shape) if needs_residual else None,)
        return grads


def _input_gradient(grad_rows, g_masked, rows, blocks, a, b, c):
    """grad_rows = a g + b x + c, block by block, from float64 (C,) vectors a, b and c (b and c
    None in evaluation mode), each rounded once to g's precision."""
    a, b, c = (None if v is None else blocks.tile(v.astype(g_masked.dtype)) for v in (a, b, c))

    def input_grad_block(start, stop):
        block = blocks.view(grad_rows, start, stop)
        t = block.shape[1]
        numpy.multiply(blocks.view(g_masked, start, stop), a[:t], out=block)
        if b is not None:
            x_block = blocks.view(rows, start, stop)
            block += numpy.multiply(x_block, b[:t], out=blocks.buffer(x_block))
            block += c[:t]
    blocks.map(input_grad_block)
