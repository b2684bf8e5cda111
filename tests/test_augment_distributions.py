"""The augmentation's random parameters, sampled many times: every range reached at both ends
and never left, every probability within a binomial confidence interval (5 standard deviations:
a chance failure is about one in two million), for the draws and for the views they make, on
the CPU's ops and on the CUDA kernels' NumPy twins (simclr/augment/cuda.py) alike.

The recipe (docs/SIMCLR.md, Augmentation): crop of area U[0.08, 1] of the image and aspect ratio
U[3/4, 4/3]; flip p 0.5; colour jitter p 0.8 with brightness, contrast and saturation factors
U[max(0, 1 - 0.8 s), 1 + 0.8 s] and a hue shift U[-0.2 s, 0.2 s]; grayscale p 0.2; blur p 0.5
(ImageNet) with sigma U[0.1, 2].
"""
import colorsys
import math

import numpy
import pytest

from simclr.augment import SimCLRAugment, cuda
from simclr.augment.blur import draw_blur, random_gaussian_blur
from simclr.augment.color import color_jitter, draw_grayscale, draw_jitter, random_grayscale
from simclr.augment.crop import draw_flips, random_horizontal_flip, to_float_nchw

PATHS = ["cpu", "twins"]


def assert_rate(chosen, p, sigmas=5.0):
    """The share of True in `chosen` is p, to `sigmas` binomial standard deviations."""
    count = len(chosen)
    share = float(numpy.mean(chosen))
    allowed = sigmas * math.sqrt(p * (1 - p) / count)
    assert abs(share - p) <= allowed, f"{share:.4f} of {count} draws, expected {p} +- {allowed:.4f}"


def assert_fills(values, low, high, reach=0.01, slack=1e-5):
    """`values` stay in [low, high] (up to `slack`, float32 rounding) and come within
    `reach` of the width of both ends."""
    width = high - low
    assert values.min() >= low - slack and values.max() <= high + slack, \
        (values.min(), values.max(), low, high)
    assert values.min() <= low + reach * width and values.max() >= high - reach * width, \
        (values.min(), values.max(), low, high)


def jitter_range(strength):
    return max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength


def views(path, augment, images, draws):
    """The views of `images` for the draws of augment.draw: by the CPU's ops (augment.apply on
    host arrays), or by the twins of the GPU's kernels, in the order the GPU path runs them."""
    if path == "cpu":
        return augment.apply(images, *draws)
    boxes, flips, jitter, grayscale, blur = draws
    out = cuda.crop_resize_flip(images, boxes, flips, augment.size)
    out = cuda.distort_colors(out, *jitter, grayscale)
    return out if blur is None else cuda.blur(out, *blur)


# ----- the draws -----------------------------------------------------------------------------

@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0, 1.5])
def test_jitter_factors_fill_their_ranges_for_strength_s(strength):
    _, params, _ = draw_jitter(numpy.random.default_rng(0), 20000, strength)
    low, high = jitter_range(strength)
    for row, name in enumerate(["brightness", "contrast", "saturation"]):
        assert_fills(params[row], low, high, reach=0.001, slack=0.0), name
    assert_fills(params[3], -0.2 * strength, 0.2 * strength, reach=0.001, slack=0.0)


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_the_pipelines_draws_take_each_step_with_its_probability(preset):
    augment = SimCLRAugment.preset(preset)
    boxes, flips, (jittered, params, _), grayscale, blur = augment.draw(
        numpy.random.default_rng(1), 20000, 32, 32)
    assert_rate(flips, 0.5)
    assert_rate(jittered, 0.8)
    assert_rate(grayscale, 0.2)
    low, high = jitter_range(augment.color_strength)
    assert_fills(params[:3].ravel(), low, high, reach=0.001, slack=0.0)
    strength = augment.color_strength
    assert_fills(params[3], -0.2 * strength, 0.2 * strength, reach=0.001, slack=0.0)
    if preset == "cifar":
        assert blur is None
    else:
        chosen, sigma = blur
        assert_rate(chosen, 0.5)
        assert_fills(sigma, 0.1, 2.0, reach=0.001, slack=0.0)


def test_the_random_steps_default_to_the_recipes_probabilities():
    """Each step's own draw, with no probability given: the defaults are the recipe's."""
    rng = numpy.random.default_rng(2)
    assert_rate(draw_flips(rng, 20000), 0.5)
    assert_rate(draw_jitter(rng, 20000, 0.5)[0], 0.8)
    assert_rate(draw_grayscale(rng, 20000), 0.2)
    assert_rate(draw_blur(rng, 20000)[0], 0.5)


def test_the_pipelines_crops_fill_the_area_and_aspect_ratio_ranges():
    """Boxes on a 32 x 48 image (aspect ratio relative to the image's): the area fraction in
    [0.08, 1] and the ratio in [3/4, 4/3], both reached; the rounding of each side to whole
    pixels may move the ratio by half a pixel on either side."""
    boxes = SimCLRAugment.preset("cifar").draw(numpy.random.default_rng(3), 20000, 32, 48)[0]
    top, left, height, width = boxes.T.astype("float64")
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 32).all() and (left + width <= 48).all()
    assert_fills(height * width / (32 * 48), 0.08, 1.0, slack=0.0)
    ratio = width / height / (48 / 32)
    assert ratio.min() < 3 / 4 * 1.03 and ratio.max() > 4 / 3 * 0.97
    assert ((width + 0.5) / (height - 0.5) / 1.5 >= 3 / 4).all()
    assert ((width - 0.5) / (height + 0.5) / 1.5 <= 4 / 3).all()


