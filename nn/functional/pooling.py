"""Pooling over 2-D windows (NCHW): the maximum or the mean of each kh x kw window.

Both window ops visit a window with kh*kw strided slices, one per kernel offset (i, j), each
a (N, C, Ho, Wo) view x_padded[..., sh*p + i, sw*q + j] of every window at once (see
windows.window_slices): no loop over pixels, and the same code runs on CuPy. Window geometry
follows PyTorch: stride defaults to the kernel size, the output size rounds down, and the
padding may be at most half the kernel.

Which implementation runs (`implementation`, nn/functional/dispatch.py): max_pool2d by
MaxPool2dReference, below, inside use_reference(); otherwise by the kernel of the input's
device, the same max and argmax without stacking the kh*kw windows, in channels-last memory:
cpu/pooling.py's, split over the threads, or cuda/pooling.py's, the whole batch at once. The
tests hold both to the reference. Average pooling has one implementation, AvgPool2d below,
on every device.
"""
from autograd import Function, array_module

from .cpu.pooling import MaxPool2dChannelsLast
from .cuda.pooling import MaxPool2dCuda
from .dispatch import on_gpu, reference, reference_chosen
from .windows import check_pool_window, crop2d, pad2d, pair, window_slices


class MaxPool2dReference(Function):
    """out[n, c, p, q] = max_{i,j} x_padded[n, c, sh*p + i, sw*q + j], x padded with -inf.

    Backward: the window's gradient goes to its argmax alone, the first maximum in row-major
    window order (as PyTorch), and a pixel that is the argmax of several overlapping windows
    (kernel 3, stride 2) receives the sum of their gradients:
        dx_padded[n, c, sh*p + i, sw*q + j] += dout[n, c, p, q]  where (i, j) = argmax.
    All kh*kw window offsets are stacked, so that max and argmax are one call each.
    """

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out_size = check_pool_window("max_pool2d", x, kernel_size, stride, padding)
        xp = array_module(x)
        x_padded = pad2d(x, padding, value=-xp.inf)
        # (kh*kw, N, C, Ho, Wo): every window's values, offset (i, j) = i*kw + j first
        windows = xp.stack([x_padded[window]
                            for _, _, window in window_slices(kernel_size, stride, out_size)])
        ctx.geometry = kernel_size, stride, padding, out_size
        ctx.padded_shape = x_padded.shape
        ctx.save_for_backward(windows.argmax(axis=0))                 # (N, C, Ho, Wo)
        return windows.max(axis=0)

    @staticmethod
    def backward(ctx, grad):
        # course: begin max-pool-backward
        (argmax,) = ctx.saved
        kernel, stride, padding, out_size = ctx.geometry
        grad_padded = array_module(grad).zeros(ctx.padded_shape, dtype=grad.dtype)
        for i, j, window in window_slices(kernel, stride, out_size):
            grad_padded[window] += grad * (argmax == i * kernel[1] + j)
        return crop2d(grad_padded, padding)
        # course: end max-pool-backward


class AvgPool2d(Function):
    """out[n, c, p, q] = sum_{i,j} x_padded[n, c, sh*p + i, sw*q + j] / (kh*kw), zero padding
    counted in the mean (count_include_pad=True, PyTorch's default). Every pixel of a window
    receives 1/(kh*kw) of the window's gradient."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out_size = check_pool_window("avg_pool2d", x, kernel_size, stride, padding)
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


def implementation(x):
    """The Function that computes max_pool2d of x (see the module docstring)."""
    if reference_chosen():
        return reference("max_pool2d", MaxPool2dReference)
    if on_gpu(x):
        return MaxPool2dCuda
    return MaxPool2dChannelsLast


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
    return implementation(x).apply(x, **_window_settings("max_pool2d", kernel_size, stride,
                                                         padding))


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
