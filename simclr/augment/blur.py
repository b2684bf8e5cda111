"""Gaussian blur with a different sigma per image, separable, with zero padding ('SAME')."""
from autograd.backend import array_module

from ._batch import apply_to_chosen, check_nchw_rgb, check_rng


def blur_kernel_size(height):
    """The official kernel size: height // 10, made odd as 2 * ((height // 10) // 2) + 1
    (224 -> 23, 32 -> 3)."""
    return 2 * ((height // 10) // 2) + 1


def gaussian_kernels(sigma, kernel_size):
    """One normalised 1-D Gaussian per sigma: sigma (N,) -> float64 (N, kernel_size) with
    weights exp(-t^2 / (2 sigma^2)) / sum over the taps t = -r..r, r = kernel_size // 2."""
    xp = array_module(sigma)
    radius = kernel_size // 2
    taps = xp.arange(-radius, radius + 1, dtype="float64")  # (k,)
    weights = xp.exp(-taps ** 2 / (2.0 * sigma[:, None] ** 2))  # (N, k)
    return weights / weights.sum(axis=1, keepdims=True)


def convolve_axis(images, kernels, axis):
    """Correlate each image of (N, C, H, W) along `axis` (2 or 3) with its own symmetric kernel
    (N, k), treating pixels beyond the border as zeros; one pass per tap, not per pixel."""
    xp = array_module(images)
    size = kernels.shape[1]
    radius = size // 2
    padding = [(0, 0)] * 4
    padding[axis] = (radius, radius)
    padded = xp.pad(images, padding)  # (N, C, H + 2r, W) or (N, C, H, W + 2r)
    length = images.shape[axis]
    result = xp.zeros_like(images)
    for tap in range(size):
        window = [slice(None)] * 4
        window[axis] = slice(tap, tap + length)
        result += kernels[:, tap, None, None, None] * padded[tuple(window)]
    return result


def gaussian_blur(images, sigma, kernel_size):
    """Blur each image of (N, C, H, W) with a separable Gaussian of its own sigma (a scalar or
    (N,), host or device) and `kernel_size` taps (odd), zero padding at the borders as the official
    'SAME' depthwise convolution (so edges darken). Returns (N, C, H, W), clipped to [0, 1]."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    xp = array_module(images)
    sigma = xp.broadcast_to(xp.asarray(sigma, dtype="float64"), images.shape[:1])  # (N,)
    kernels = gaussian_kernels(sigma, kernel_size).astype(images.dtype)  # (N, k)
    blurred = convolve_axis(convolve_axis(images, kernels, 2), kernels, 3)
    return xp.clip(blurred, 0.0, 1.0)


def draw_blur(rng, count, p=0.5, sigma_range=(0.1, 2.0)):
    """The random part of random_gaussian_blur: (chosen, sigma), a host bool (count,) marking p
    of the images and a sigma ~ U[sigma_range] for each (float64, drawn for all)."""
    check_rng(rng)
    chosen = rng.uniform(size=count) < p
    return chosen, rng.uniform(sigma_range[0], sigma_range[1], count)


def apply_blur(images, chosen, sigma):
    """The blur of draw_blur's draws: gaussian_blur of the chosen images, with their sigma and
    the kernel size of the image height (blur_kernel_size), as a new array."""
    kernel_size = blur_kernel_size(images.shape[2])
    return apply_to_chosen(images.copy(), chosen,
                           lambda chosen_images, s: gaussian_blur(chosen_images, s, kernel_size),
                           sigma)


def random_gaussian_blur(images, rng, p=0.5, sigma_range=(0.1, 2.0)):
    """With probability p per image, gaussian_blur with sigma ~ U[sigma_range] and the kernel
    size of the image height (blur_kernel_size). images: float (N, 3, H, W) -> (N, 3, H, W)."""
    check_nchw_rgb(images)
    return apply_blur(images, *draw_blur(rng, images.shape[0], p, sigma_range))
