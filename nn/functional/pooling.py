"""Pooling over 2-D windows (NCHW): the maximum or the mean of each kh x kw window.

Both window ops visit a window with kh*kw strided slices, one per kernel offset (i, j), each
a (N, C, Ho, Wo) view x_padded[..., sh*p + i, sw*q + j] of every window at once (see
windows.window_slices): no loop over pixels, and the same code runs on CuPy. Window geometry
follows PyTorch: stride defaults to the kernel size, the output size rounds down, and the
padding may be at most half the kernel.
"""
from autograd import Function, array_module, parallel

from .windows import crop2d, output_size, pad2d, pair, window_slices


def _geometry(op, x, kernel, stride, padding):
    """Check x and the window settings; return the output size (Ho, Wo)."""
    if x.ndim != 4:
        raise ValueError(f"{op} expects input of shape (N, C, H, W), got shape {x.shape}")
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"{op}: padding {padding} must be at most half of kernel_size "
                         f"{kernel} (as in PyTorch)")
    return output_size(op, x.shape[2:], kernel, stride, padding)


class MaxPool2d(Function):
    """out[n, c, p, q] = max_{i,j} x_padded[n, c, sh*p + i, sw*q + j], padded with -inf.

    The gradient of a window goes to its argmax alone: on ties, to the first maximum in
    row-major window order (as PyTorch). Overlapping windows (kernel 3, stride 2) may pick
    the same pixel, which then receives the sum of their gradients.

    The arrays are (N, C, H, W)-shaped views of channels-last memory, the layout of conv2d's
    output that this op follows in a ResNet: a window offset's view then runs over the C
    channels of a pixel contiguously, where in NCHW memory its stride-2 pixels have no two
    values side by side. The images are split over the threads (autograd.parallel).
    """

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out_size = _geometry("max_pool2d", x, kernel_size, stride, padding)
        xp = array_module(x)
        N, C, H, W = x.shape
        (ph, pw), kw = padding, kernel_size[1]
        x_padded = _empty_channels_last(xp, (N, C, H + 2 * ph, W + 2 * pw), x.dtype) if ph or pw else x
        out = _empty_channels_last(xp, (N, C) + out_size, x.dtype)
        # which kernel offset i*kw + j holds the maximum so far (one byte suffices up to 16x16)
        offsets = kernel_size[0] * kernel_size[1]
        argmax = _empty_channels_last(xp, out.shape, xp.uint8 if offsets <= 256 else xp.int32)

        def pool(start, stop):  # images start..stop-1
            padded = x_padded[start:stop]
            if ph or pw:  # -inf around x
                for border in (padded[:, :, :ph], padded[:, :, ph + H:],
                               padded[:, :, :, :pw], padded[:, :, :, pw + W:]):
                    border[...] = -xp.inf
                padded[:, :, ph:ph + H, pw:pw + W] = x[start:stop]
            windows = window_slices(kernel_size, stride, out_size)
            best, best_offset = out[start:stop], argmax[start:stop]
            best[...] = padded[next(windows)[2]]                     # offset (0, 0)
            best_offset[...] = 0
            for i, j, window in windows:
                candidate = padded[window]
                # strict >: a later equal value leaves the first maximum in place
                xp.copyto(best_offset, i * kw + j, where=candidate > best)
                xp.maximum(best, candidate, out=best)  # NaN wins: it reaches the output
            nan = xp.isnan(best)
            if nan.any():  # a NaN's window sends its gradient to its last NaN, as PyTorch
                for i, j, window in window_slices(kernel_size, stride, out_size):
                    xp.copyto(best_offset, i * kw + j, where=nan & xp.isnan(padded[window]))
        parallel.for_rows(pool, N, x_padded[:1].nbytes, x)
        ctx.geometry = kernel_size, stride, padding, out_size
        ctx.padded_shape = x_padded.shape
        ctx.save_for_backward(argmax)
        return out

    @staticmethod
    def backward(ctx, grad):
        (argmax,) = ctx.saved
        kernel, stride, padding, out_size = ctx.geometry
        xp = array_module(grad)
        grad_padded = _empty_channels_last(xp, ctx.padded_shape, grad.dtype)

        def unpool(start, stop):  # images start..stop-1
            grad_part, offsets_part = grad[start:stop], argmax[start:stop]
            part = grad_padded[start:stop]
            part[...] = 0
            for i, j, window in window_slices(kernel, stride, out_size):
                part[window] += grad_part * (offsets_part == i * kernel[1] + j)
        parallel.for_rows(unpool, grad.shape[0], grad_padded[:1].nbytes, grad)
        return crop2d(grad_padded, padding)


