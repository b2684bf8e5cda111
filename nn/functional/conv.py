"""2-D convolution, as it runs: im2col + GEMM in channels-last memory, in chunks of images.

The algorithm is the one in im2col.py (read that first): copy what each filter window sees
into a row of a column matrix, and the convolution is one matrix product. Three choices make
it fast on a CPU, none of which changes the arithmetic:

1. Channels-last memory. In (N, H, W, C) order a window's C values are contiguous, the
   column matrix is (N*Ho*Wo, kh*kw*C) and the output (N*Ho*Wo, F) is already the next layer's
   channels-last input. The result is returned as an (N, F, Ho, Wo) *view* of that memory
   (PyTorch calls this the channels_last memory format): the API stays NCHW, elementwise ops
   keep the layout, and the next conv reads it back without a copy. A 1x1 convolution is then
   a plain matrix product with no im2col at all (ResNet-50 has 36 of them).
2. Chunks. im2col of a whole batch is kh*kw times the size of the input (hundreds of MB);
   a few images at a time keeps the column buffer small, and the buffer is reused from chunk
   to chunk and step to step. On the CPU the chunks are shared out to threads, each taking
   the next chunk when it is done with one (autograd/parallel.py), each with its own buffer;
   a 1x1 convolution's one product is split by rows instead.
3. The window view. The columns of a chunk are one strided view of the padded input
   (as_strided: no copy), copied once into the buffer.

The 3x3 stride-1 convolutions of small images (ResNet-50's last two stages) run instead as
Winograd's F(2x2, 3x3), with 2.25x fewer multiplications: winograd.py, and _uses_winograd for
where it measured faster.

Backward, per chunk. A stride-1 convolution's dx is itself a convolution, of the output
gradient with the kernel flipped: im2col of dout, one GEMM; and the same columns give dW
(_transposed_by_flipped_kernel), so x needs no second im2col. Otherwise (and for an input of
few channels, an RGB image): dW += cols^T dout, dcols = dout W^T, and col2im adds dcols back
onto the input's pixels (one strided slice-add per kernel offset, no atomics). db sums the
output gradient's rows in short runs (_bias_grad).
"""
from autograd import Function, array_module, parallel
from autograd.backend import device_of

from . import winograd
from .scratch import buffer, pad
from .windows import output_size, pair, window_slices

CHUNK_BYTES = {"cpu": 4 * 2**20, "cuda": 512 * 2**20}  # column-buffer size per chunk
MIN_CHUNK_ROWS = 512  # but at least this many rows of columns per chunk (see _chunk_size)
BIAS_RUN_ROWS = 64  # db sums runs of this many rows in the gradient's dtype: see _bias_grad
WINOGRAD_MAX_PIXELS = 64  # 3x3 stride-1 convolutions of images this small: see _uses_winograd


def channels_last(x):
    """(N, C, H, W) -> a C-contiguous (N, H, W, C) array: a free view when x already has
    channels-last strides (the output of conv2d and of elementwise ops on it), else a copy."""
    return array_module(x).ascontiguousarray(x.transpose(0, 2, 3, 1))


def _windows(x_padded, kernel, stride, out_size):
    """Every filter window of x_padded (n, Hp, Wp, C) as a view (n, Ho, Wo, kh, kw, C):
    windows[n, p, q, i, j, c] = x_padded[n, sh*p + i, sw*q + j, c]. No data is copied."""
    xp = array_module(x_padded)
    (kh, kw), (sh, sw), (Ho, Wo) = kernel, stride, out_size
    n, _, _, C = x_padded.shape
    s_n, s_h, s_w, s_c = x_padded.strides
    return xp.lib.stride_tricks.as_strided(
        x_padded, (n, Ho, Wo, kh, kw, C), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))


