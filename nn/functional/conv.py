"""2-D convolution: the math, the reference implementation, and which kernel runs.

A convolution (a cross-correlation, as in every deep-learning library) slides F filters of
shape (C, kh, kw) over the zero-padded input x_padded (N, C, H + 2 ph, W + 2 pw):

    out[n, f, p, q] = bias[f] + sum_{c,i,j} W[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j]

with Ho = (H + 2 ph - kh) // sh + 1 output rows (likewise Wo). Copying what the filter sees
at every output position into a column ("im2col") turns all of its dot products into one
matrix product; k = (c, i, j) runs over the C*kh*kw entries of a window:

    cols[n, k, (p, q)] = x_padded[n, c, sh*p + i, sw*q + j]          (N, C*kh*kw, Ho*Wo)
    out[n]             = W (F, C*kh*kw) @ cols[n] + bias             (N, F, Ho*Wo): NCHW

Backward is two more products and the adjoint of im2col, which adds every column entry back
onto the pixel it was copied from:

    dW    = sum_n dout[n] @ cols[n]^T            (F, C*kh*kw)
    db    = sum_{n,p,q} dout[n, :, p, q]         (F,)
    dcols = W^T @ dout                           (N, C*kh*kw, Ho*Wo)
    dx    = col2im(dcols), with the padding cut off

Which implementation runs (`implementation`, nn/functional/dispatch.py):
- Conv2dReference, below: exactly the formulas above, in NCHW order, inside use_reference().
  The tests hold every kernel to it.
- on a GPU, cuda/conv.py's Conv2dCuda: the same im2col + GEMM in channels-last memory, with
  im2col and col2im as one kernel each and the products by cuBLAS.
- on the CPU, cpu/winograd.py for the 3x3, stride-1, padding-1 convolutions of small even
  images (ResNet's last two stages): Winograd's F(2x2, 3x3), 2.25x fewer multiplications;
- otherwise cpu/conv.py: im2col + GEMM in channels-last memory, in chunks of images spread
  over the threads, with a cheaper backward where the algebra allows (read its docstring).
"""
from autograd import Function, array_module

from .cpu.conv import Conv2dGemm
from .cpu.winograd import Conv2dWinograd
from .cuda.conv import Conv2dCuda
from .dispatch import on_gpu, reference, reference_chosen
from .windows import check_conv_inputs, crop2d, output_size, pad2d, pair, window_slices

WINOGRAD_MAX_PIXELS = 64  # 3x3 stride-1 convolutions of images this small: see implementation


def im2col(x_padded, kh, kw, stride, Ho, Wo):
    """The column matrix of x_padded (N, C, Hp, Wp): (N, C*kh*kw, Ho*Wo), with
    cols[n, (c, i, j), (p, q)] = x_padded[n, c, sh*p + i, sw*q + j].

    One strided slice copy per kernel offset (kh*kw copies of N*C*Ho*Wo values each) into one
    preallocated buffer: no loop over pixels, and the same code runs on CuPy."""
    # course: begin im2col
    xp = array_module(x_padded)
    N, C = x_padded.shape[:2]
    cols = xp.empty((N, C, kh, kw, Ho, Wo), dtype=x_padded.dtype)
    for i, j, window in window_slices((kh, kw), stride, (Ho, Wo)):
        cols[:, :, i, j] = x_padded[window]
    return cols.reshape(N, C * kh * kw, Ho * Wo)  # a view: the buffer is contiguous
    # course: end im2col


def col2im(cols, padded_shape, kh, kw, stride, Ho, Wo):
    """The adjoint of im2col: add every column entry back onto the pixel it was copied from.

    cols (N, C*kh*kw, Ho*Wo) -> (N, C, Hp, Wp). Where windows overlap (stride < kernel) a
    pixel receives several entries; one strided slice-add per kernel offset sums them, and
    within one offset the slice holds each pixel at most once, so no atomics are needed."""
    # course: begin col2im
    xp = array_module(cols)
    N, C = padded_shape[:2]
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    x_padded = xp.zeros(padded_shape, dtype=cols.dtype)
    for i, j, window in window_slices((kh, kw), stride, (Ho, Wo)):
        x_padded[window] += cols[:, :, i, j]
    return x_padded
    # course: end col2im


