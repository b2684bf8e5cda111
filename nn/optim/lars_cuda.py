"""The optimisers' updates on the GPU: every parameter in two launches, not a dozen each.

A ResNet-50 has 161 parameters; LARS on CuPy's own operations takes about fifteen small
kernels for each (the weight decay, two norms, the trust ratio, the momentum, the update): a
few thousand launches a step, each mostly waiting on the host. Here one table lists every
parameter's arrays (their device addresses) and the chunks of CHUNK elements they are cut
into, and two kernels run over all the chunks at once:

    1. lars_norms:  per chunk, sum(w^2) and sum(g'^2) in float64, g' = g + weight_decay w
    2. lars_update: per chunk, its parameter's norms (the sum of its chunks' sums, added by
                    the block in a fixed order, so the result does not depend on scheduling),
                    trust = eta ||w|| / ||g'|| (1 when either is 0, or for an excluded
                    parameter, which also takes no weight decay), then
                    v = momentum v + lr trust g',  w = w - v

as nn/optim/lars.py's LARS.update does for one parameter (read that first). The twins below
compute the same, parameter by parameter.
"""
import numpy

from autograd import array_module
from nn.runtime.cuda import THREADS, Kernel

CHUNK = 4096     # elements of one parameter that one block of the kernels takes


def lars_norms_twin(weights, grads, excluded, chunk_norms, weight_decay, tables):
    """chunk_norms[k] = (sum w^2, sum g'^2) over chunk k of `tables` (float64)."""
    for k, (index, start) in enumerate(zip(*tables)):
        w = weights[index].reshape(-1)[start:start + CHUNK].astype(numpy.float64)
        g = grads[index].reshape(-1)[start:start + CHUNK].astype(numpy.float64)
        if not excluded[index]:
            g = g + weight_decay * w
        chunk_norms[k] = (w @ w, g @ g)


def lars_update_twin(weights, grads, velocities, excluded, chunk_norms, lr, momentum,
                     weight_decay, eta, tables):
    for index, (w, g, v) in enumerate(zip(weights, grads, velocities)):
        chunks = chunk_norms[tables[0] == index].sum(axis=0)          # (sum w^2, sum g'^2)
        dtype = w.dtype
        if excluded[index]:
            trust = 1.0
        else:
            g = g + dtype.type(weight_decay) * w
            w_norm, g_norm = numpy.sqrt(chunks)
            trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        v *= dtype.type(momentum)
        v += dtype.type(lr * trust) * g
        w -= v


_SHARED = r"""
// table: 3 rows of `parameters` int64s (weight, grad, velocity addresses), then a row of
// their sizes and one of excluded flags; then 2 rows of `chunks` (parameter, first element)
__device__ void chunk_of(const long long* table, long long parameters, long long chunks,
                         long long k, long long* index, long long* start, long long* size) {
    *index = table[5 * parameters + k];
    *start = table[5 * parameters + chunks + k];
    *size = table[3 * parameters + *index];
}

// The sums of every thread's a and b in the block (256 threads), added in a fixed tree
__device__ void block_sums(double* a, double* b) {
    __shared__ double s1[256], s2[256];            // THREADS: one value per thread
    s1[threadIdx.x] = *a;
    s2[threadIdx.x] = *b;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            s1[threadIdx.x] += s1[threadIdx.x + half];
            s2[threadIdx.x] += s2[threadIdx.x + half];
        }
        __syncthreads();
    }
    *a = s1[0];
    *b = s2[0];
}
"""

LARS_NORMS = Kernel("lars_norms", _SHARED + r"""
extern "C" __global__ void lars_norms(const long long* table, double* chunk_norms,
                                      long long parameters, long long chunks, long long chunk,
                                      double weight_decay) {
    long long index, start, size;
    chunk_of(table, parameters, chunks, blockIdx.x, &index, &start, &size);
    const data_t* w = (const data_t*)table[index];
    const data_t* g = (const data_t*)table[parameters + index];
    int excluded = (int)table[4 * parameters + index];
    long long stop = min(start + chunk, size);
    double a = 0.0, b = 0.0;
    for (long long i = start + threadIdx.x; i < stop; i += blockDim.x) {
        double wi = (double)w[i];
        double gi = (double)g[i];
        if (!excluded) gi += weight_decay * wi;
        a += wi * wi;
        b += gi * gi;
    }
    block_sums(&a, &b);
    if (threadIdx.x == 0) {
        chunk_norms[2 * blockIdx.x] = a;
        chunk_norms[2 * blockIdx.x + 1] = b;
    }
}
""", lars_norms_twin)

