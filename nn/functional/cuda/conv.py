"""Convolution on the GPU: im2col + GEMM in channels-last memory, im2col and col2im as kernels.

The op, its math and its reference are in nn/functional/conv.py (read that first). The
algorithm is the CPU kernel's (cpu/conv.py): channels-last memory, so that the output
(N*Ho*Wo, F) is the next layer's input as it stands and a 1x1 convolution is one product; the
column matrix of a chunk of images; one product per chunk, which CuPy hands to cuBLAS; and
the same three backward routes (`_backward_route`). What differs is the two copies. On CuPy's
own operations, im2col would be a copy of the images into a zero-bordered buffer and a copy
of its strided windows, and col2im a zero fill and one slice-add per kernel offset (nine for
a 3x3). Here each is one kernel with one thread per element it writes:

    im2col   cols[(n, p, q), (i, j, c)] = x[n, sh p + i - ph, sw q + j - pw, c], 0 outside x
    col2im   dx_padded[n, y, x, c] = sum over the (i, j) with (y - i) / sh = p and
             (x - j) / sw = q whole numbers inside the output: cols[(n, p, q), (i, j, c)]

col2im gathers what its element receives instead of scattering what each column gives, so no
two threads write one element and no atomic add is needed; it writes every element of the
padded gradient, the border too (which the caller crops). Their twins are the same copies in
NumPy, written as the CPU kernel writes them.

A chunk holds as many images as fit CHUNK_BYTES of columns (a GPU's memory is larger than a
CPU's cache, and cuBLAS wants large products), and at least MIN_CHUNK_ROWS rows. The weight
gradient of a 1x1 kernel and the bias gradient are nn/runtime/parallel.py's sums, the same
runs as on the CPU.
"""
import numpy

from autograd import Function, array_module
from nn.runtime import parallel
from nn.runtime.cuda import Kernel, grid

from ..windows import check_conv_inputs, output_size, window_slices

CHUNK_BYTES = 512 * 2**20  # column matrix of one chunk of images at most this size ...
MIN_CHUNK_ROWS = 512  # ... but at least this many rows of columns