class Conv2dReference(Function):
    """out[n, f, p, q] = bias[f] + sum_{c,i,j} W[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j],
    computed as W (F, C*kh*kw) @ im2col(x) (N, C*kh*kw, Ho*Wo) in NCHW order.

    The reference the kernels are held to (conv2d runs it inside use_reference(), or call
    Conv2dReference.apply(x, w, stride=(1, 1), padding=(0, 0)) yourself). Backward rebuilds
    the columns from x instead of saving them: they are kh*kw times the size of x, while x
    itself is kept alive by the graph anyway.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0)):
        check_conv_inputs(x, weight, bias)
        kernel = weight.shape[2:]
        ctx.geometry = kernel, stride, padding, output_size("conv2d", x.shape[2:], kernel,
                                                            stride, padding)
        ctx.save_for_backward(x, weight)
        N, F, (Ho, Wo) = x.shape[0], weight.shape[0], ctx.geometry[3]
        # (F, C*kh*kw) @ (N, C*kh*kw, Ho*Wo) -> (N, F, Ho*Wo)
        out = weight.reshape(F, -1) @ _columns(x, ctx)
        if bias is not None:
            out += bias[:, None]
        return out.reshape(N, F, Ho, Wo)

    @staticmethod
    def backward(ctx, grad):
        # course: begin conv2d-backward
        x, weight = ctx.saved
        xp = array_module(grad)
        N, F = grad.shape[:2]
        grad = grad.reshape(N, F, -1)  # (N, F, Ho, Wo) -> (N, F, Ho*Wo)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # (C*kh*kw, F) @ (N, F, Ho*Wo) -> (N, C*kh*kw, Ho*Wo)
            grad_x = _image(weight.reshape(F, -1).T @ grad, x.shape, ctx)
        if ctx.needs_input_grad[1]:
            # contracts n and (p, q) at once: one (F, N*Ho*Wo) @ (N*Ho*Wo, C*kh*kw) GEMM whose
            # temporaries are the size of grad and cols, never an (N, F, C*kh*kw) stack
            grad_weight = xp.tensordot(grad, _columns(x, ctx), axes=((0, 2), (0, 2)))
            grad_weight = grad_weight.reshape(weight.shape)
        if len(ctx.needs_input_grad) == 2:
            return grad_x, grad_weight
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(axis=(0, 2))
        return grad_x, grad_weight, grad_bias
        # course: end conv2d-backward


def _columns(x, ctx):
    """x (N, C, H, W) -> its column matrix (N, C*kh*kw, Ho*Wo)."""
    (kh, kw), stride, padding, (Ho, Wo) = ctx.geometry
    return im2col(pad2d(x, padding), kh, kw, stride, Ho, Wo)


def _image(cols, x_shape, ctx):
    """The adjoint of _columns: (N, C*kh*kw, Ho*Wo) -> (N, C, H, W)."""
    (kh, kw), stride, (ph, pw), (Ho, Wo) = ctx.geometry
    N, C, H, W = x_shape
    x_padded = col2im(cols, (N, C, H + 2 * ph, W + 2 * pw), kh, kw, stride, Ho, Wo)
    return crop2d(x_padded, (ph, pw))


def implementation(x, weight, stride, padding):
    """The Function that computes this convolution (see the module docstring).

    On the CPU, Winograd takes the 3x3 convolutions of images of at most WINOGRAD_MAX_PIXELS
    pixels. There its 16 products over the channels are large and its 2.25x fewer
    multiplications win. On larger images it would have to keep x's tiles (4 times the size of
    x) from the forward pass to the backward to win at all, which costs more memory than it
    saves time, and with few channels its 16 small products run slower than im2col's one
    product over 9 times as many columns. (The measurements: bench/HISTORY.md.)"""
    if reference_chosen():
        return reference("conv2d", Conv2dReference)
    if on_gpu(x):
        return Conv2dCuda
    if getattr(x, "ndim", None) != 4 or getattr(weight, "ndim", None) != 4:
        return Conv2dGemm  # whose forward says what is wrong with the shapes
    H, W = x.shape[2:]
    if (weight.shape[2:] == (3, 3) and stride == (1, 1) and padding == (1, 1) and H % 2 == 0
            and W % 2 == 0 and H * W <= WINOGRAD_MAX_PIXELS):
        return Conv2dWinograd
    return Conv2dGemm


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d).

    x (N, C, H, W), weight (F, C, kh, kw), bias (F,) or None -> (N, F, Ho, Wo), where
    out[n, f, p, q] = bias[f] + sum_{c,i,j} weight[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j],
    x_padded is x with `padding` zeros on each side, and Ho = (H + 2 ph - kh) // sh + 1
    (likewise Wo). stride and padding are ints or (h, w) pairs. The output of the kernels has
    channels-last strides (cpu/conv.py, cuda/conv.py); its values do not depend on that.
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    stride = pair(stride, "conv2d: stride", 1)
    padding = pair(padding, "conv2d: padding", 0)
    return implementation(x, weight, stride, padding).apply(*tensors, stride=stride,
                                                            padding=padding)
