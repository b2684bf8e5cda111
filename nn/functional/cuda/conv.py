"""im2col and col2im on the GPU: one gather kernel each, no atomics.

The convolution's algorithm on the GPU is the CPU's (cpu/conv.py: channels-last memory, a
column matrix, one GEMM per chunk, which CuPy hands to cuBLAS); only the two copies differ.
On CuPy's own operations, im2col is a copy of the images into a zero-bordered buffer and a
copy of its strided windows, and col2im a zero fill and one slice-add per kernel offset (nine
for a 3x3). Here each is one kernel with one thread per element it writes:

    im2col   cols[(n, p, q), (i, j, c)] = x[n, sh p + i - ph, sw q + j - pw, c], 0 outside x
    col2im   dx_padded[n, y, x, c] = sum over the (i, j) with (y - i) / sh = p and
             (x - j) / sw = q whole numbers inside the output: cols[(n, p, q), (i, j, c)]

col2im gathers what its element receives instead of scattering what each column gives, so no
two threads write one element and no atomic add is needed; it writes every element of the
padded gradient, the border too (which the caller crops). The twins are cpu/conv.py's copies.
"""
import numpy

from .kernels import Kernel, blocks_for

THREADS = 256


def im2col_twin(x_last, cols, n, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo):
    from ..cpu.conv import _windows
    from ..windows import pad2d
    padded = pad2d(x_last.transpose(0, 3, 1, 2), (ph, pw)).transpose(0, 2, 3, 1)  # (n, Hp, Wp, C)
    cols.reshape(n, Ho, Wo, kh, kw, C)[...] = _windows(padded, (kh, kw), (sh, sw), (Ho, Wo))


IM2COL = Kernel("im2col", r"""
extern "C" __global__ void im2col(const data_t* x, data_t* cols, long long n, long long H,
                                  long long W, long long C, long long kh, long long kw,
                                  long long sh, long long sw, long long ph, long long pw,
                                  long long Ho, long long Wo) {
    long long K = kh * kw * C;
    long long total = n * Ho * Wo * K;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        long long row = index / K, k = index % K;
        long long image = row / (Ho * Wo), p = (row / Wo) % Ho, q = row % Wo;
        long long i = k / (kw * C), j = (k / C) % kw, c = k % C;
        long long y = sh * p + i - ph, xx = sw * q + j - pw;
        cols[index] = (y < 0 || y >= H || xx < 0 || xx >= W)
                      ? (data_t)0 : x[((image * H + y) * W + xx) * C + c];
    }
}
""", im2col_twin)


def col2im_twin(cols, grad_padded, n, Hp, Wp, C, kh, kw, sh, sw, Ho, Wo):
    from ..cpu.conv import _col2im
    grad_padded[...] = 0
    _col2im(cols, grad_padded, ((kh, kw), (sh, sw), None, (Ho, Wo)))


COL2IM = Kernel("col2im", r"""
extern "C" __global__ void col2im(const data_t* cols, data_t* grad_padded, long long n,
                                  long long Hp, long long Wp, long long C, long long kh,
                                  long long kw, long long sh, long long sw, long long Ho,
                                  long long Wo) {
    long long K = kh * kw * C;
    long long total = n * Hp * Wp * C;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        long long c = index % C, x = (index / C) % Wp, y = (index / (C * Wp)) % Hp;
        long long image = index / (C * Wp * Hp);
        data_t sum = 0;
        for (long long i = 0; i < kh; i++) {             // in cpu/conv.py's order of offsets
            for (long long j = 0; j < kw; j++) {
                long long dy = y - i, dx = x - j;
                if (dy < 0 || dx < 0 || dy % sh || dx % sw) continue;
                long long p = dy / sh, q = dx / sw;
                if (p >= Ho || q >= Wo) continue;
                sum += cols[((image * Ho + p) * Wo + q) * K + (i * kw + j) * C + c];
            }
        }
        grad_padded[index] = sum;
    }
}
""", col2im_twin)


def _grid(total):
    return (min(blocks_for(total, THREADS), 65535 * 16),), (THREADS,)


def im2col(x_last, cols, geometry):
    """Write the column matrix of x_last (n, H, W, C) into cols (n*Ho*Wo, kh*kw*C)."""
    from autograd import array_module
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = geometry
    n, H, W, C = x_last.shape
    xp = array_module(x_last)
    x_last = xp.ascontiguousarray(x_last)
    IM2COL.run(xp, *_grid(cols.size), (x_last, cols) + tuple(
        numpy.int64(v) for v in (n, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo)),
        {"data_t": x_last.dtype})


def col2im(cols, grad_padded, geometry):
    """Write into grad_padded (n, Hp, Wp, C) (C-contiguous) what the columns cols
    (n*Ho*Wo, kh*kw*C) add onto each padded pixel: the adjoint of im2col."""
    from autograd import array_module
    (kh, kw), (sh, sw), _, (Ho, Wo) = geometry
    n, Hp, Wp, C = grad_padded.shape
    xp = array_module(cols)
    COL2IM.run(xp, *_grid(grad_padded.size), (xp.ascontiguousarray(cols), grad_padded) + tuple(
        numpy.int64(v) for v in (n, Hp, Wp, C, kh, kw, sh, sw, Ho, Wo)),
        {"data_t": cols.dtype})
