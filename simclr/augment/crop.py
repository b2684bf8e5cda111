"""Random resized crop (bicubic, as Pillow resizes) and horizontal flip, for a whole batch.

Resizing is linear in the image, separately along each axis: out = Wy @ img @ Wx^T, where row i
of Wy (H', H) holds the weights that output row i gives to the input rows. Each image has its own
crop box and so its own Wy (N, H', H) and Wx (N, W', W); the crop itself is in the weights (zero
outside the box's neighbourhood), so a whole batch is cropped and resized by two batched matmuls.
"""
import numpy

from autograd.backend import array_module

from ._batch import apply_to_chosen, check_nchw_rgb, check_rng

CUBIC_A = -0.5  # Keys' cubic convolution parameter, as Pillow (and TensorFlow) use


def check_stored_images(images):
    """A clear error unless `images` is a batch as data sets store it: (N, H, W, 3), uint8 in
    [0, 255] or floats in [0, 1]."""
    if not hasattr(images, "ndim"):
        raise TypeError(f"expected a numpy or cupy array of images, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected RGB images of shape (N, H, W, 3), got shape {images.shape}")
    if images.dtype != "uint8" and images.dtype.kind != "f":
        raise TypeError(f"expected uint8 or float images, got dtype {images.dtype}")


def to_float_nchw(images):
    """uint8 (N, H, W, 3) in [0, 255] or float (N, H, W, 3) in [0, 1] -> float32 (N, 3, H, W) in
    [0, 1] (floats are clipped). The test-time transform: no randomness."""
    check_stored_images(images)
    xp = array_module(images)
    if images.dtype == "uint8":
        scaled = images.astype("float32") / 255.0
    else:
        scaled = xp.clip(images.astype("float32"), 0.0, 1.0)
    return xp.ascontiguousarray(scaled.transpose(0, 3, 1, 2))  # (N, H, W, 3) -> (N, 3, H, W)


