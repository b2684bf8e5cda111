"""Convolution as it runs: im2col + GEMM in channels-last memory, in chunks of images.

The algorithm is the reference's (nn/functional/conv.py, read that first): copy what each
filter window sees into a row of a column matrix, and the convolution is one matrix
product. Three choices make it fast on a CPU, none of which changes the arithmetic:

1. Channels-last memory. In (N, H, W, C) order a window's C values are contiguous, the
   column matrix is (N*Ho*Wo, kh*kw*C) and the output (N*Ho*Wo, F) is already the next layer's
   channels-last input. The result is returned as an (N, F, Ho, Wo) *view* of that memory
   (PyTorch calls this the channels_last memory format): the API stays NCHW, elementwise ops
   keep the layout, and the next conv reads it back without a copy. A 1x1 convolution is then
   a plain matrix product with no im2col at all (ResNet-50 has 36 of them).
2. Chunks. im2col of a whole batch is kh*kw times the size of the input (hundreds of MB);
   a few images at a time keeps the column buffer small, and the buffer is reused from chunk
   to chunk and step to step (nn/runtime/scratch.py). The chunks are pieces for the threads
   (nn/runtime/threads.py), each thread with its own buffer; a 1x1 convolution's one product
   is split by rows instead.
3. The window view. The columns of a chunk are one strided view of the padded input
   (as_strided: no copy), copied once into the buffer.

Backward, by one of three routes (`_backward_route`):
- pointwise (a 1x1 kernel, no padding): dW = dout^T x and dx = dout W, two products.
- by the flipped kernel (stride 1, C >= 16): a stride-1 convolution's dx is itself a
  convolution, of the output gradient with the kernel flipped: im2col of dout, one GEMM;
  and the same columns give dW, so x needs no second im2col.
- by col2im (otherwise, and for an input of few channels, an RGB image): dW = cols^T dout,
  dcols = dout W^T, and col2im adds dcols back onto the input's pixels (one strided
  slice-add per kernel offset, no atomics).
db sums the output gradient's rows in short runs (parallel.column_sum).
"""
import numpy

from autograd import Function
from nn.runtime import parallel
from nn.runtime.scratch import buffer, padded_images
from nn.runtime.threads import for_pieces, map_ranges, split

from ..windows import check_conv_inputs, output_size, window_slices

CHUNK_BYTES = 4 * 2**20  # column-buffer size per chunk
MIN_CHUNK_ROWS = 512  # but at least this many rows of columns per chunk (see image_chunks)


def channels_last(x):
    """(N, C, H, W) -> a C-contiguous (N, H, W, C) array: a free view when x already has
    channels-last strides (the output of conv2d and of elementwise ops on it), else a copy."""
    return numpy.ascontiguousarray(x.transpose(0, 2, 3, 1))