def _empty_channels_last(xp, shape, dtype):
    """An uninitialised (N, C, H, W)-shaped array whose memory is (N, H, W, C)."""
    N, C, H, W = shape
    return xp.empty((N, H, W, C), dtype=dtype).transpose(0, 3, 1, 2)


class AvgPool2d(Function):
    """out[n, c, p, q] = sum_{i,j} x_padded[n, c, sh*p + i, sw*q + j] / (kh*kw), zero padding
    counted in the mean (count_include_pad=True, PyTorch's default). Every pixel of a window
    receives 1/(kh*kw) of the window's gradient."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out_size = _geometry("avg_pool2d", x, kernel_size, stride, padding)
        xp = array_module(x)
        x_padded = pad2d(x, padding)
        out = xp.zeros(x.shape[:2] + out_size, dtype=x.dtype)
        for _, _, window in window_slices(kernel_size, stride, out_size):
            out += x_padded[window]
        out /= kernel_size[0] * kernel_size[1]
        ctx.geometry = kernel_size, stride, padding, out_size
        ctx.padded_shape = x_padded.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        kernel, stride, padding, out_size = ctx.geometry
        xp = array_module(grad)
        share = grad / (kernel[0] * kernel[1])  # (N, C, Ho, Wo): what each window pixel gets
        grad_padded = xp.zeros(ctx.padded_shape, dtype=grad.dtype)
        for _, _, window in window_slices(kernel, stride, out_size):
            grad_padded[window] += share
        return crop2d(grad_padded, padding)


def _window_settings(op, kernel_size, stride, padding):
    kernel = pair(kernel_size, f"{op}: kernel_size", 1)
    stride = kernel if stride is None else pair(stride, f"{op}: stride", 1)
    return dict(kernel_size=kernel, stride=stride, padding=pair(padding, f"{op}: padding", 0))


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """The maximum of each window, as torch.nn.functional.max_pool2d (floor mode).

    x (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H + 2 ph - kh) // sh + 1 (likewise Wo);
    out[n, c, p, q] = max_{i<kh, j<kw} x_padded[n, c, sh*p + i, sw*q + j], x padded with -inf.
    kernel_size, stride (default: kernel_size) and padding (at most kernel_size / 2) are ints
    or (h, w) pairs.
    """
    return MaxPool2d.apply(x, **_window_settings("max_pool2d", kernel_size, stride, padding))


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """The mean of each window, as torch.nn.functional.avg_pool2d (floor mode,
    count_include_pad=True).

    x (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H + 2 ph - kh) // sh + 1 (likewise Wo);
    out[n, c, p, q] = (1 / (kh*kw)) sum_{i<kh, j<kw} x_padded[n, c, sh*p + i, sw*q + j], x padded
    with zeros. kernel_size, stride (default: kernel_size) and padding (at most kernel_size / 2)
    are ints or (h, w) pairs.
    """
    return AvgPool2d.apply(x, **_window_settings("avg_pool2d", kernel_size, stride, padding))


def adaptive_avg_pool2d(x, output_size):
    """The mean over each image: (N, C, H, W) -> (N, C, 1, 1), out[n, c] = mean_{h,w} x[n, c, h, w].

    Only output_size 1 (or (1, 1)), ResNet's global average pool, is supported."""
    if output_size not in (1, (1, 1), [1, 1]):
        raise NotImplementedError(f"adaptive_avg_pool2d supports only output_size 1 or (1, 1) "
                                  f"(global average pooling), got {output_size!r}")
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d expects input of shape (N, C, H, W), got shape "
                         f"{x.shape}")
    return x.mean(axis=(2, 3), keepdims=True)
