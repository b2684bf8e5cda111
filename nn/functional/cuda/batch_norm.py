"""Batch norm's GPU kernel: (+ residual + ReLU) in three launches forward and three backward.

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
rounded once. Each kernel's twin (below it) is the same computation in NumPy.
"""
import numpy

from autograd import Function, array_module

from .kernels import Kernel, blocks_for

CHANNELS_PER_BLOCK = 32  # a warp reads 32 neighbouring channels of a row: one 128-byte line
ROW_THREADS = 8          # threads per block down the rows
MAX_ROW_BLOCKS = 256     # blocks down the rows: enough to fill a GPU, few partial sums to add
THREADS = 256            # threads per block of an elementwise or per-channel kernel


def _sums_twin(first, second, partials, rows_per_block):
    """partials[b, c] = (sum first, sum second) over rows b*R .. (b+1)*R - 1, in float64."""
    starts = numpy.arange(0, len(first), rows_per_block)
    partials[:, :, 0] = numpy.add.reduceat(first.astype(numpy.float64), starts, axis=0)
    partials[:, :, 1] = numpy.add.reduceat(second.astype(numpy.float64), starts, axis=0)


def moments_twin(x, partials, M, C, rows_per_block):
    x = x.astype(numpy.float64)
    _sums_twin(x, x * x, partials, rows_per_block)


_COLUMN_SUMS = r"""
// In a block (32, 8) whose threads hold partial sums a, b of channel c: the 8 threads of each
// channel add theirs, in order, and write the block's two sums into its row of `partials`.
__device__ void write_column_sums(double a, double b, double* partials, long long C,
                                  long long c) {
    __shared__ double s1[8][32], s2[8][32];
    s1[threadIdx.y][threadIdx.x] = a;
    s2[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int k = 1; k < 8; k++) {
            a += s1[k][threadIdx.x];
            b += s2[k][threadIdx.x];
        }
        partials[(blockIdx.y * C + c) * 2] = a;
        partials[(blockIdx.y * C + c) * 2 + 1] = b;
    }
}
"""

MOMENTS = Kernel("bn_moments", _COLUMN_SUMS + r"""
extern "C" __global__ void bn_moments(const data_t* x, double* partials, long long M,
                                      long long C, long long rows_per_block) {
    // block (32, 8): threadIdx.x picks one of 32 neighbouring channels, threadIdx.y a row
    long long c = blockIdx.x * 32LL + threadIdx.x;
    long long start = blockIdx.y * rows_per_block;
    long long stop = min(start + rows_per_block, M);
    double a = 0.0, b = 0.0;
    if (c < C) {
        for (long long r = start + threadIdx.y; r < stop; r += 8) {
            double v = (double)x[r * C + c];
            a += v;
            b += v * v;
        }
    }
    write_column_sums(a, b, partials, C, c);
}
""", moments_twin)


def backward_sums_twin(g, x, y, centre, partials, M, C, rows_per_block, relu):
    g = numpy.where(y > 0, g, 0) if relu else g
    g = g.astype(numpy.float64)
    _sums_twin(g, g * (x - centre), partials, rows_per_block)


BACKWARD_SUMS = Kernel("bn_backward_sums", _COLUMN_SUMS + r"""
extern "C" __global__ void bn_backward_sums(const data_t* g, const data_t* x, const data_t* y,
                                            const data_t* centre, double* partials,
                                            long long M, long long C, long long rows_per_block,
                                            int relu) {
    // as bn_moments: sum(g) and sum(g (x - c)), g masked where the ReLU's output is 0
    long long c = blockIdx.x * 32LL + threadIdx.x;
    long long start = blockIdx.y * rows_per_block;
    long long stop = min(start + rows_per_block, M);
    double a = 0.0, b = 0.0;
    if (c < C) {
        data_t centre_c = centre[c];
        for (long long r = start + threadIdx.y; r < stop; r += 8) {
            long long i = r * C + c;
            data_t gi = (relu && !(y[i] > 0)) ? (data_t)0 : g[i];
            a += (double)gi;
            b += (double)gi * (double)(x[i] - centre_c);
        }
    }
    write_column_sums(a, b, partials, C, c);
}
""", backward_sums_twin)


