"""Batch norm on the GPU: (+ residual + ReLU) in three launches forward and three backward.

The op, its math and its reference are in nn/functional/normalization.py (read that first).
On CuPy's own operations a batch norm is a dozen passes over memory and as many launches; here
the arrays are seen as (n, C) rows, one row per pixel, a free view of a conv's channels-last
output, and each direction is:

    forward   1. moments: per-channel partial sums of x and x^2 over blocks of rows, float64
              2. constants: per channel, the blocks' sums added in order (so the result does
                 not depend on scheduling), mean, var, 1/sigma, and the running statistics;
                 y = (x - c) scale + shift, with c the mean rounded to x's precision
              3. normalize: y = (x - c) scale + shift (+ residual) (then max(., 0)), elementwise
    backward  1. sums: per-channel partial sums of g and g (x - c), g masked by y > 0 (ReLU)
              2. constants: dgamma = sum(g x_hat), dbeta = sum(g), and dx's a, b, k
              3. input: dx = a g + b (x - c) + k (and the masked g, the residual's gradient)

float32 is as accurate as the CPU kernel's: the sums are float64 (float32 values, their
squares and products with float32 values are exact in float64); x is centred on its mean
rounded to float32 before anything cancels; the per-channel constants are float64, each
rounded once. The kernels, each beside its NumPy twin, are in batch_norm_kernels.py.

Over a data-parallel group, each rank's mean and variance (from its sums) become the global
batch's by nn/distributed/collectives.py's global_moments, as on the CPU, and the constants
kernel takes them as given; the backward's two sums are all-reduced.
"""
import numpy

from autograd import Function, array_module
from nn.distributed.collectives import global_moments
from nn.runtime.cuda import THREADS, blocks_for, grid

from .batch_norm_kernels import (BACKWARD_CONSTANTS, BACKWARD_INPUT, BACKWARD_SUMS,
                                 CHANNELS_PER_BLOCK, FORWARD_CONSTANTS, MAX_ROW_BLOCKS, MOMENTS,
                                 NORMALIZE, ROW_THREADS)


def channel_rows(x):
    """x (N, C, *) as a C-contiguous (M, C) array: a free view of channels-last memory, else
    one copy."""
    xp = array_module(x)
    return xp.ascontiguousarray(xp.moveaxis(x, 1, -1)).reshape(-1, x.shape[1])