class Conv2d(Function):
    """out[n, f, p, q] = bias[f] + sum_{c,i,j} W[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j].

    Input and output are NCHW-shaped; inside, rows r = (n, p, q) and columns k = (i, j, c):
        out(N*Ho*Wo, F) = cols(N*Ho*Wo, K) @ Wm(K, F),   Wm[(i, j, c), f] = W[f, c, i, j]
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0)):
        check_conv_inputs(x, weight, bias)
        N, C = x.shape[:2]
        F, _, kh, kw = weight.shape
        Ho, Wo = output_size("conv2d", x.shape[2:], (kh, kw), stride, padding)
        ctx.geometry = (kh, kw), stride, padding, (Ho, Wo)
        x_last = channels_last(x)                                    # (N, H, W, C)
        ctx.winograd = _uses_winograd(x_last, ctx.geometry)
        if ctx.winograd:  # keeps x's tiles, not x, for dW
            tiles = winograd.input_tiles(x_last)                     # (16, T, C)
            ctx.save_for_backward(tiles, weight)
            filters = winograd.filter_tiles(weight).transpose(0, 2, 1)   # (16, C, F)
            out = winograd.convolve(tiles, filters, x.shape[2:])
            if bias is not None:
                out += bias
            return out.transpose(0, 3, 1, 2)
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
        if ctx.winograd:
            return _winograd_backward(ctx, grad)
        x_last, w_rows = ctx.saved                                   # (N, H, W, C), (F, K)
        xp = array_module(grad)
        N, H, W, C = x_last.shape
        (kh, kw), stride, padding, (Ho, Wo) = ctx.geometry
        F = w_rows.shape[0]
        grad_rows = channels_last(grad).reshape(-1, F)               # (N*Ho*Wo, F)
        needs_x, needs_weight = ctx.needs_input_grad[:2]
        grad_x = grad_w_rows = grad_bias = None
        if kh == kw == 1 and padding == (0, 0):
            if needs_weight:  # (F, M) @ (M, C), each thread summing its rows
                rows = _strided_pixels(x_last, stride).reshape(-1, C)
                grad_w_rows = parallel.matmul_transposed(grad_rows, rows)
            if needs_x:
                grad_rows_x = parallel.matmul(grad_rows, w_rows).reshape(N, Ho, Wo, C)
                grad_x = grad_rows_x if stride == (1, 1) else \
                    _spread_pixels(grad_rows_x, (N, H, W, C), stride)
        else:
            ph, pw = padding
            grad_4d = grad_rows.reshape(N, Ho * Wo, F)
            # dx by the flipped kernel, and dW from the same columns; but not for an input of
            # few channels (C = 3: an RGB image), where both products would be thin, (M, 9F)
            # @ (9F, 3) and x^T @ columns: col2im is faster there, and dx then sums runs of F
            # values where the flipped kernel's product sums 9F (half the error, measured)
            by_flipped_kernel = needs_x and stride == (1, 1) and ph < kh and pw < kw and C >= 16
            shared = by_flipped_kernel and needs_weight
            if by_flipped_kernel:
                grad_x, grad_w_rows = _transposed_by_flipped_kernel(
                    grad_rows.reshape(N, Ho, Wo, F), w_rows, ctx.geometry,
                    x_last if shared else None)
            if needs_weight and not shared:
                def weight_grad(start, stop):  # the sum over images start..stop-1: (F, K)
                    cols = _columns(x_last, ctx.geometry, start, stop)
                    return grad_4d[start:stop].reshape(-1, F).T @ cols
                grad_w_rows = parallel.total(_for_chunks(weight_grad, x_last, ctx.geometry))
            if needs_x and not by_flipped_kernel:
                grad_padded = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=grad.dtype)

                def input_grad(start, stop):  # adds onto images start..stop-1 only
                    grad_cols = grad_4d[start:stop].reshape(-1, F) @ w_rows  # (n*Ho*Wo, K)
                    _col2im(grad_cols, grad_padded[start:stop], ctx.geometry)
                _for_chunks(input_grad, x_last, ctx.geometry)
                grad_x = grad_padded[:, ph:ph + H, pw:pw + W]
        grad_w = None
        if grad_w_rows is not None:  # (F, K) -> (F, C, kh, kw)
            grad_w = grad_w_rows.reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
            grad_w = grad_w if kh == kw == 1 else parallel.copy(grad_w)
        if grad_x is not None:
            grad_x = grad_x.transpose(0, 3, 1, 2)                    # (N, C, H, W) view
        if len(ctx.needs_input_grad) == 3 and ctx.needs_input_grad[2]:
            grad_bias = _bias_grad(grad_rows)
        return (grad_x, grad_w, grad_bias)[:len(ctx.needs_input_grad)]


def _winograd_backward(ctx, grad):
    """Conv2d.backward for a convolution that ran as winograd.py's: dx is the convolution of
    grad by the kernel flipped and its channels swapped, dW comes from x's saved tiles."""
    tiles, weight = ctx.saved                                        # (16, T, C), (F, C, 3, 3)
    grad_last = channels_last(grad)                                  # (N, H, W, F)
    grad_x = grad_w = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = winograd.convolve(winograd.input_tiles(grad_last),
                                   winograd.filter_tiles(weight, flipped=True),  # (16, F, C)
                                   grad.shape[2:]).transpose(0, 3, 1, 2)
    if ctx.needs_input_grad[1]:
        grad_w = winograd.weight_grad(tiles, grad_last)
    if len(ctx.needs_input_grad) == 3 and ctx.needs_input_grad[2]:
        grad_bias = _bias_grad(grad_last.reshape(-1, grad_last.shape[3]))
    return (grad_x, grad_w, grad_bias)[:len(ctx.needs_input_grad)]