def forward_constants_twin(partials, gamma, beta, running_mean, running_var, mean, inv_std,
                           centre, scale, shift, B, C, n, eps, momentum, use_batch, has_running):
    if use_batch:
        sums = partials.sum(axis=0)                                  # (C, 2), float64
        mean[...] = sums[:, 0] / n
        var = numpy.maximum(sums[:, 1] / n - mean * mean, 0.0)       # biased
        if has_running:  # in float64, rounded once, as the CUDA does
            running_mean[...] = (1 - momentum) * running_mean.astype(numpy.float64) \
                + momentum * mean
            running_var[...] = (1 - momentum) * running_var.astype(numpy.float64) \
                + (momentum * n / (n - 1)) * var
    else:
        mean[...] = running_mean
        var = running_var.astype(numpy.float64)
    inv_std[...] = 1 / numpy.sqrt(var + eps)
    centre[...] = mean
    exact_scale = gamma.astype(numpy.float64) * inv_std
    scale[...] = exact_scale
    shift[...] = beta - (mean - centre) * exact_scale


FORWARD_CONSTANTS = Kernel("bn_forward_constants", r"""
extern "C" __global__ void bn_forward_constants(
        const double* partials, const data_t* gamma, const data_t* beta, stat_t* running_mean,
        stat_t* running_var, double* mean_out, double* inv_std_out, data_t* centre_out,
        data_t* scale_out, data_t* shift_out, long long B, long long C, double n, double eps,
        double momentum, int use_batch, int has_running) {
    long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (c >= C) return;
    double mean, var;
    if (use_batch) {
        double s1 = 0.0, s2 = 0.0;
        for (long long b = 0; b < B; b++) {          // in order: the same sums every run
            s1 += partials[(b * C + c) * 2];
            s2 += partials[(b * C + c) * 2 + 1];
        }
        mean = s1 / n;
        var = fmax(s2 / n - mean * mean, 0.0);       // biased
        if (has_running) {
            running_mean[c] = (stat_t)((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] = (stat_t)((1.0 - momentum) * running_var[c]
                                      + momentum * n / (n - 1.0) * var);
        }
    } else {
        mean = (double)running_mean[c];
        var = (double)running_var[c];
    }
    double inv_std = 1.0 / sqrt(var + eps);
    data_t centre = (data_t)mean;
    double scale = (double)gamma[c] * inv_std;
    mean_out[c] = mean;
    inv_std_out[c] = inv_std;
    centre_out[c] = centre;
    scale_out[c] = (data_t)scale;
    shift_out[c] = (data_t)((double)beta[c] - (mean - (double)centre) * scale);
}
""", forward_constants_twin, type_names=("data_t", "stat_t"),
                          # the running statistics keep their dtype, whatever the data's
                          # (float64 zeros stand in where there are none)
                          variants=[{"data_t": data, "stat_t": stat}
                                    for data in ("float32", "float64")
                                    for stat in ("float32", "float64")])


def normalize_twin(x, residual, y, centre, scale, shift, total, C, has_residual, relu):
    y[...] = (x - centre) * scale + shift
    if has_residual:
        y += residual
    if relu:
        y[y < 0] = 0


NORMALIZE = Kernel("bn_normalize", r"""
extern "C" __global__ void bn_normalize(const data_t* x, const data_t* residual, data_t* y,
                                        const data_t* centre, const data_t* scale,
                                        const data_t* shift, long long total, long long C,
                                        int has_residual, int relu) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        long long c = i % C;
        data_t v = (x[i] - centre[c]) * scale[c] + shift[c];
        if (has_residual) v += residual[i];
        if (relu && v < 0) v = 0;                    // a NaN stays NaN, as max(NaN, 0)
        y[i] = v;
    }
}
""", normalize_twin)


def backward_constants_twin(partials, gamma, mean, inv_std, centre, grad_gamma, grad_beta,
                            a, b, k, B, C, n, use_batch):
    sums = partials.sum(axis=0)
    sum_g = sums[:, 0]
    sum_g_x_hat = (sums[:, 1] + (centre - mean) * sum_g) * inv_std  # sum(g (x - mu)) / sigma
    grad_gamma[...] = sum_g_x_hat
    grad_beta[...] = sum_g
    exact_a = gamma.astype(numpy.float64) * inv_std
    a[...] = exact_a
    if use_batch:
        exact_b = -exact_a * inv_std * sum_g_x_hat / n
        b[...] = exact_b
        k[...] = exact_b * (centre - mean) - exact_a * sum_g / n
    else:
        b[...] = 0
        k[...] = 0


