"""Max pooling on the GPU: a running maximum over the window offsets, in channels-last memory.

The math and the reference are in nn/functional/pooling.py (read that first). This is the
CPU kernel's algorithm (cpu/pooling.py) on CuPy's operations, over the whole batch at once:
each window offset (i, j) is one strided view of every window, compared with the maximum so
far (a few launches per offset, nine offsets for a 3x3 window), where the reference stacks
all kh*kw views into one array first.
"""
from autograd import Function, array_module

from ..windows import (check_pool_window, crop2d, offsets_to_last_nan, running_maximum,
                       window_slices)


class MaxPool2dCuda(Function):
    """max_pool2d as MaxPool2dReference computes it (nn/functional/pooling.py), without
    stacking the windows: a running maximum and the offset that holds it. NaN wins, as in
    PyTorch: it reaches the output, and a window's gradient goes to its last NaN. The arrays
    are (N, C, H, W)-shaped views of channels-last memory, the layout of conv2d's output."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out_size = check_pool_window("max_pool2d", x, kernel_size, stride, padding)
        xp = array_module(x)
        N, C, H, W = x.shape
        ph, pw = padding
        padded = x
        if ph or pw:  # -inf around x
            padded = _empty_channels_last(xp, (N, C, H + 2 * ph, W + 2 * pw), x.dtype)
            for border in (padded[:, :, :ph], padded[:, :, ph + H:],
                           padded[:, :, :, :pw], padded[:, :, :, pw + W:]):
                border[...] = -xp.inf
            padded[:, :, ph:ph + H, pw:pw + W] = x
        best = _empty_channels_last(xp, (N, C) + out_size, x.dtype)
        # which kernel offset i*kw + j holds the maximum so far (one byte suffices up to 16x16)
        offsets = kernel_size[0] * kernel_size[1]
        argmax = _empty_channels_last(xp, best.shape, xp.uint8 if offsets <= 256 else xp.int32)
        running_maximum(padded, best, argmax, kernel_size, stride, out_size)
        # always redone: asking whether there is a NaN at all would make the host wait
        offsets_to_last_nan(padded, xp.isnan(best), argmax, kernel_size, stride, out_size)
        ctx.geometry = kernel_size, stride, padding, out_size
        ctx.padded_shape = padded.shape
        ctx.save_for_backward(argmax)
        return best

    @staticmethod
    def backward(ctx, grad):
        (argmax,) = ctx.saved
        kernel, stride, padding, out_size = ctx.geometry
        xp = array_module(grad)
        grad_padded = _empty_channels_last(xp, ctx.padded_shape, grad.dtype)
        grad_padded[...] = 0
        for i, j, window in window_slices(kernel, stride, out_size):
            grad_padded[window] += grad * (argmax == i * kernel[1] + j)
        return crop2d(grad_padded, padding)


def _empty_channels_last(xp, shape, dtype):
    """An uninitialised (N, C, H, W)-shaped array whose memory is (N, H, W, C)."""
    N, C, H, W = shape
    return xp.empty((N, H, W, C), dtype=dtype).transpose(0, 3, 1, 2)
