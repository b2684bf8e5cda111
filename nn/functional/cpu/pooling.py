"""Max pooling as it runs on the CPU: channels-last memory, the images split over the threads.

The math and the reference are in nn/functional/pooling.py (read that first).
"""
import numpy

from autograd import Function
from nn.runtime.threads import for_pieces

from ..windows import (check_pool_window, crop2d, offsets_to_last_nan, running_maximum,
                       window_slices)


class MaxPool2dChannelsLast(Function):
    """max_pool2d as MaxPool2dReference computes it (nn/functional/pooling.py), in the
    memory a ResNet hands it, without stacking the windows: a running maximum and the offset
    that holds it, one window offset at a time. NaN wins, as in PyTorch: it reaches the
    output, and a window's gradient goes to its last NaN.

    The arrays are (N, C, H, W)-shaped views of channels-last memory, the layout of conv2d's
    output that this op follows in a ResNet: a window offset's view then runs over the C
    channels of a pixel contiguously, where in NCHW memory its stride-2 pixels have no two
    values side by side. The images are split over the threads (nn/runtime/threads.py).
    """

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out_size = check_pool_window("max_pool2d", x, kernel_size, stride, padding)
        N, C, H, W = x.shape
        ph, pw = padding
        x_padded = (_empty_channels_last((N, C, H + 2 * ph, W + 2 * pw), x.dtype)
                    if ph or pw else x)
        out = _empty_channels_last((N, C) + out_size, x.dtype)
        # which kernel offset i*kw + j holds the maximum so far (one byte suffices up to 16x16)
        offsets = kernel_size[0] * kernel_size[1]
        argmax = _empty_channels_last(out.shape, numpy.uint8 if offsets <= 256 else numpy.int32)

        def pool(start, stop):  # images start..stop-1
            padded = x_padded[start:stop]
            if ph or pw:  # -inf around x
                for border in (padded[:, :, :ph], padded[:, :, ph + H:],
                               padded[:, :, :, :pw], padded[:, :, :, pw + W:]):
                    border[...] = -numpy.inf
                padded[:, :, ph:ph + H, pw:pw + W] = x[start:stop]
            best, best_offset = out[start:stop], argmax[start:stop]
            running_maximum(padded, best, best_offset, kernel_size, stride, out_size)
            nan = numpy.isnan(best)
            if nan.any():
                offsets_to_last_nan(padded, nan, best_offset, kernel_size, stride, out_size)
        for_pieces(pool, N, x_padded[:1].nbytes, x)
        ctx.geometry = kernel_size, stride, padding, out_size
        ctx.padded_shape = x_padded.shape
        ctx.save_for_backward(argmax)
        return out

    @staticmethod
    def backward(ctx, grad):
        (argmax,) = ctx.saved
        kernel, stride, padding, out_size = ctx.geometry
        grad_padded = _empty_channels_last(ctx.padded_shape, grad.dtype)

        def unpool(start, stop):  # images start..stop-1
            grad_part, offsets_part = grad[start:stop], argmax[start:stop]
            part = grad_padded[start:stop]
            part[...] = 0
            for i, j, window in window_slices(kernel, stride, out_size):
                part[window] += grad_part * (offsets_part == i * kernel[1] + j)
        for_pieces(unpool, grad.shape[0], grad_padded[:1].nbytes, grad)
        return crop2d(grad_padded, padding)


def _empty_channels_last(shape, dtype):
    """An uninitialised (N, C, H, W)-shaped array whose memory is (N, H, W, C)."""
    N, C, H, W = shape
    return numpy.empty((N, H, W, C), dtype=dtype).transpose(0, 3, 1, 2)