BACKWARD_CONSTANTS = Kernel("bn_backward_constants", r"""
extern "C" __global__ void bn_backward_constants(
        const double* partials, const data_t* gamma, const double* mean, const double* inv_std,
        const data_t* centre, data_t* grad_gamma, data_t* grad_beta, data_t* a_out,
        data_t* b_out, data_t* k_out, long long B, long long C, double n, int use_batch) {
    long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sum_g = 0.0, sum_g_centred = 0.0;
    for (long long b = 0; b < B; b++) {
        sum_g += partials[(b * C + c) * 2];
        sum_g_centred += partials[(b * C + c) * 2 + 1];
    }
    double offset = (double)centre[c] - mean[c];
    double sum_g_x_hat = (sum_g_centred + offset * sum_g) * inv_std[c];
    double a = (double)gamma[c] * inv_std[c];
    grad_gamma[c] = (data_t)sum_g_x_hat;
    grad_beta[c] = (data_t)sum_g;
    a_out[c] = (data_t)a;
    if (use_batch) {
        double b = -a * inv_std[c] * sum_g_x_hat / n;
        b_out[c] = (data_t)b;
        k_out[c] = (data_t)(b * offset - a * sum_g / n);
    } else {
        b_out[c] = 0;
        k_out[c] = 0;
    }
}
""", backward_constants_twin)


def backward_input_twin(g, x, y, centre, a, b, k, grad_x, grad_masked, total, C, relu,
                        write_x, write_masked):
    g = numpy.where(y > 0, g, 0) if relu else g
    if write_x:
        grad_x[...] = a * g + b * (x - centre) + k
    if write_masked:
        grad_masked[...] = g


BACKWARD_INPUT = Kernel("bn_backward_input", r"""
extern "C" __global__ void bn_backward_input(const data_t* g, const data_t* x, const data_t* y,
                                             const data_t* centre, const data_t* a,
                                             const data_t* b, const data_t* k, data_t* grad_x,
                                             data_t* grad_masked, long long total, long long C,
                                             int relu, int write_x, int write_masked) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        long long c = i % C;
        data_t gi = (relu && !(y[i] > 0)) ? (data_t)0 : g[i];
        if (write_x) grad_x[i] = a[c] * gi + b[c] * (x[i] - centre[c]) + k[c];
        if (write_masked) grad_masked[i] = gi;
    }
}
""", backward_input_twin)


def channel_rows(x):
    """x (N, C, *) as a C-contiguous (M, C) array: a free view of channels-last memory, else
    one copy."""
    xp = array_module(x)
    return xp.ascontiguousarray(xp.moveaxis(x, 1, -1)).reshape(-1, x.shape[1])


def from_channel_rows(rows, shape):
    """The inverse of channel_rows: (M, C) -> an (N, C, *) view with channels-last strides."""
    xp = array_module(rows)
    return xp.moveaxis(rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


def _row_blocks(M):
    """(blocks, rows per block) for the partial sums down M rows."""
    blocks = min(MAX_ROW_BLOCKS, blocks_for(M, 64))
    rows = -(-M // blocks)
    return blocks_for(M, rows), rows


def _elementwise_grid(total):
    return (min(blocks_for(total, THREADS), 65535 * 8),), (THREADS,)


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
        if use_batch_stats and group is not None:  # the global batch's sums, every rank's
            partials = partials.sum(axis=0)[None]
            group.allreduce(partials)
            blocks, ctx.count = 1, M * group.size
        has_running = running_mean is not None
        stats = (running_mean, running_var) if has_running else (xp.zeros(C, f64),) * 2
        mean, inv_std = xp.empty(C, f64), xp.empty(C, f64)
        centre, scale, shift = (xp.empty(C, x.dtype) for _ in range(3))
        per_channel = (blocks_for(C, THREADS),), (THREADS,)
        FORWARD_CONSTANTS.run(xp, *per_channel,
                              (partials, weight, bias, *stats, mean, inv_std, centre, scale,
                               shift, i64(blocks), i64(C), numpy.float64(ctx.count),
                               numpy.float64(eps), numpy.float64(momentum),
                               numpy.int32(use_batch_stats), numpy.int32(has_running)),
                              {"data_t": x.dtype, "stat_t": stats[0].dtype})
        out = xp.empty_like(rows)
        residual_rows = channel_rows(residual[0]) if residual else rows
        NORMALIZE.run(xp, *_elementwise_grid(rows.size),
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
            BACKWARD_INPUT.run(xp, *_elementwise_grid(g.size),
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
