"""The reference convolution: im2col, one matrix product, and col2im for the way back.

This is the readable version, in PyTorch's NCHW layout; conv.py holds the one that runs (the
same algorithm in channels-last memory, in chunks), which the tests check against this one.

A convolution slides a (C, kh, kw) filter over the zero-padded input. Copying what the
filter sees at every output position into a column ("im2col") turns all of the dot products
into one matrix product; k = (c, i, j) runs over the C*kh*kw entries of a window:

    cols[n, k, (p, q)] = x_padded[n, c, sh*p + i, sw*q + j]
    out[n, f, (p, q)]  = bias[f] + sum_k W[f, k] cols[n, k, (p, q)]

With cols laid out as (N, C*kh*kw, Ho*Wo), W (F, C*kh*kw) @ cols is (N, F, Ho*Wo), which is
already NCHW: no transpose of the (large) output. Backward is two more products and the
adjoint of im2col:

    dW    = sum_n dout[n] @ cols[n]^T            (F, C*kh*kw)
    dcols = W^T @ dout                           (N, C*kh*kw, Ho*Wo)
    dx    = col2im(dcols), with the padding cut off

"""
from autograd import Function, array_module

from .conv import check_conv_inputs
from .windows import crop2d, output_size, pad2d, window_slices

def im2col(x_padded, kh, kw, stride, Ho, Wo):
    """The column matrix of x_padded (N, C, Hp, Wp): (N, C*kh*kw, Ho*Wo), with
    cols[n, (c, i, j), (p, q)] = x_padded[n, c, sh*p + i, sw*q + j].

    One strided slice copy per kernel offset (kh*kw copies of N*C*Ho*Wo values each) into one
    preallocated buffer: no loop over pixels, and the same code runs on CuPy."""
    xp = array_module(x_padded)
    N, C = x_padded.shape[:2]
    cols = xp.empty((N, C, kh, kw, Ho, Wo), dtype=x_padded.dtype)
    for i, j, window in window_slices((kh, kw), stride, (Ho, Wo)):
        cols[:, :, i, j] = x_padded[window]
    return cols.reshape(N, C * kh * kw, Ho * Wo)  # a view: the buffer is contiguous


def col2im(cols, padded_shape, kh, kw, stride, Ho, Wo):
    """The adjoint of im2col: add every column entry back onto the pixel it was copied from.

    cols (N, C*kh*kw, Ho*Wo) -> (N, C, Hp, Wp). Where windows overlap (stride < kernel) a
    pixel receives several entries; one strided slice-add per kernel offset sums them, and
    within one offset the slice holds each pixel at most once, so no atomics are needed."""
    xp = array_module(cols)
    N, C = padded_shape[:2]
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    x_padded = xp.zeros(padded_shape, dtype=cols.dtype)
    for i, j, window in window_slices((kh, kw), stride, (Ho, Wo)):
        x_padded[window] += cols[:, :, i, j]
    return x_padded


class Conv2dIm2col(Function):
    """out[n, f, p, q] = bias[f] + sum_{c,i,j} W[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j],
    computed as W (F, C*kh*kw) @ im2col(x) (N, C*kh*kw, Ho*Wo) in NCHW order.

    The reference for conv.Conv2d (use: Conv2dIm2col.apply(x, w, stride=(1, 1), padding=(0, 0))).
    Backward rebuilds the columns from x instead of saving them: they are kh*kw times the size
    of x, while x itself is kept alive by the graph anyway.
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