LARS_UPDATE = Kernel("lars_update", _SHARED + r"""
extern "C" __global__ void lars_update(const long long* table, const double* chunk_norms,
                                       long long parameters, long long chunks, long long chunk,
                                       double lr, double momentum, double weight_decay,
                                       double eta) {
    long long index, start, size;
    chunk_of(table, parameters, chunks, blockIdx.x, &index, &start, &size);
    data_t* w = (data_t*)table[index];
    const data_t* g = (const data_t*)table[parameters + index];
    data_t* v = (data_t*)table[2 * parameters + index];
    int excluded = (int)table[4 * parameters + index];
    // this parameter's chunks are the neighbours k0 .. k0 + count - 1 of this one
    long long k0 = blockIdx.x - start / chunk;
    long long count = (size + chunk - 1) / chunk;
    double a = 0.0, b = 0.0;
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
        a += chunk_norms[2 * (k0 + k)];
        b += chunk_norms[2 * (k0 + k) + 1];
    }
    block_sums(&a, &b);
    double w_norm = sqrt(a), g_norm = sqrt(b);
    double trust = (!excluded && w_norm > 0 && g_norm > 0) ? eta * w_norm / g_norm : 1.0;
    data_t scaled_lr = (data_t)(lr * trust);
    data_t decay = excluded ? (data_t)0 : (data_t)weight_decay;
    long long stop = min(start + chunk, size);
    for (long long i = start + threadIdx.x; i < stop; i += blockDim.x) {
        data_t gi = g[i] + decay * w[i];
        data_t vi = v[i] * (data_t)momentum;
        vi += scaled_lr * gi;
        v[i] = vi;
        w[i] -= vi;
    }
}
""", lars_update_twin)


def chunk_tables(sizes):
    """(parameter, first element) of every chunk of CHUNK elements of parameters of `sizes`,
    the chunks of one parameter side by side: two int64 arrays."""
    counts = [max(1, -(-size // CHUNK)) for size in sizes]
    index = numpy.repeat(numpy.arange(len(sizes)), counts)
    start = numpy.concatenate([numpy.arange(count) * CHUNK for count in counts])
    return index.astype(numpy.int64), start.astype(numpy.int64)


def lars_step(weights, grads, velocities, excluded, lr, momentum, weight_decay, eta):
    """One LARS step of every parameter in `weights` (arrays of one dtype and device, updated
    in place, as `velocities`), from `grads`; excluded[i]: no weight decay, trust 1."""
    xp = array_module(*weights)
    # The kernels reach these arrays through their addresses, which no launch check sees:
    # each is read as one run of memory of data_t, the weights' dtype.
    dtype = weights[0].dtype
    for kind, arrays in (("weight", weights), ("gradient", grads), ("velocity", velocities)):
        for index, array in enumerate(arrays):
            if array.dtype != dtype:
                raise TypeError(f"lars_step: {kind} {index} (shape {array.shape}) is "
                                f"{array.dtype}; expected {dtype}, the weights' dtype")
            if not array.flags.c_contiguous:
                raise ValueError(f"lars_step: {kind} {index} (shape {array.shape}) is not "
                                 f"C-contiguous")
    sizes = [w.size for w in weights]
    tables = chunk_tables(sizes)
    chunks = len(tables[0])
    chunk_norms = xp.empty((chunks, 2), xp.float64)
    norms_twin = (weights, grads, excluded, chunk_norms, weight_decay, tables)
    update_twin = (weights, grads, velocities, excluded, chunk_norms, lr, momentum,
                   weight_decay, eta, tables)
    if xp is numpy:
        lars_norms_twin(*norms_twin)
        lars_update_twin(*update_twin)
        return
    # the table is the kernels' `const long long*`: the addresses (unsigned) kept bit for bit
    # as int64, beside the sizes, flags and chunks, in one int64 array
    addresses = [[a.data.ptr for a in arrays] for arrays in (weights, grads, velocities)]
    table = xp.asarray(numpy.concatenate(
        [numpy.array(addresses, dtype=numpy.uint64).view(numpy.int64).reshape(-1),
         numpy.array(sizes, numpy.int64), numpy.array(excluded, numpy.int64)] + list(tables)))
    types, grid, block = {"data_t": weights[0].dtype}, (chunks,), (THREADS,)
    scalars = (numpy.int64(len(weights)), numpy.int64(chunks), numpy.int64(CHUNK))
    LARS_NORMS.run(xp, grid, block, (table, chunk_norms) + scalars
                   + (numpy.float64(weight_decay),), types, twin_args=norms_twin)
    LARS_UPDATE.run(xp, grid, block, (table, chunk_norms) + scalars
                    + tuple(numpy.float64(v) for v in (lr, momentum, weight_decay, eta)), types,
                    twin_args=update_twin)
