"""Cross-entropy on the GPU: a block of threads per row, two launches forward, one backward.

The op and its math are in nn/functional/loss.py (read that first). On CuPy's own operations
its forward is a dozen launches (the row maxima, the shifted logits, exp, the sums, log, the
gather of the targets, the mean) and its backward four; NT-Xent (simclr/loss.py) is one such
cross-entropy over the 2N x 2N similarities. Here:

    ce_rows      per row i, by one block: m = max_k z_ik, lse_i = m + log sum_k exp(z_ik - m),
                 loss_i = lse_i - z_i,t_i   (then the mean of the losses: CuPy's, one launch)
    ce_backward  dz_ik = (exp(z_ik - lse_i) - [k = t_i]) g / N, each element by one thread

The sums are float64 (exp of float32 values, added over up to thousands of classes or keys);
lse is kept for the backward instead of the softmax, which the backward recomputes.
"""
import numpy

from autograd import Function, array_module
from nn.runtime.cuda import THREADS, Kernel, grid


def rows_twin(logits, target, losses, lse, N, C):
    peak = logits.max(axis=1)
    sums = numpy.exp((logits - peak[:, None]).astype(numpy.float64)).sum(axis=1)
    lse[...] = peak + numpy.log(sums)
    losses[...] = lse - logits[numpy.arange(N), target]


ROWS = Kernel("ce_rows", r"""
extern "C" __global__ void ce_rows(const data_t* logits, const long long* target,
                                   data_t* losses, double* lse, long long N, long long C) {
    __shared__ double shared[256];                  // THREADS: one value per thread
    const data_t* row = logits + blockIdx.x * C;
    // every thread's maximum starts at an element of the row (no -INFINITY: nn/runtime/cuda.py)
    double peak = (double)row[0];
    for (long long k = threadIdx.x; k < C; k += blockDim.x) peak = fmax(peak, (double)row[k]);
    shared[threadIdx.x] = peak;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) shared[threadIdx.x] = fmax(shared[threadIdx.x],
                                                           shared[threadIdx.x + half]);
        __syncthreads();
    }
    peak = shared[0];
    __syncthreads();
    double sum = 0;
    for (long long k = threadIdx.x; k < C; k += blockDim.x)
        sum += exp((double)(row[k] - (data_t)peak));
    shared[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        double row_lse = peak + log(shared[0]);
        lse[blockIdx.x] = row_lse;
        losses[blockIdx.x] = (data_t)(row_lse - (double)row[target[blockIdx.x]]);
    }
}
""", rows_twin)


def backward_twin(logits, target, lse, grad, grad_logits, N, C):
    softmax = numpy.exp(logits.astype(numpy.float64) - lse[:, None])
    softmax[numpy.arange(N), target] -= 1
    grad_logits[...] = softmax * (grad.astype(numpy.float64) / N)


BACKWARD = Kernel("ce_backward", r"""
extern "C" __global__ void ce_backward(const data_t* logits, const long long* target,
                                       const double* lse, const data_t* grad,
                                       data_t* grad_logits, long long N, long long C) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < N * C;
         index += (long long)blockDim.x * gridDim.x) {
        long long i = index / C, k = index % C;
        double p = exp((double)logits[index] - lse[i]) - (k == target[i] ? 1.0 : 0.0);
        grad_logits[index] = (data_t)(p * ((double)grad[0] / N));
    }
}
""", backward_twin)


class CrossEntropyCuda(Function):
    """cross_entropy's op (nn/functional/loss.py) on CuPy arrays, by the kernels above."""

    @staticmethod
    def forward(ctx, logits, target):
        xp = array_module(logits, target)
        logits = xp.ascontiguousarray(logits)
        target = xp.ascontiguousarray(target.astype(xp.int64, copy=False))
        N, C = logits.shape
        losses, lse = xp.empty(N, logits.dtype), xp.empty(N, xp.float64)
        ROWS.run(xp, (N,), (THREADS,), (logits, target, losses, lse, numpy.int64(N),
                                       numpy.int64(C)), {"data_t": logits.dtype})
        ctx.save_for_backward(logits, target, lse)
        return losses.mean()

    @staticmethod
    def backward(ctx, grad):
        logits, target, lse = ctx.saved
        xp = array_module(logits)
        N, C = logits.shape
        grad_logits = xp.empty_like(logits)
        grad = xp.ascontiguousarray(grad, dtype=logits.dtype)   # NumPy gives a scalar: an array
        BACKWARD.run(xp, *grid(N * C),
                     (logits, target, lse, grad, grad_logits,
                      numpy.int64(N), numpy.int64(C)), {"data_t": logits.dtype})
        return grad_logits