def im2col_twin(x_last, cols, n, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo):
    padded = numpy.zeros((n, H + 2 * ph, W + 2 * pw, C), dtype=x_last.dtype)
    padded[:, ph:ph + H, pw:pw + W] = x_last
    s_n, s_h, s_w, s_c = padded.strides           # every window as a view (n, Ho, Wo, kh, kw, C)
    windows = numpy.lib.stride_tricks.as_strided(
        padded, (n, Ho, Wo, kh, kw, C), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    cols.reshape(windows.shape)[...] = windows


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
    grad_padded[...] = 0
    grad_windows = cols.reshape(n, Ho, Wo, kh, kw, C)
    for i, j, (_, rows, columns) in window_slices((kh, kw), (sh, sw), (Ho, Wo)):
        grad_padded[:, rows, columns] += grad_windows[:, :, :, i, j]


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
        for (long long i = 0; i < kh; i++) {             // in the twin's order of offsets
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


def im2col(x_last, cols, geometry):
    """Write the column matrix of x_last (n, H, W, C) into cols (n*Ho*Wo, kh*kw*C)."""
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = geometry
    n, H, W, C = x_last.shape
    xp = array_module(x_last)
    x_last = xp.ascontiguousarray(x_last)
    IM2COL.run(xp, *grid(cols.size), (x_last, cols) + tuple(
        numpy.int64(v) for v in (n, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo)),
        {"data_t": x_last.dtype})


def col2im(cols, grad_padded, geometry):
    """Write into grad_padded (n, Hp, Wp, C) (C-contiguous) what the columns cols
    (n*Ho*Wo, kh*kw*C) add onto each padded pixel: the adjoint of im2col."""
    (kh, kw), (sh, sw), _, (Ho, Wo) = geometry
    n, Hp, Wp, C = grad_padded.shape
    xp = array_module(cols)
    COL2IM.run(xp, *grid(grad_padded.size), (xp.ascontiguousarray(cols), grad_padded) + tuple(
        numpy.int64(v) for v in (n, Hp, Wp, C, kh, kw, sh, sw, Ho, Wo)),
        {"data_t": cols.dtype})


def channels_last(x):
    """(N, C, H, W) -> a C-contiguous (N, H, W, C) array (a free view of channels-last x)."""
    return array_module(x).ascontiguousarray(x.transpose(0, 2, 3, 1))


class Conv2dCuda(Function):
    """conv2d on CuPy arrays, as the CPU's Conv2dGemm computes it (cpu/conv.py): rows
    r = (n, p, q) and columns k = (i, j, c),
        out(N*Ho*Wo, F) = cols(N*Ho*Wo, K) @ Wm(K, F),   Wm[(i, j, c), f] = W[f, c, i, j]
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0)):
        check_conv_inputs(x, weight, bias)
        xp = array_module(x)
        F, C, kh, kw = weight.shape
        ctx.geometry = ((kh, kw), stride, padding,
                        output_size("conv2d", x.shape[2:], (kh, kw), stride, padding))
        x_last = channels_last(x)                                    # (N, H, W, C)
        w_rows = (weight.reshape(F, C) if kh == kw == 1                # (F, K), k = (i, j, c)
                  else xp.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(F, -1))
        ctx.save_for_backward(x_last, w_rows)
        w_matrix = w_rows.T if kh == kw == 1 else xp.ascontiguousarray(w_rows.T)  # (K, F)
        out = _convolve(x_last, w_matrix, ctx.geometry)              # (N, Ho, Wo, F)
        if bias is not None:
            out += bias
        return out.transpose(0, 3, 1, 2)                             # (N, F, Ho, Wo) view

    @staticmethod
    def backward(ctx, grad):
        x_last, w_rows = ctx.saved                                   # (N, H, W, C), (F, K)
        (kh, kw), _, _, _ = ctx.geometry
        F, C = w_rows.shape[0], x_last.shape[3]
        grad_last = channels_last(grad)                              # (N, Ho, Wo, F)
        needs_x, needs_weight = ctx.needs_input_grad[:2]
        route = _backward_route(ctx.geometry, C, needs_x)
        grad_x, grad_w_rows = route(grad_last, x_last, w_rows, ctx.geometry,
                                    needs_x, needs_weight)
        grad_w = grad_bias = None
        if grad_w_rows is not None:  # (F, kh, kw, C) -> (F, C, kh, kw)
            grad_w = grad_w_rows.reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
            grad_w = grad_w if kh == kw == 1 else array_module(grad).ascontiguousarray(grad_w)
        if grad_x is not None:
            grad_x = grad_x.transpose(0, 3, 1, 2)                    # (N, C, H, W) view
        if len(ctx.needs_input_grad) == 3 and ctx.needs_input_grad[2]:
            grad_bias = parallel.column_sum(grad_last.reshape(-1, F))
        return (grad_x, grad_w, grad_bias)[:len(ctx.needs_input_grad)]


def _backward_route(geometry, channels, needs_x):
    """Which of the CPU kernel's three backward routes computes dx and dW (cpu/conv.py)."""
    (kh, kw), stride, (ph, pw), _ = geometry
    if kh == kw == 1 and (ph, pw) == (0, 0):
        return _pointwise_grads
    if needs_x and stride == (1, 1) and ph < kh and pw < kw and channels >= 16:
        return _grads_by_flipped_kernel
    return _grads_by_col2im


def _pointwise_grads(grad_last, x_last, w_rows, geometry, needs_x, needs_weight):
    """A 1x1 convolution: dW = dout^T x (F, C), dx = dout W spread onto the strided pixels."""
    xp = array_module(grad_last)
    (sh, sw) = geometry[1]
    N, H, W, C = x_last.shape
    grad_rows = grad_last.reshape(-1, w_rows.shape[0])               # (N*Ho*Wo, F)
    grad_x = grad_w_rows = None
    if needs_weight:
        pixels = x_last if (sh, sw) == (1, 1) else xp.ascontiguousarray(x_last[:, ::sh, ::sw])
        grad_w_rows = parallel.matmul_transposed(grad_rows, pixels.reshape(-1, C))
    if needs_x:
        grad_x = xp.matmul(grad_rows, w_rows).reshape(grad_last.shape[:3] + (C,))
        if (sh, sw) != (1, 1):
            spread = xp.empty((N, H, W, C), dtype=grad_x.dtype)
            spread[...] = 0
            spread[:, ::sh, ::sw] = grad_x
            grad_x = spread
    return grad_x, grad_w_rows


def _grads_by_col2im(grad_last, x_last, w_rows, geometry, needs_x, needs_weight):
    """dW = sum over chunks of dout^T cols (F, K); dx = col2im(dout W), chunk by chunk."""
    xp = array_module(grad_last)
    N, H, W, C = x_last.shape
    F = w_rows.shape[0]
    _, _, (ph, pw), _ = geometry
    grad_x = grad_w_rows = None
    chunks = image_chunks(x_last, geometry)
    if needs_weight:
        grad_w_rows = _sum_in_order([
            grad_last[start:stop].reshape(-1, F).T @ _columns(x_last, geometry, start, stop)
            for start, stop in chunks])
    if needs_x:  # col2im writes every element, the border too: no zeros first
        grad_padded = xp.empty((N, H + 2 * ph, W + 2 * pw, C), dtype=grad_last.dtype)
        for start, stop in chunks:
            grad_cols = grad_last[start:stop].reshape(-1, F) @ w_rows      # (n*Ho*Wo, K)
            col2im(grad_cols, grad_padded[start:stop], geometry)
        grad_x = grad_padded[:, ph:ph + H, pw:pw + W]
    return grad_x, grad_w_rows


def _grads_by_flipped_kernel(grad_last, x_last, w_rows, geometry, needs_x, needs_weight):
    """dx of a stride-1 convolution as the convolution of dout with the kernel flipped and its
    channels swapped, and dW from the same columns (cpu/conv.py derives both)."""
    xp = array_module(grad_last)
    (kh, kw), _, (ph, pw), _ = geometry
    N, Ho, Wo, F = grad_last.shape
    C = w_rows.shape[1] // (kh * kw)
    flipped = w_rows.reshape(F, kh, kw, C)[:, ::-1, ::-1].transpose(1, 2, 0, 3)  # (kh, kw, F, C)
    flipped = xp.ascontiguousarray(flipped).reshape(kh * kw * F, C)
    H, W = Ho + kh - 1 - 2 * ph, Wo + kw - 1 - 2 * pw
    flipped_geometry = ((kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), (H, W))
    grad_x = xp.empty((N, H, W, C), dtype=grad_last.dtype)
    parts = []
    for start, stop in image_chunks(grad_last, flipped_geometry):
        cols = _columns(grad_last, flipped_geometry, start, stop)     # (n*H*W, kh*kw*F)
        xp.matmul(cols, flipped, out=grad_x[start:stop].reshape(-1, C))
        if needs_weight:  # (kh*kw*F, C), summed over these images' pixels
            parts.append(cols.T @ x_last[start:stop].reshape(-1, C))
    if not needs_weight:
        return grad_x, None
    grad_w = _sum_in_order(parts).reshape(kh, kw, F, C)[::-1, ::-1]  # (i, j, F, C)
    return grad_x, grad_w.transpose(2, 0, 1, 3)                        # (F, i, j, C) view


def _convolve(x_last, w_matrix, geometry):
    """The convolution of channels-last x_last (N, H, W, C) by the (K, F) weight matrix:
    (N, Ho, Wo, F), one GEMM per chunk of images (one GEMM in all for a 1x1 kernel)."""
    xp = array_module(x_last)
    (kh, kw), (sh, sw), padding, (Ho, Wo) = geometry
    N, C, F = x_last.shape[0], x_last.shape[3], w_matrix.shape[1]
    out = xp.empty((N, Ho, Wo, F), dtype=x_last.dtype)
    if kh == kw == 1 and padding == (0, 0):  # no windows overlap: the input is the columns
        pixels = x_last if (sh, sw) == (1, 1) else xp.ascontiguousarray(x_last[:, ::sh, ::sw])
        xp.matmul(pixels.reshape(-1, C), w_matrix, out=out.reshape(-1, F))
        return out
    for start, stop in image_chunks(x_last, geometry):
        xp.matmul(_columns(x_last, geometry, start, stop), w_matrix,
                  out=out[start:stop].reshape(-1, F))
    return out


def image_chunks(x_last, geometry):
    """The (start, stop) chunks of images: as many as CHUNK_BYTES of columns hold, at least
    MIN_CHUNK_ROWS rows of columns and one image, the last chunk shorter."""
    (kh, kw), _, _, (Ho, Wo) = geometry
    N = x_last.shape[0]
    per_image = max(1, Ho * Wo * kh * kw * x_last.shape[3] * x_last.itemsize)
    fewest = max(1, min(-(-MIN_CHUNK_ROWS // (Ho * Wo)), N))
    size = max(CHUNK_BYTES // per_image, fewest)
    return [(start, min(N, start + size)) for start in range(0, N, size)]


def _columns(x_last, geometry, start, stop):
    """The column matrix (n*Ho*Wo, K) of images start..stop-1, by the im2col kernel."""
    (kh, kw), _, _, (Ho, Wo) = geometry
    xp = array_module(x_last)
    cols = xp.empty(((stop - start) * Ho * Wo, kh * kw * x_last.shape[3]), dtype=x_last.dtype)
    im2col(x_last[start:stop], cols, geometry)
    return cols


def _sum_in_order(parts):
    """parts[0] + parts[1] + ..., added in list order (a new array)."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total