def _bias_grad(grad_rows):
    """db[f] = sum_r grad_rows[r, f], the sum over the rows (N*Ho*Wo, F) of the output gradient.

    Summed as sum_p (1^T G_p)[f] over runs G_p of BIAS_RUN_ROWS rows: one batched product with
    a ones vector gives each run's (F,) sum in the gradient's dtype, and those P = M/run
    partial sums are added in float64 and rounded once. Each float32 sum then adds at most
    BIAS_RUN_ROWS values, where grad_rows.sum(axis=0) adds all M rows one after another, its
    rounding error growing with M (at 512 rows 4.6x PyTorch's; this, as PyTorch's). The
    product is also the fastest pass over the gradient (at 65536 rows, 0.4x the row-by-row
    sum's time), and the float64 additions are only M/run per channel."""
    xp = array_module(grad_rows)
    M, F = grad_rows.shape
    run = max(1, min(M, BIAS_RUN_ROWS))
    whole = M - M % run                                              # rows in whole runs
    ones = xp.ones(run, dtype=grad_rows.dtype)
    partial = xp.matmul(ones, grad_rows[:whole].reshape(-1, run, F))  # (P, F)
    total = partial.sum(axis=0, dtype=xp.float64)
    if whole < M:
        total += grad_rows[whole:].sum(axis=0, dtype=xp.float64)
    return total.astype(grad_rows.dtype)


def _uses_winograd(x_last, geometry):
    """Whether this convolution runs as winograd.py's F(2x2, 3x3): a 3x3 kernel, stride 1,
    padding 1, even H and W of at most WINOGRAD_MAX_PIXELS pixels, on the CPU. Measured
    against im2col (bench.pair, forward + backward, N = 64, 2 threads): 0.70x the time at 8x8
    and 0.61x at 4x4 (ResNet-50's last two stages, 256 and 512 channels). At 16x16
    it measured 0.89x, but only by keeping x's tiles (4x the size of x) from the forward pass
    to the backward: ResNet-18's peak memory at 64 images rose from 1104 to 1402 MiB, over
    PyTorch's 1378, and recomputing them instead made it 1.03x. At 32x32 with 64 channels it
    was 1.06x (its 16 products over only 64 channels run at a lower rate than im2col's one
    over 576), with 3 channels 2x. On the GPU it is unmeasured, so im2col runs there."""
    (kh, kw), stride, padding, _ = geometry
    H, W = x_last.shape[1:3]
    return ((kh, kw) == (3, 3) and stride == (1, 1) and padding == (1, 1) and H % 2 == 0
            and W % 2 == 0 and H * W <= WINOGRAD_MAX_PIXELS and device_of(x_last) == "cpu")


def _convolve(x_last, w_matrix, geometry):
    """The convolution of channels-last x_last (N, H, W, C) by the (K, F) weight matrix:
    (N, Ho, Wo, F), one GEMM per chunk of images (none but one GEMM for a 1x1 kernel)."""
    xp = array_module(x_last)
    (kh, kw), stride, padding, (Ho, Wo) = geometry
    N, C, F = x_last.shape[0], x_last.shape[3], w_matrix.shape[1]
    out = xp.empty((N, Ho, Wo, F), dtype=x_last.dtype)
    if kh == kw == 1 and padding == (0, 0):  # no windows overlap: the input is the columns
        rows = _strided_pixels(x_last, stride).reshape(-1, C)
        parallel.matmul(rows, w_matrix, out.reshape(-1, F))
    else:
        def convolve_chunk(start, stop):
            cols = _columns(x_last, geometry, start, stop)
            xp.matmul(cols, w_matrix, out=out[start:stop].reshape(-1, F))
        _for_chunks(convolve_chunk, x_last, geometry)
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
    xp = array_module(grad_strided)
    grad = xp.empty(shape, dtype=grad_strided.dtype)

    def fill(start, stop):
        grad[start:stop] = 0
        grad[start:stop, ::stride[0], ::stride[1]] = grad_strided[start:stop]
    parallel.for_rows(fill, shape[0], grad[:1].nbytes, grad)
    return grad


