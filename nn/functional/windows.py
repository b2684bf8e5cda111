"""Window geometry shared by convolution and pooling: arguments, shapes, strided slices, padding."""
from numbers import Integral

from autograd import array_module


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


def check_pool_window(op, x, kernel, stride, padding):
    """A clear error unless x is (N, C, H, W) and the padding at most half the kernel (as in
    PyTorch); returns the output size (Ho, Wo)."""
    if x.ndim != 4:
        raise ValueError(f"{op} expects input of shape (N, C, H, W), got shape {x.shape}")
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"{op}: padding {padding} must be at most half of kernel_size "
                         f"{kernel} (as in PyTorch)")
    return output_size(op, x.shape[2:], kernel, stride, padding)


def window_slices(kernel, stride, out_size):
    """For each kernel offset (i, j), the index of the (Ho, Wo) grid of padded-input pixels
    that this offset of the window touches: x_padded[..., sh*p + i, sw*q + j]."""
    (kh, kw), (sh, sw), (Ho, Wo) = kernel, stride, out_size
    for i in range(kh):
        for j in range(kw):
            yield i, j, (Ellipsis, slice(i, i + sh * (Ho - 1) + 1, sh),
                         slice(j, j + sw * (Wo - 1) + 1, sw))



def running_maximum(padded, best, offset, kernel, stride, out_size):
    """Max pooling without stacking the windows, on either device: best[..., p, q] = the maximum
    of each window of `padded` (..., Hp, Wp), and offset = i*kw + j, the kernel offset that
    holds it, written into `best` and `offset` (..., Ho, Wo). One window offset at a time: its
    strided view compared with the maximum so far; strict >, so a later equal value leaves the
    first maximum in place; NaN wins (numpy's and CuPy's maximum), so it reaches the output."""
    xp = array_module(padded)
    windows = window_slices(kernel, stride, out_size)
    best[...] = padded[next(windows)[2]]                             # offset (0, 0)
    offset[...] = 0
    for i, j, window in windows:
        candidate = padded[window]
        xp.copyto(offset, i * kernel[1] + j, where=candidate > best)
        xp.maximum(best, candidate, out=best)


def offsets_to_last_nan(padded, nan, offset, kernel, stride, out_size):
    """Where a window's maximum is NaN (`nan`), its offset becomes that of the window's last
    NaN, where PyTorch sends the gradient."""
    xp = array_module(padded)
    for i, j, window in window_slices(kernel, stride, out_size):
        xp.copyto(offset, i * kernel[1] + j, where=nan & xp.isnan(padded[window]))

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


def check_conv_inputs(x, weight, bias):
    """A clear error unless x (N, C, H, W), weight (F, C, kh, kw) and bias (F,) or None fit."""
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
