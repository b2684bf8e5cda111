"""2-D convolution as one matrix product: im2col, a GEMM, and col2im for the way back.

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

The window helpers here (pair, output_size, window_slices, pad2d, crop2d) serve pooling too.
"""
from numbers import Integral

from autograd import Function, array_module


def pair(value, name, minimum):
    """An int or an (h, w) pair of ints, each >= minimum -> an (h, w) tuple of ints."""
    values = (value, value) if isinstance(value, Integral) else value
    if not (isinstance(values, (tuple, list)) and len(values) == 2
            and all(isinstance(v, Integral) for v in values)):
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(values) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(values[0]), int(values[1])


def output_size(op, in_size, kernel, stride, padding):
    """(Ho, Wo): how many windows of `kernel` fit, `stride` apart, in the padded input.

    Ho = floor((H + 2 ph - kh) / sh) + 1, and likewise for the width."""
    (H, W), (kh, kw), (sh, sw), (ph, pw) = in_size, kernel, stride, padding
    padded = (H + 2 * ph, W + 2 * pw)
    if padded[0] < kh or padded[1] < kw:
        raise ValueError(f"{op}: kernel {(kh, kw)} is larger than the padded input {padded} "
                         f"(input {(H, W)} plus padding {(ph, pw)} on each side)")
    return (padded[0] - kh) // sh + 1, (padded[1] - kw) // sw + 1


def window_slices(kernel, stride, out_size):
    """For each kernel offset (i, j), the index of the (Ho, Wo) grid of padded-input pixels
    that this offset of the window touches: x_padded[..., sh*p + i, sw*q + j]."""
    (kh, kw), (sh, sw), (Ho, Wo) = kernel, stride, out_size
    for i in range(kh):
        for j in range(kw):
            yield i, j, (Ellipsis, slice(i, i + sh * (Ho - 1) + 1, sh),
                         slice(j, j + sw * (Wo - 1) + 1, sw))


def pad2d(x, padding, value=0):
    """x (N, C, H, W) with `value` added around the last two axes: (N, C, H+2ph, W+2pw)."""
    ph, pw = padding
    if ph == pw == 0:
        return x
    xp = array_module(x)
    N, C, H, W = x.shape
    x_padded = xp.full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype)
    x_padded[:, :, ph:ph + H, pw:pw + W] = x
    return x_padded


def crop2d(x_padded, padding):
    """The inverse of pad2d: (N, C, H+2ph, W+2pw) -> (N, C, H, W)."""
    ph, pw = padding
    Hp, Wp = x_padded.shape[2:]
    return x_padded[:, :, ph:Hp - ph, pw:Wp - pw]


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


def _check_inputs(x, weight, bias):
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


class Conv2d(Function):
    """out[n, f, p, q] = bias[f] + sum_{c,i,j} W[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j].

    Two paths, chosen in forward. A 1x1 kernel with stride 1 and no padding reads x itself as
    the column matrix (x.reshape(N, C, H*W)), so it needs no im2col (ResNet-50 is mostly 1x1
    convolutions). Every other convolution goes through im2col. `force_im2col=True` takes the
    im2col path for those 1x1 convolutions too: the reference the fast path is tested against.

    Backward rebuilds the columns from x instead of saving them: they are kh*kw times the size
    of x, while x itself is kept alive by the graph anyway.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0), force_im2col=False):
        _check_inputs(x, weight, bias)
        kernel = weight.shape[2:]
        ctx.geometry = kernel, stride, padding, output_size("conv2d", x.shape[2:], kernel,
                                                            stride, padding)
        ctx.fast = kernel == (1, 1) and stride == (1, 1) and padding == (0, 0) and not force_im2col
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
    if ctx.fast:
        return x.reshape(x.shape[0], x.shape[1], -1)
    (kh, kw), stride, padding, (Ho, Wo) = ctx.geometry
    return im2col(pad2d(x, padding), kh, kw, stride, Ho, Wo)


def _image(cols, x_shape, ctx):
    """The adjoint of _columns: (N, C*kh*kw, Ho*Wo) -> (N, C, H, W)."""
    if ctx.fast:
        return cols.reshape(x_shape)
    (kh, kw), stride, (ph, pw), (Ho, Wo) = ctx.geometry
    N, C, H, W = x_shape
    x_padded = col2im(cols, (N, C, H + 2 * ph, W + 2 * pw), kh, kw, stride, Ho, Wo)
    return crop2d(x_padded, (ph, pw))


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d).

    x (N, C, H, W), weight (F, C, kh, kw), bias (F,) or None -> (N, F, Ho, Wo), where
    out[n, f, p, q] = bias[f] + sum_{c,i,j} weight[f, c, i, j] x_padded[n, c, sh*p + i, sw*q + j],
    x_padded is x with `padding` zeros on each side, and Ho = (H + 2 ph - kh) // sh + 1
    (likewise Wo). stride and padding are ints or (h, w) pairs.
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return Conv2d.apply(*tensors, stride=pair(stride, "conv2d: stride", 1),
                        padding=pair(padding, "conv2d: padding", 0))