# ----- the views: what the draws do to images --------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("step, p", [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2)])
def test_a_step_changes_its_share_of_the_views(path, step, p):
    """The pipeline with one step switched on: the share of views that differ from their image
    is the step's probability (random images are never symmetric, never gray, and never left
    as they were by a jitter)."""
    images = numpy.random.default_rng(4).integers(0, 256, (3000, 6, 6, 3), dtype=numpy.uint8)
    augment = SimCLRAugment(6, color_strength=1.0, blur=False, transformations=(step,))
    draws = augment.draw(numpy.random.default_rng(5), len(images), 6, 6)
    changed = (views(path, augment, images, draws) != to_float_nchw(images)).any(axis=(1, 2, 3))
    assert_rate(changed, p)


@pytest.mark.parametrize("path", PATHS)
def test_blur_changes_the_views_it_chose_and_only_those(path):
    """20 px images (3 taps): the chosen views with sigma >= 0.3 are blurred and no other view
    changes (below sigma 0.17 the outer taps weigh less than float32 can see)."""
    images = numpy.random.default_rng(6).integers(0, 256, (600, 20, 20, 3), dtype=numpy.uint8)
    augment = SimCLRAugment(20, blur=True, transformations=("blur",))
    draws = augment.draw(numpy.random.default_rng(7), len(images), 20, 20)
    chosen, sigma = draws[4]
    changed = (views(path, augment, images, draws) != to_float_nchw(images)).any(axis=(1, 2, 3))
    assert not (changed & ~chosen).any()
    assert changed[chosen & (sigma >= 0.3)].all()
    assert_rate(chosen, 0.5)


def test_the_random_functions_change_their_share_of_the_images():
    """color_jitter, random_grayscale, random_horizontal_flip and random_gaussian_blur called
    without a probability: the images they change."""
    rng = numpy.random.default_rng(8)
    images = rng.random((3000, 3, 4, 4))
    for step, p in ((lambda x: color_jitter(x, rng, 0.5), 0.8),
                    (lambda x: random_grayscale(x, rng), 0.2),
                    (lambda x: random_horizontal_flip(x, rng), 0.5)):
        assert_rate((step(images) != images).any(axis=(1, 2, 3)), p)
    wide = rng.random((1000, 3, 20, 20))
    blurred = random_gaussian_blur(wide, rng, sigma_range=(1.0, 2.0))
    assert_rate((blurred != wide).any(axis=(1, 2, 3)), 0.5)


# ----- the jitter's factors, read back from the views ------------------------------------------

def read_brightness(out):
    return out[:, 0, 0, 0] / 0.5                                   # a gray pixel at 0.5


def read_contrast(out):
    # two gray pixels 0.27 and 0.33: brightness b scales both (mean 0.3 b, gap 0.06 b),
    # contrast c scales the gap around the mean (gap 0.06 b c); saturation and hue keep gray
    mean, gap = out[:, 0, 0, :].mean(axis=1), out[:, 0, 0, 1] - out[:, 0, 0, 0]
    return gap / (0.2 * mean)


def read_saturation(out):
    # one pixel (0.5, 0.25, 0.25), saturation 0.5: brightness and hue keep the saturation
    value, least = out[:, :, 0, 0].max(axis=1), out[:, :, 0, 0].min(axis=1)
    return (value - least) / value / 0.5


def read_hue(out):
    # the same pixel, hue 0: brightness and saturation keep the hue, so it is the shift
    hues = numpy.array([colorsys.rgb_to_hsv(*pixel) for pixel in out[:, :, 0, 0].astype(float)])
    return (hues[:, 0] + 0.5) % 1.0 - 0.5


READOUTS = {  # the image (H, W, 3) each factor is read from, and how
    "brightness": ([[[0.5] * 3]], read_brightness),
    "contrast": ([[[0.27] * 3, [0.33] * 3]], read_contrast),
    "saturation": ([[[0.5, 0.25, 0.25]]], read_saturation),
    "hue": ([[[0.5, 0.25, 0.25]]], read_hue),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("factor", list(READOUTS))
def test_jitter_factors_read_back_from_the_views_fill_their_ranges(path, strength, factor):
    """The pipeline with only colour jitter, on images made so that one factor can be read
    from each view: over 3000 views that factor reaches both ends of its range for strength
    s and never leaves it (the views left alone read 1, or a shift of 0)."""
    pixels, read = READOUTS[factor]
    images = numpy.repeat(numpy.array(pixels)[None], 3000, axis=0)  # (N, H, W, 3)
    augment = SimCLRAugment(images.shape[1:3], color_strength=strength, blur=False,
                            transformations=("jitter",))
    draws = augment.draw(numpy.random.default_rng(9), len(images), *images.shape[1:3])
    observed = read(views(path, augment, images, draws).astype("float64"))
    low, high = (-0.2 * strength, 0.2 * strength) if factor == "hue" else jitter_range(strength)
    assert_fills(observed, low, high)
