"""Batch norm's six CUDA kernels, each beside its NumPy twin (batch_norm.py launches them).

The arrays are seen as (n, C) rows, one row per pixel (a free view of a conv's channels-last
output):

    bn_moments             per-channel partial sums of x and x^2 over blocks of rows, float64
    bn_forward_constants   per channel, the blocks' sums added in order (so the result does
                           not depend on scheduling): mean, var, 1/sigma, the running
                           statistics, and y's scale and shift about c, the mean rounded to
                           x's precision (or the mean and var given, over a group)
    bn_normalize           y = (x - c) scale + shift (+ residual) (then max(., 0)), elementwise
    bn_backward_sums       per-channel partial sums of g and g (x - c), g masked by y > 0
    bn_backward_constants  dgamma = sum(g x_hat), dbeta = sum(g), and dx's a, b, k
    bn_backward_input      dx = a g + b (x - c) + k (and the masked g, the residual's gradient)

The sums are float64 (float32 values, their squares and products with float32 values are
exact in float64) and every per-channel constant is computed in float64 and rounded once.
Each kernel's twin (above it) is the same computation in NumPy.
"""
import numpy

from nn.runtime.cuda import THREADS, Kernel

CHANNELS_PER_BLOCK = 32  # a warp reads 32 neighbouring channels of a row: one 128-byte line
ROW_THREADS = THREADS // CHANNELS_PER_BLOCK  # 8 threads of a block down the rows
MAX_ROW_BLOCKS = 256     # blocks down the rows: enough to fill a GPU, few partial sums to add


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