class Conv2dGemm(Function):
    """out[n, f, p, q] = bias[f] + sum_{c,i,j} W[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j].

    Input and output are NCHW-shaped; inside, rows r = (n, p, q) and columns k = (i, j, c):
        out(N*Ho*Wo, F) = cols(N*Ho*Wo, K) @ Wm(K, F),   Wm[(i, j, c), f] = W[f, c, i, j]
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0)):
        check_conv_inputs(x, weight, bias)
        F, _, kh, kw = weight.shape
        ctx.geometry = ((kh, kw), stride, padding,
                        output_size("conv2d", x.shape[2:], (kh, kw), stride, padding))
        x_last = channels_last(x)                                    # (N, H, W, C)
        w_rows = _filter_rows(weight)                                # (F, K)
        ctx.save_for_backward(x_last, w_rows)
        # (K, F): BLAS multiplies by a C-contiguous matrix a few percent faster than by the
        # transposed view; a 1x1 kernel's (many large products) is left a view all the same
        w_matrix = w_rows.T if kh == kw == 1 else parallel.copy(w_rows.T)
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
            grad_w = grad_w if kh == kw == 1 else parallel.copy(grad_w)
        if grad_x is not None:
            grad_x = grad_x.transpose(0, 3, 1, 2)                    # (N, C, H, W) view
        if len(ctx.needs_input_grad) == 3 and ctx.needs_input_grad[2]:
            grad_bias = parallel.column_sum(grad_last.reshape(-1, F))
        return (grad_x, grad_w, grad_bias)[:len(ctx.needs_input_grad)]


def _backward_route(geometry, channels, needs_x):
    """Which of the three backward routes of the module docstring computes dx and dW.

    By the flipped kernel only for stride 1, padding below the kernel and C >= 16: for an
    input of few channels (C = 3: an RGB image) both of its products would be thin, (M, 9F)
    @ (9F, 3) and x^T @ columns; col2im is faster there, and dx then sums runs of F values
    where the flipped kernel's product sums 9F, which rounds less."""
    (kh, kw), stride, (ph, pw), _ = geometry
    if kh == kw == 1 and (ph, pw) == (0, 0):
        return _pointwise_grads
    if needs_x and stride == (1, 1) and ph < kh and pw < kw and channels >= 16:
        return _grads_by_flipped_kernel
    return _grads_by_col2im


def _pointwise_grads(grad_last, x_last, w_rows, geometry, needs_x, needs_weight):
    """A 1x1 convolution: dW = dout^T x (F, C), each thread summing its rows; dx = dout W,
    spread back onto the strided pixels."""
    _, stride, _, _ = geometry
    N, H, W, C = x_last.shape
    grad_rows = grad_last.reshape(-1, w_rows.shape[0])               # (N*Ho*Wo, F)
    grad_x = grad_w_rows = None
    if needs_weight:
        grad_w_rows = parallel.matmul_transposed(grad_rows, _strided_pixels(x_last, stride)
                                               .reshape(-1, C))
    if needs_x:
        grad_x = parallel.matmul(grad_rows, w_rows).reshape(grad_last.shape[:3] + (C,))
        if stride != (1, 1):
            grad_x = _spread_pixels(grad_x, (N, H, W, C), stride)
    return grad_x, grad_w_rows


def _grads_by_col2im(grad_last, x_last, w_rows, geometry, needs_x, needs_weight):
    """dW = sum over chunks of dout^T cols (F, K); dx = col2im(dout W), chunk by chunk."""
    N, H, W, C = x_last.shape
    F = w_rows.shape[0]
    _, _, (ph, pw), _ = geometry
    grad_x = grad_w_rows = None
    chunks, capacity = image_chunks(x_last, geometry)
    if needs_weight:
        def weight_grad(start, stop):  # the sum over images start..stop-1: (F, K)
            cols = _columns(x_last, geometry, start, stop, capacity)
            return grad_last[start:stop].reshape(-1, F).T @ cols
        grad_w_rows = parallel.total(chunks(weight_grad))
    if needs_x:
        grad_padded = numpy.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=grad_last.dtype)

        def input_grad(start, stop):  # adds onto images start..stop-1 only
            grad_cols = grad_last[start:stop].reshape(-1, F) @ w_rows  # (n*Ho*Wo, K)
            _col2im(grad_cols, grad_padded[start:stop], geometry)
        chunks(input_grad)
        grad_x = grad_padded[:, ph:ph + H, pw:pw + W]
    return grad_x, grad_w_rows