def cubic_kernel(distance):
    """Keys' cubic convolution kernel with a = -0.5, elementwise; zero for |distance| >= 2.

    k(t) = (a+2)|t|^3 - (a+3)|t|^2 + 1            for |t| < 1
    k(t) = a (|t|^3 - 5|t|^2 + 8|t| - 4)          for 1 <= |t| < 2
    """
    xp = array_module(distance)
    t = xp.abs(distance)
    near = ((CUBIC_A + 2) * t - (CUBIC_A + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * CUBIC_A
    return xp.where(t < 1, near, xp.where(t < 2, far, 0.0))


def bicubic_weights(start, length, in_size, out_size):
    """Per-image resampling matrices of the span [start, start + length) of an axis of `in_size`
    pixels onto `out_size` pixels, as Pillow's Image.resize(BICUBIC, box=...) computes them.

    start, length: float arrays (N,) on the target device. Returns float64 (N, out_size, in_size),
    each row summing to 1. Output pixel i samples the input at
    center_i = start + (i + 0.5) * scale, scale = length / out_size, with the weights
    k((j + 0.5 - center_i) / max(scale, 1)) over input pixels j, normalised: when shrinking
    (scale > 1) the kernel is stretched by the scale, which antialiases. Pixels outside the box
    but inside the image take part, as in Pillow.
    """
    xp = array_module(start, length)
    scale = length / out_size  # (N,) input pixels per output pixel
    stretch = xp.maximum(scale, 1.0)[:, None, None]  # (N, 1, 1)
    centers = start[:, None] + (xp.arange(out_size) + 0.5) * scale[:, None]  # (N, out)
    offsets = xp.arange(in_size) + 0.5 - centers[:, :, None]  # (N, out, in)
    weights = cubic_kernel(offsets / stretch)
    return weights / weights.sum(axis=2, keepdims=True)


def resized_crop(images, boxes, size):
    """Crop each image to its box and resize the crop to `size` with bicubic interpolation.

    images: float (N, 3, H, W); boxes: integers or floats (N, 4) as (top, left, height, width) in
    pixels (host or device); size: (H', W'). Returns (N, 3, H', W') in the images' dtype, clipped to
    [0, 1] (cubic interpolation overshoots at edges).
    """
    xp = array_module(images)
    boxes = xp.asarray(boxes, dtype="float64")  # (N, 4)
    rows = bicubic_weights(boxes[:, 0], boxes[:, 2], images.shape[2], size[0])  # (N, H', H)
    cols = bicubic_weights(boxes[:, 1], boxes[:, 3], images.shape[3], size[1])  # (N, W', W)
    rows = rows.astype(images.dtype)[:, None]  # (N, 1, H', H): the same for the 3 channels
    cols_t = cols.astype(images.dtype).transpose(0, 2, 1)[:, None]  # (N, 1, W, W')
    resized = rows @ (images @ cols_t)  # (N, 3, H, W) -> (N, 3, H, W') -> (N, 3, H', W')
    return xp.clip(resized, 0.0, 1.0)


def sample_crop_boxes(rng, count, height, width, area_range=(0.08, 1.0),
                      ratio_range=(3 / 4, 4 / 3), attempts=100):
    """Draw `count` crop boxes with the official SimCLR ranges.

    Each attempt draws an area fraction a ~ U[area_range] of the image and an aspect ratio
    r ~ U[ratio_range] * (width / height) (crop width over crop height, relative to the image's
    own shape; uniform as TensorFlow's, where torchvision draws it log-uniform); the crop is
    w = round(sqrt(a H W r)), h = round(sqrt(a H W / r)). The first of `attempts` attempts whose
    rounded box fits in the image with area h w in [area_range] * H W wins; if none does, the box
    is the whole image. The position is uniform over the places where the box fits. All attempts
    of all images are drawn at once, so a seed gives the same boxes whatever they turn out to be.
    (TensorFlow's sample_distorted_bounding_box, which the official code calls, draws the height
    uniformly between its bounds instead of the area: docs/SIMCLR.md, Differences from the
    official code, item 1, says how the two differ and why this one follows the paper.)

    Returns int64 (count, 4): (top, left, height, width).
    """
    check_rng(rng)
    image_area = height * width
    area = rng.uniform(area_range[0], area_range[1], (count, attempts)) * image_area
    ratio = rng.uniform(ratio_range[0], ratio_range[1], (count, attempts)) * (width / height)
    crop_w = numpy.floor(numpy.sqrt(area * ratio) + 0.5).astype("int64")
    crop_h = numpy.floor(numpy.sqrt(area / ratio) + 0.5).astype("int64")
    crop_area = crop_w * crop_h
    fits = ((crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
            & (crop_area >= area_range[0] * image_area) & (crop_area <= area_range[1] * image_area))
    first = fits.argmax(axis=1)  # (count,) index of the first box that fits (0 if none)
    found = fits[numpy.arange(count), first]
    crop_h = numpy.where(found, crop_h[numpy.arange(count), first], height)
    crop_w = numpy.where(found, crop_w[numpy.arange(count), first], width)
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    return numpy.stack([top, left, crop_h, crop_w], axis=1)


def random_resized_crop(images, rng, size, area_range=(0.08, 1.0), ratio_range=(3 / 4, 4 / 3)):
    """Crop each image to its own random box (see sample_crop_boxes) and resize it to `size`
    (H', W') with bicubic interpolation. images: float (N, 3, H, W) -> (N, 3, H', W')."""
    check_nchw_rgb(images)
    boxes = sample_crop_boxes(rng, images.shape[0], images.shape[2], images.shape[3],
                              area_range, ratio_range)
    return resized_crop(images, boxes, size)


def horizontal_flip(images):
    """Mirror images (N, C, H, W) left to right."""
    return images[..., ::-1]


def draw_flips(rng, count, p=0.5):
    """The random part of random_horizontal_flip: a host bool (count,), p of the images marked."""
    check_rng(rng)
    return rng.uniform(size=count) < p


def random_horizontal_flip(images, rng, p=0.5):
    """Mirror each image of (N, C, H, W) left to right with probability p."""
    return apply_to_chosen(images.copy(), draw_flips(rng, images.shape[0], p), horizontal_flip)
