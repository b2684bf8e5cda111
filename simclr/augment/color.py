"""Colour distortion: brightness, contrast, saturation and hue in a random order, then grayscale.

Every function takes float RGB images (N, 3, H, W) in [0, 1] and returns new ones, clipped to
[0, 1]; per-image factors are a scalar or one value per image (N,).
"""
import numpy

from autograd.backend import array_module

from ._batch import apply_to_chosen, check_nchw_rgb, check_rng, per_image

LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)  # TensorFlow's rgb_to_grayscale, as the official code


def rgb_to_hsv(images):
    """RGB (N, 3, ...) in [0, 1] -> HSV (N, 3, ...), with hue in turns [0, 1), as colorsys.

    v = max(r, g, b), s = (v - min) / v, and the hue is the position on the hexagon: the sector
    of the largest channel (red 0, green 2, blue 4) plus the difference of the other two over
    (v - min), divided by 6. Gray pixels (v = min) have hue 0 and saturation 0.
    """
    xp = array_module(images)
    red, green, blue = images[:, 0], images[:, 1], images[:, 2]
    value = images.max(axis=1)
    spread = value - images.min(axis=1)
    safe_spread = xp.where(spread > 0, spread, 1.0)
    saturation = xp.where(value > 0, spread / xp.where(value > 0, value, 1.0), 0.0)
    sector = xp.where(red == value, (green - blue) / safe_spread,
                      xp.where(green == value, 2.0 + (blue - red) / safe_spread,
                               4.0 + (red - green) / safe_spread))
    hue = xp.where(spread > 0, xp.where(sector < 0, sector + 6.0, sector) / 6.0, 0.0)  # [0, 1)
    return xp.stack([hue, saturation, value], axis=1)


def hsv_to_rgb(images):
    """HSV (N, 3, ...) with hue in turns [0, 1] -> RGB (N, 3, ...), as colorsys, without
    branches: channel n in (5, 3, 1) for (r, g, b) is v - v s clip(min(k, 4 - k), 0, 1),
    k = (n + 6 h) mod 6."""
    xp = array_module(images)
    hue, saturation, value = images[:, 0], images[:, 1], images[:, 2]
    channels = []
    for n in (5.0, 3.0, 1.0):
        turned = n + 6.0 * hue  # in [1, 11]: one subtraction is the mod (NumPy's % is slow)
        k = xp.where(turned >= 6.0, turned - 6.0, turned)
        channels.append(value - value * saturation * xp.clip(xp.minimum(k, 4.0 - k), 0.0, 1.0))
    return xp.stack(channels, axis=1)


def adjust_brightness(images, factor):
    """x * factor, per image."""
    return array_module(images).clip(images * per_image(factor, images), 0.0, 1.0)


def adjust_contrast(images, factor):
    """(x - mean_c) * factor + mean_c, with mean_c the mean of channel c of each image (as
    TensorFlow's adjust_contrast)."""
    mean = images.mean(axis=(2, 3), keepdims=True)  # (N, 3, 1, 1)
    return array_module(images).clip((images - mean) * per_image(factor, images) + mean, 0.0, 1.0)


def adjust_saturation(images, factor):
    """Scale the HSV saturation by `factor` (clipped to [0, 1]), keeping hue and value.

    By hsv_to_rgb, each channel is c = v - v s g(h) with g fixed by the hue: linear in s. So
    scaling s to s' = min(s f, 1) moves each channel from v by s'/s, with no trip through HSV.
    """
    xp = array_module(images)
    value = images.max(axis=1, keepdims=True)  # (N, 1, H, W)
    spread = value - images.min(axis=1, keepdims=True)
    saturation = spread / xp.where(value > 0, value, 1.0)
    scaled = xp.minimum(saturation * per_image(factor, images), 1.0)
    stretch = xp.where(saturation > 0, scaled / xp.where(saturation > 0, saturation, 1.0), 1.0)
    return xp.clip(value - (value - images) * stretch, 0.0, 1.0)


def adjust_hue(images, delta):
    """Rotate the HSV hue by `delta` turns of the colour wheel: h -> (h + delta) mod 1."""
    hsv = rgb_to_hsv(images)
    hue = hsv[:, 0] + per_image(delta, images)[:, 0]  # (N, H, W)
    hsv[:, 0] = hue - array_module(images).floor(hue)
    return array_module(images).clip(hsv_to_rgb(hsv), 0.0, 1.0)


def rgb_to_grayscale(images):
    """0.2989 r + 0.5870 g + 0.1140 b, copied to the 3 channels: (N, 3, H, W) -> (N, 3, H, W)."""
    xp = array_module(images)
    red_w, green_w, blue_w = LUMA_WEIGHTS
    gray = red_w * images[:, 0] + green_w * images[:, 1] + blue_w * images[:, 2]  # (N, H, W)
    return xp.broadcast_to(gray[:, None], images.shape).copy()


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def sample_jitter(rng, count, strength):
    """Per-image colour-jitter parameters for strength s: factors for brightness, contrast and
    saturation from U[max(0, 1 - 0.8 s), 1 + 0.8 s], a hue shift from U[-0.2 s, 0.2 s], and the
    order of the four ops (a random permutation per image).

    Returns params float64 (4, count), one row per op of JITTER_OPS, and order int64 (count, 4):
    order[i, position] is the op that image i runs at that position.
    """
    low, high = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
    factors = rng.uniform(low, high, (3, count))
    hue_shift = rng.uniform(-0.2 * strength, 0.2 * strength, (1, count))
    order = numpy.argsort(rng.uniform(size=(count, 4)), axis=1)
    return numpy.concatenate([factors, hue_shift]), order


def draw_jitter(rng, count, strength, p=0.8):
    """The random part of color_jitter: (jittered, params, order), jittered a host bool (count,)
    (p of the images take the jitter), params and order as sample_jitter's."""
    check_rng(rng)
    jittered = rng.uniform(size=count) < p
    return (jittered,) + sample_jitter(rng, count, strength)


def apply_jitter(images, jittered, params, order):
    """The jitter of draw_jitter's draws: for the images marked in `jittered`, the four ops in
    their order, each clipping to [0, 1]. Vectorised over the batch: at each of the 4
    positions, each op runs once, on the images that have it at that position."""
    result = images.copy()
    for position in range(4):
        for op_index, op in enumerate(JITTER_OPS):
            chosen = jittered & (order[:, position] == op_index)
            apply_to_chosen(result, chosen, op, params[op_index])
    return result


def color_jitter(images, rng, strength, p=0.8):
    """With probability p per image, brightness, contrast, saturation and hue jitter of strength s
    (see sample_jitter) in a random order per image, clipping after each.
    images: float (N, 3, H, W) -> (N, 3, H, W)."""
    check_nchw_rgb(images)
    return apply_jitter(images, *draw_jitter(rng, images.shape[0], strength, p))


def draw_grayscale(rng, count, p=0.2):
    """The random part of random_grayscale: a host bool (count,), p of the images marked."""
    check_rng(rng)
    return rng.uniform(size=count) < p


def random_grayscale(images, rng, p=0.2):
    """Turn each image of (N, 3, H, W) to grayscale (rgb_to_grayscale) with probability p."""
    check_nchw_rgb(images)
    return apply_to_chosen(images.copy(), draw_grayscale(rng, images.shape[0], p),
                           rgb_to_grayscale)