def _transposed_by_flipped_kernel(grad_last, w_rows, geometry, x_last=None):
    """dx for a stride-1 convolution: itself a convolution of the output gradient; and, when
    x_last is given, dW from the same column matrix. Returns dx (N, H, W, C) and dW as an
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
    xp = array_module(grad_last)
    (kh, kw), _, (ph, pw), _ = geometry
    N, Ho, Wo, F = grad_last.shape
    C = w_rows.shape[1] // (kh * kw)
    flipped = w_rows.reshape(F, kh, kw, C)[:, ::-1, ::-1].transpose(1, 2, 0, 3)  # (kh, kw, F, C)
    flipped = parallel.copy(flipped).reshape(kh * kw * F, C)
    H, W = Ho + kh - 1 - 2 * ph, Wo + kw - 1 - 2 * pw
    flipped_geometry = ((kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), (H, W))
    grad_x = xp.empty((N, H, W, C), dtype=grad_last.dtype)

    def chunk(start, stop):
        cols = _columns(grad_last, flipped_geometry, start, stop)  # (n*H*W, kh*kw*F)
        xp.matmul(cols, flipped, out=grad_x[start:stop].reshape(-1, C))
        if x_last is not None:  # (kh*kw*F, C), summed over these images' pixels
            return cols.T @ x_last[start:stop].reshape(-1, C)
    parts = _for_chunks(chunk, grad_last, flipped_geometry)
    if x_last is None:
        return grad_x, None
    grad_w = parallel.total(parts).reshape(kh, kw, F, C)[::-1, ::-1]  # (i, j, F, C)
    return grad_x, grad_w.transpose(2, 0, 1, 3)                         # (F, i, j, C) view


def _chunk_size(x_last, geometry):
    """(images per chunk, fewest images per chunk, bytes of one image's columns).

    As many images as fit in CHUNK_BYTES, but enough for MIN_CHUNK_ROWS rows of columns: each
    chunk's product packs the whole weight matrix into BLAS's buffers again, and at the last
    stages (an image is 16-64 rows there, the weights up to 9 MiB) chunks of a few images
    spent more time packing than multiplying. Never more images than leave every thread one."""
    (kh, kw), _, _, (Ho, Wo) = geometry
    N = x_last.shape[0]
    per_image = Ho * Wo * kh * kw * x_last.shape[3] * x_last.itemsize
    threads = parallel.get_num_threads() if device_of(x_last) == "cpu" else 1
    fewest = min(-(-MIN_CHUNK_ROWS // (Ho * Wo)), -(-N // threads))
    chunk = max(1, fewest, min(N, CHUNK_BYTES[device_of(x_last)] // per_image))
    return chunk, max(1, fewest, chunk // 4), per_image


def _for_chunks(fn, x_last, geometry):
    """[fn(start, stop) for each chunk of images start..stop-1], in order; on the CPU the
    threads take the chunks one by one as they come free (autograd.parallel.map_ranges), the
    last chunks smaller (down to a quarter, or the fewest images of _chunk_size), so that the
    threads finish together."""
    N = x_last.shape[0]
    chunk, fewest, per_image = _chunk_size(x_last, geometry)
    threads = parallel.get_num_threads() if device_of(x_last) == "cpu" else 1
    chunks = parallel.shrinking_ranges(N, chunk, threads, smallest=fewest)
    return parallel.map_ranges(fn, chunks, N * per_image, x_last)


def _columns(x_last, geometry, start, stop):
    """The column matrix (n*Ho*Wo, K) of images start..stop-1, in a buffer that this thread
    reuses for its next chunk: the windows of the padded images, copied once (im2col)."""
    xp = array_module(x_last)
    kernel, stride, padding, (Ho, Wo) = geometry
    K = kernel[0] * kernel[1] * x_last.shape[3]
    chunk = _chunk_size(x_last, geometry)[0]
    cols = buffer("columns", xp, (chunk * Ho * Wo, K), x_last.dtype)[:(stop - start) * Ho * Wo]
    windows = _windows(pad(x_last[start:stop], padding, chunk), kernel, stride, (Ho, Wo))
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


def check_conv_inputs(x, weight, bias):
    if x.ndim != 4:
        raise ValueError(f"conv2d expects input of shape (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d expects weight of shape (F, C, kh, kw), got shape "
                         f"{weight.shape}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: input {x.shape} has {x.shape[1]} channels but weight "
                         f"{weight.shape} (F, C, kh, kw) expects {weight.shape[1]}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"conv2d: bias must have shape {weight.shape[:1]} (one value per "
                         f"filter of weight {weight.shape}), got shape {bias.shape}")
    for name, array in (("weight", weight), ("bias", bias)):
        if array is not None and array.dtype != x.dtype:
            raise TypeError(f"conv2d: input has dtype {x.dtype} but {name} has dtype "
                            f"{array.dtype}; convert one (tensor.to(dtype=...)) so they match")


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d).

    x (N, C, H, W), weight (F, C, kh, kw), bias (F,) or None -> (N, F, Ho, Wo), where
    out[n, f, p, q] = bias[f] + sum_{c,i,j} weight[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j],
    x_padded is x with `padding` zeros on each side, and Ho = (H + 2 ph - kh) // sh + 1
    (likewise Wo). stride and padding are ints or (h, w) pairs. The output has channels-last
    strides (see the module docstring); its values do not depend on that.
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return Conv2d.apply(*tensors, stride=pair(stride, "conv2d: stride", 1),
                        padding=pair(padding, "conv2d: padding", 0))