def _grads_by_flipped_kernel(grad_last, x_last, w_rows, geometry, needs_x, needs_weight):
    """dx for a stride-1 convolution: itself a convolution of the output gradient; and, when
    dW is wanted too, dW from the same column matrix. Returns dx (N, H, W, C) and dW as an
    (F, kh, kw, C) view (the order of a row of filter rows), or None.

    dx[u, v, c] = sum_{i,j,f} dout[u + ph - i, v + pw - j, f] W[f, c, i, j]: the output gradient,
    padded by (kh-1-ph, kw-1-pw), convolved with the kernel flipped in space and with its
    in/out channels swapped. This trades col2im's slice-adds for one more im2col copy.

    That column matrix has a row per input pixel (u, v), and in column (i', j', f) the value
    dout[u + i' - (kh-1-ph), v + j' - (kw-1-pw), f]. So columns^T @ x, summed over the pixels,
    is sum_{u,v} dout[u + ph - i, v + pw - j, f] x[u, v, c] = dW[f, c, i, j] at i = kh-1-i',
    j = kw-1-j': the weight gradient without a column matrix of x (one im2col fewer).
    (In this order, not x^T @ columns, each filter's values lie in kh*kw runs of C: the
    final copy into (F, C, kh, kw) gathers from a few runs, not from every F-th value.)"""
    (kh, kw), _, (ph, pw), _ = geometry
    N, Ho, Wo, F = grad_last.shape
    C = w_rows.shape[1] // (kh * kw)
    flipped = w_rows.reshape(F, kh, kw, C)[:, ::-1, ::-1].transpose(1, 2, 0, 3)  # (kh, kw, F, C)
    flipped = parallel.copy(flipped).reshape(kh * kw * F, C)
    H, W = Ho + kh - 1 - 2 * ph, Wo + kw - 1 - 2 * pw
    flipped_geometry = ((kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), (H, W))
    grad_x = numpy.empty((N, H, W, C), dtype=grad_last.dtype)
    chunks, capacity = image_chunks(grad_last, flipped_geometry)

    def chunk(start, stop):
        cols = _columns(grad_last, flipped_geometry, start, stop, capacity)  # (n*H*W, kh*kw*F)
        numpy.matmul(cols, flipped, out=grad_x[start:stop].reshape(-1, C))
        if needs_weight:  # (kh*kw*F, C), summed over these images' pixels
            return cols.T @ x_last[start:stop].reshape(-1, C)
    parts = chunks(chunk)
    if not needs_weight:
        return grad_x, None
    grad_w = parallel.total(parts).reshape(kh, kw, F, C)[::-1, ::-1]  # (i, j, F, C)
    return grad_x, grad_w.transpose(2, 0, 1, 3)                         # (F, i, j, C) view


def _convolve(x_last, w_matrix, geometry):
    """The convolution of channels-last x_last (N, H, W, C) by the (K, F) weight matrix:
    (N, Ho, Wo, F), one GEMM per chunk of images (none but one GEMM for a 1x1 kernel)."""
    (kh, kw), stride, padding, (Ho, Wo) = geometry
    N, C, F = x_last.shape[0], x_last.shape[3], w_matrix.shape[1]
    out = numpy.empty((N, Ho, Wo, F), dtype=x_last.dtype)
    if kh == kw == 1 and padding == (0, 0):  # no windows overlap: the input is the columns
        rows = _strided_pixels(x_last, stride).reshape(-1, C)
        parallel.matmul(rows, w_matrix, out.reshape(-1, F))
    else:
        chunks, capacity = image_chunks(x_last, geometry)

        def convolve_chunk(start, stop):
            cols = _columns(x_last, geometry, start, stop, capacity)
            numpy.matmul(cols, w_matrix, out=out[start:stop].reshape(-1, F))
        chunks(convolve_chunk)
    return out


def _filter_rows(weight):
    """The weight (F, C, kh, kw) as an (F, K) matrix, one filter per row, each in the order
    k = (i, j, c) of a column-matrix row (a copy, except for a 1x1 kernel: a free view)."""
    F, C, kh, kw = weight.shape
    if kh == kw == 1:
        return weight.reshape(F, C)
    return parallel.copy(weight.transpose(0, 2, 3, 1)).reshape(F, -1)