def from_channel_rows(rows, shape):
    """The inverse of channel_rows: (M, C) -> an (N, C, *) view with channels-last strides."""
    xp = array_module(rows)
    return xp.moveaxis(rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


def _global_statistics(partials, M, group, running_mean, running_var, momentum):
    """((mean, var), count) of the global batch, float64 (C,) each, from this rank's partial
    sums over M rows: its own mean and biased variance as bn_forward_constants takes them
    from its sums, then global_moments over the group; the running statistics updated from
    them as bn_forward_constants updates them."""
    sums = partials.sum(axis=0)                                  # (C, 2): sum x, sum x^2
    mean = sums[:, 0] / M
    var = array_module(partials).maximum(sums[:, 1] / M - mean * mean, 0.0)
    mean, var, count = global_moments(mean, var, M, group)
    if running_mean is not None:  # in float64, rounded once
        running_mean[...] = (1 - momentum) * running_mean.astype(numpy.float64) + momentum * mean
        running_var[...] = ((1 - momentum) * running_var.astype(numpy.float64)
                            + (momentum * count / (count - 1)) * var)
    return (mean, var), count


def _row_blocks(M):
    """(blocks, rows per block) for the partial sums down M rows."""
    blocks = min(MAX_ROW_BLOCKS, blocks_for(M, 64))
    rows = -(-M // blocks)
    return blocks_for(M, rows), rows


class BatchNormCuda(Function):
    """batch_norm on CuPy arrays, by the kernels above: the same arguments and results as
    the CPU's BatchNormBlocked (cpu/batch_norm.py), the same accuracy."""

    @staticmethod
    def forward(ctx, x, weight, bias, *residual, running_mean, running_var, use_batch_stats,
                momentum, eps, relu=False, group=None):
        xp = array_module(x)
        rows = channel_rows(x)                                       # (M, C)
        M, C = rows.shape
        f64, i64 = xp.float64, numpy.int64
        blocks, rows_per_block = _row_blocks(M)
        partials = xp.empty((blocks, C, 2), f64)
        if use_batch_stats:
            MOMENTS.run(xp, (blocks_for(C, CHANNELS_PER_BLOCK), blocks),
                        (CHANNELS_PER_BLOCK, ROW_THREADS),
                        (rows, partials, i64(M), i64(C), i64(rows_per_block)),
                        {"data_t": x.dtype})
        ctx.count, ctx.group = M, group
        has_running = running_mean is not None
        stats = (running_mean, running_var) if has_running else (xp.zeros(C, f64),) * 2
        from_sums = use_batch_stats
        if use_batch_stats and group is not None:  # the global batch's mean and variance
            stats, ctx.count = _global_statistics(partials, M, group, running_mean, running_var,
                                                  momentum)
            from_sums = has_running = False        # the constants take them as given
        mean, inv_std = xp.empty(C, f64), xp.empty(C, f64)
        centre, scale, shift = (xp.empty(C, x.dtype) for _ in range(3))
        per_channel = (blocks_for(C, THREADS),), (THREADS,)
        FORWARD_CONSTANTS.run(xp, *per_channel,
                              (partials, weight, bias, *stats, mean, inv_std, centre, scale,
                               shift, i64(blocks), i64(C), numpy.float64(ctx.count),
                               numpy.float64(eps), numpy.float64(momentum),
                               numpy.int32(from_sums), numpy.int32(has_running)),
                              {"data_t": x.dtype, "stat_t": stats[0].dtype})
        out = xp.empty_like(rows)
        residual_rows = channel_rows(residual[0]) if residual else rows
        NORMALIZE.run(xp, *grid(rows.size),
                      (rows, residual_rows, out, centre, scale, shift, i64(rows.size), i64(C),
                       numpy.int32(bool(residual)), numpy.int32(relu)), {"data_t": x.dtype})
        ctx.use_batch_stats, ctx.shape, ctx.relu = use_batch_stats, x.shape, relu
        ctx.save_for_backward(rows, out if relu else None, mean, inv_std, centre, weight)
        return from_channel_rows(out, x.shape)

    @staticmethod
    def backward(ctx, grad):
        rows, out, mean, inv_std, centre, gamma = ctx.saved
        xp = array_module(grad)
        i64, int32 = numpy.int64, numpy.int32
        needs_x = ctx.needs_input_grad[0]
        needs_residual = len(ctx.needs_input_grad) == 4 and ctx.needs_input_grad[3]
        g = channel_rows(grad)                                       # (M, C)
        M, C = g.shape
        y = out if ctx.relu else g                                   # read only with relu
        blocks, rows_per_block = _row_blocks(M)
        partials = xp.empty((blocks, C, 2), xp.float64)
        BACKWARD_SUMS.run(xp, (blocks_for(C, CHANNELS_PER_BLOCK), blocks),
                          (CHANNELS_PER_BLOCK, ROW_THREADS),
                          (g, rows, y, centre, partials, i64(M), i64(C), i64(rows_per_block),
                           int32(ctx.relu)), {"data_t": g.dtype})
        grad_gamma, grad_beta, a, b, k = (xp.empty(C, g.dtype) for _ in range(5))

        def constants(partials, gamma_out, beta_out):
            BACKWARD_CONSTANTS.run(xp, (blocks_for(C, THREADS),), (THREADS,),
                                   (partials, gamma, mean, inv_std, centre, gamma_out, beta_out,
                                    a, b, k, i64(partials.shape[0]), i64(C),
                                    numpy.float64(ctx.count), int32(ctx.use_batch_stats)),
                                   {"data_t": g.dtype})
        constants(partials, grad_gamma, grad_beta)   # dgamma, dbeta: this rank's share
        if ctx.group is not None and ctx.use_batch_stats:  # dx: the global batch's sums
            partials = partials.sum(axis=0)[None]
            ctx.group.allreduce(partials)
            constants(partials, xp.empty(C, g.dtype), xp.empty(C, g.dtype))
        grad_x = grad_masked = None
        if needs_x or needs_residual:
            grad_rows = xp.empty_like(g) if needs_x else g
            grad_masked = xp.empty_like(g) if needs_residual else g
            BACKWARD_INPUT.run(xp, *grid(g.size),
                               (g, rows, y, centre, a, b, k, grad_rows, grad_masked,
                                i64(g.size), i64(C), int32(ctx.relu), int32(needs_x),
                                int32(needs_residual)), {"data_t": g.dtype})
            grad_x = from_channel_rows(grad_rows, ctx.shape) if needs_x else None
            grad_masked = from_channel_rows(grad_masked, ctx.shape) if needs_residual else None
        grads = (grad_x, grad_gamma if ctx.needs_input_grad[1] else None,
                 grad_beta if ctx.needs_input_grad[2] else None)
        if len(ctx.needs_input_grad) == 4:
            grads += (grad_masked,)
        return grads