def _strided_pixels(x_last, stride):
    """x_last (N, H, W, C) at the pixels a strided 1x1 kernel reads, x_last[:, ::sh, ::sw], as
    a C-contiguous array (copied by the threads), or x_last itself for stride 1."""
    if stride == (1, 1):
        return x_last
    return parallel.copy(x_last[:, ::stride[0], ::stride[1]])


def _spread_pixels(grad_strided, shape, stride):
    """The adjoint of _strided_pixels: an array of `shape` (N, H, W, C), zero except at the
    strided pixels, which receive grad_strided; split over the threads by images."""
    grad = numpy.empty(shape, dtype=grad_strided.dtype)

    def fill(start, stop):
        grad[start:stop] = 0
        grad[start:stop, ::stride[0], ::stride[1]] = grad_strided[start:stop]
    for_pieces(fill, shape[0], grad[:1].nbytes, grad)
    return grad


def image_chunks(x_last, geometry):
    """(run, capacity): run(fn) gives [fn(start, stop) for each chunk of images], in order, in
    the threads (threads.split, bounded by a column buffer of CHUNK_BYTES); capacity is the
    images of the largest chunk, which a thread's column buffer holds.

    A chunk has at least MIN_CHUNK_ROWS rows of columns: each chunk's product packs the whole
    weight matrix into BLAS's buffers again, and at a network's last stages (few rows an
    image, large weights) a chunk of a few images would spend more time packing than
    multiplying."""
    (kh, kw), _, _, (Ho, Wo) = geometry
    N = x_last.shape[0]
    per_image = Ho * Wo * kh * kw * x_last.shape[3] * x_last.itemsize
    fewest = -(-MIN_CHUNK_ROWS // (Ho * Wo))
    chunks = split(N, per_image, x_last, CHUNK_BYTES, fewest)
    capacity = max(stop - start for start, stop in chunks)
    return (lambda fn: map_ranges(fn, chunks, N * per_image, x_last)), capacity


def _windows(x_padded, kernel, stride, out_size):
    """Every filter window of x_padded (n, Hp, Wp, C) as a view (n, Ho, Wo, kh, kw, C):
    windows[n, p, q, i, j, c] = x_padded[n, sh*p + i, sw*q + j, c]. No data is copied."""
    (kh, kw), (sh, sw), (Ho, Wo) = kernel, stride, out_size
    n, _, _, C = x_padded.shape
    s_n, s_h, s_w, s_c = x_padded.strides
    return numpy.lib.stride_tricks.as_strided(
        x_padded, (n, Ho, Wo, kh, kw, C), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))


def _columns(x_last, geometry, start, stop, capacity):
    """The column matrix (n*Ho*Wo, K) of images start..stop-1, in a buffer of `capacity`
    images that this thread reuses for its next chunk: the windows of the padded images,
    copied once (im2col)."""
    kernel, stride, padding, (Ho, Wo) = geometry
    K = kernel[0] * kernel[1] * x_last.shape[3]
    cols = buffer("columns", (capacity * Ho * Wo, K), x_last.dtype)[:(stop - start) * Ho * Wo]
    windows = _windows(padded_images(x_last[start:stop], padding, capacity), kernel, stride,
                       (Ho, Wo))
    cols.reshape(windows.shape)[...] = windows                      # the one copy: im2col
    return cols


def _col2im(grad_cols, grad_padded, geometry):
    """Add grad_cols (n*Ho*Wo, K) back onto the padded image gradient (n, Hp, Wp, C) they were
    copied from: one strided slice-add per kernel offset (i, j)."""
    kernel, stride, _, (Ho, Wo) = geometry
    n, _, _, C = grad_padded.shape
    grad_windows = grad_cols.reshape(n, Ho, Wo, *kernel, C)
    for i, j, (_, rows, columns) in window_slices(kernel, stride, (Ho, Wo)):
        grad_padded[:, rows, columns] += grad_windows[:, :, :, i, j]  # channels last: (n, H, W, C)
