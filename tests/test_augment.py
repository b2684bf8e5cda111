"""SimCLR's augmentations: each step against an independent reference (colorsys, Pillow, PyTorch)
or a formula on known inputs, and the pipeline's promises (layout, range, seeds, spec ranges)."""
import colorsys
import itertools

import numpy
import pytest
from PIL import Image

from autograd import to_numpy
from helpers import import_torch
from simclr.augment import (LUMA_WEIGHTS, LinearEvalAugment, SimCLRAugment, adjust_brightness,
                            adjust_contrast, adjust_hue, adjust_saturation, blur_kernel_size,
                            color_jitter, gaussian_blur, gaussian_kernels, hsv_to_rgb,
                            random_horizontal_flip, random_resized_crop, resized_crop,
                            rgb_to_grayscale, rgb_to_hsv, sample_crop_boxes, sample_jitter,
                            to_float_nchw)
from simclr.augment.color import JITTER_OPS

COLOR_TOLERANCE = {"float64": 1e-12, "float32": 1e-6}


def pixels(xp, dtype, count=200, seed=0):
    """`count` random RGB pixels plus the corner cases of HSV (black, white, gray, primaries,
    ties between channels), as images (P, 3, 1, 1)."""
    special = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1],
               [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.3, 0.3, 0.1], [0.2, 0.6, 0.6], [0.9, 0.2, 0.9]]
    values = numpy.concatenate([special, numpy.random.default_rng(seed).random((count, 3))])
    return xp.asarray(values.astype(dtype)[:, :, None, None])


def hue_distance(a, b):
    """Distance between hues in turns, on the circle."""
    gap = numpy.abs(a - b) % 1.0
    return numpy.minimum(gap, 1.0 - gap)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rgb_hsv_conversions_match_colorsys(xp, dtype):
    rgb = pixels(xp, dtype)
    hsv = to_numpy(rgb_to_hsv(rgb))[:, :, 0, 0]
    expected = numpy.array([colorsys.rgb_to_hsv(*p) for p in to_numpy(rgb)[:, :, 0, 0].tolist()])
    assert hsv.dtype == dtype
    assert hue_distance(hsv[:, 0], expected[:, 0]).max() <= COLOR_TOLERANCE[dtype]
    assert numpy.abs(hsv[:, 1:] - expected[:, 1:]).max() <= COLOR_TOLERANCE[dtype]

    back = to_numpy(hsv_to_rgb(xp.asarray(expected.astype(dtype)[:, :, None, None])))[:, :, 0, 0]
    expected_rgb = numpy.array([colorsys.hsv_to_rgb(*p) for p in expected.tolist()])
    assert numpy.abs(back - expected_rgb).max() <= 4 * COLOR_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_saturation_and_hue_match_colorsys_per_pixel(xp, dtype):
    rgb = pixels(xp, dtype)
    count = rgb.shape[0]
    draws = numpy.random.default_rng(1)
    factor = draws.uniform(0.0, 2.0, count)  # past 1 too, where S must clip at 1
    delta = draws.uniform(-0.5, 0.5, count)
    saturated = to_numpy(adjust_saturation(rgb, factor))[:, :, 0, 0]
    shifted = to_numpy(adjust_hue(rgb, delta))[:, :, 0, 0]
    want_saturated, want_shifted = [], []
    for (r, g, b), f, d in zip(to_numpy(rgb)[:, :, 0, 0].tolist(), factor, delta):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        want_saturated.append(colorsys.hsv_to_rgb(h, min(s * f, 1.0), v))
        want_shifted.append(colorsys.hsv_to_rgb((h + d) % 1.0, s, v))
    assert saturated.dtype == shifted.dtype == dtype
    assert numpy.abs(saturated - numpy.array(want_saturated)).max() <= 4 * COLOR_TOLERANCE[dtype]
    assert numpy.abs(shifted - numpy.array(want_shifted)).max() <= 4 * COLOR_TOLERANCE[dtype]


def test_brightness_and_contrast_follow_their_formulas_on_known_inputs(xp):
    image = xp.asarray(numpy.array([0.1, 0.3, 0.5, 0.7]).reshape(1, 1, 2, 2).repeat(3, axis=1))
    brighter = to_numpy(adjust_brightness(image, 1.5))[0, 0].ravel()
    numpy.testing.assert_allclose(brighter, [0.15, 0.45, 0.75, 1.0])  # 0.7 * 1.5 clipped to 1
    stronger = to_numpy(adjust_contrast(image, 2.0))[0, 0].ravel()  # mean 0.4
    numpy.testing.assert_allclose(stronger, [0.0, 0.2, 0.6, 1.0])  # -0.2 and 1.0 clipped
    weaker = to_numpy(adjust_contrast(image, 0.5))[0, 0].ravel()
    numpy.testing.assert_allclose(weaker, [0.25, 0.35, 0.45, 0.55])


def test_contrast_uses_each_channels_own_mean(xp):
    image = xp.asarray(numpy.array([[0.1, 0.3], [0.6, 0.8], [0.0, 0.4]]).reshape(1, 3, 1, 2))
    flattened = to_numpy(adjust_contrast(image, 0.0))[0, :, 0]
    numpy.testing.assert_allclose(flattened, [[0.2, 0.2], [0.7, 0.7], [0.2, 0.2]])


def test_grayscale_uses_luma_weights_on_all_three_channels(xp):
    assert LUMA_WEIGHTS == (0.2989, 0.5870, 0.1140)
    image = xp.asarray(numpy.array([0.2, 0.6, 1.0]).reshape(1, 3, 1, 1))
    gray = to_numpy(rgb_to_grayscale(image))
    numpy.testing.assert_allclose(gray.ravel(), [0.2989 * 0.2 + 0.587 * 0.6 + 0.114] * 3)


def smooth_image(height, width):
    """A smooth uint8 RGB image (H, W, 3): Pillow clips and rounds between its horizontal and
    vertical passes on 8-bit images, which only an image without sharp edges makes negligible."""
    rows, cols = numpy.mgrid[0:height, 0:width]
    channels = [127.5 + 120 * numpy.sin(rows / 5 + c) * numpy.cos(cols / 7 - c) for c in range(3)]
    return numpy.stack(channels, axis=-1).round().astype("uint8")


# (image H, W), box (top, left, height, width), output (H', W'): an upscale and a downscale
CROPS = [((32, 32), (5, 3, 12, 10), (32, 32)), ((40, 48), (2, 4, 36, 40), (14, 11))]


@pytest.mark.parametrize("image_size, box, out_size", CROPS, ids=["upscale", "downscale"])
def test_bicubic_crop_resize_matches_pillow(xp, image_size, box, out_size):
    top, left, height, width = box
    pillow_box = (left, top, left + width, top + height)
    image = smooth_image(*image_size)
    want = numpy.asarray(Image.fromarray(image).resize(out_size[::-1], Image.BICUBIC,
                                                       box=pillow_box))
    ours = to_numpy(resized_crop(to_float_nchw(xp.asarray(image[None])), [box], out_size))
    assert numpy.abs(numpy.round(ours[0].transpose(1, 2, 0) * 255) - want).max() <= 2

    # Pillow's float mode resizes in double precision without rounding: the weights agree exactly.
    plane = numpy.random.default_rng(0).random(image_size).astype("float32")
    want = numpy.asarray(Image.fromarray(plane, mode="F").resize(out_size[::-1], Image.BICUBIC,
                                                                 box=pillow_box))
    ours = to_numpy(resized_crop(xp.asarray(numpy.repeat(plane[None, None], 3, axis=1)), [box],
                                 out_size))
    assert numpy.abs(ours[0, 0] - want).max() <= 1e-6


def test_crop_boxes_cover_the_spec_ranges_of_area_and_aspect_ratio():
    for height, width in [(32, 32), (48, 64)]:
        boxes = sample_crop_boxes(numpy.random.default_rng(0), 20000, height, width)
        top, left, crop_h, crop_w = boxes.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + crop_h <= height).all() and (left + crop_w <= width).all()
        area = crop_h * crop_w / (height * width)
        assert area.min() >= 0.08 and area.max() <= 1.0
        assert area.min() < 0.1 and area.max() > 0.95 and 0.4 < numpy.median(area) < 0.6
        # the ratio is drawn before rounding each side to whole pixels: allow half a pixel
        image_ratio = width / height
        assert ((crop_w + 0.5) / (crop_h - 0.5) >= 3 / 4 * image_ratio).all()
        assert ((crop_w - 0.5) / (crop_h + 0.5) <= 4 / 3 * image_ratio).all()
        relative_ratio = crop_w / crop_h / image_ratio
        assert relative_ratio.min() < 0.8 and relative_ratio.max() > 1.25


def test_crop_is_the_whole_image_when_no_attempt_fits():
    # on a 2x2 image no whole-pixel box has an area between 1.2 and 1.6 pixels
    boxes = sample_crop_boxes(numpy.random.default_rng(0), 50, 2, 2, area_range=(0.3, 0.4))
    assert (boxes == [0, 0, 2, 2]).all()


def test_flip_mirrors_exactly_the_drawn_images(xp):
    images = xp.asarray(numpy.random.default_rng(0).random((64, 3, 4, 5)))
    flipped = to_numpy(random_horizontal_flip(images, numpy.random.default_rng(1)))
    mirrored = (flipped == to_numpy(images)[..., ::-1]).all(axis=(1, 2, 3))
    kept = (flipped == to_numpy(images)).all(axis=(1, 2, 3))
    drawn = numpy.random.default_rng(1).uniform(size=64) < 0.5
    assert (mirrored == drawn).all() and (kept == ~drawn).all()
    assert 16 < drawn.sum() < 48


def test_jitter_runs_the_four_ops_in_each_images_drawn_order(xp):
    count, strength = 48, 1.0
    images = xp.asarray(numpy.random.default_rng(0).random((count, 3, 6, 6), dtype="float32"))
    ours = to_numpy(color_jitter(images, numpy.random.default_rng(7), strength))

    replay = numpy.random.default_rng(7)
    jittered = replay.uniform(size=count) < 0.8
    params, order = sample_jitter(replay, count, strength)
    assert len({tuple(o) for o in order}) > 12  # the order varies between images
    for i in range(count):
        want = images[i:i + 1]
        for op_index in order[i] if jittered[i] else []:
            want = JITTER_OPS[op_index](want, params[op_index, i])
        numpy.testing.assert_allclose(ours[i:i + 1], to_numpy(want), atol=1e-6)
    assert not numpy.allclose(ours[jittered], to_numpy(images)[jittered], atol=1e-3)


def test_jitter_order_is_a_uniform_permutation():
    _, order = sample_jitter(numpy.random.default_rng(0), 24000, 0.5)
    counts = numpy.array([(order == p).all(axis=1).sum()
                          for p in itertools.permutations(range(4))])
    assert counts.min() > 800 and counts.max() < 1200  # 1000 each expected


def test_jitter_factors_lie_in_the_spec_ranges():
    params, _ = sample_jitter(numpy.random.default_rng(0), 10000, 0.5)
    assert params[:3].min() >= 0.6 and params[:3].max() <= 1.4
    assert params[3].min() >= -0.1 and params[3].max() <= 0.1
    strong, _ = sample_jitter(numpy.random.default_rng(0), 10000, 1.5)  # 1 - 0.8 s < 0: from 0
    assert strong[:3].min() >= 0.0 and strong[:3].min() < 0.01


def test_blur_kernel_size_is_a_tenth_of_the_height_made_odd():
    assert [blur_kernel_size(h) for h in (224, 32, 96, 100, 9)] == [23, 3, 9, 11, 1]
    kernels = to_numpy(gaussian_kernels(numpy.array([0.1, 1.0, 2.0]), 23))
    numpy.testing.assert_allclose(kernels.sum(axis=1), 1.0)
    numpy.testing.assert_allclose(kernels, kernels[:, ::-1])


def test_blur_keeps_a_constant_image_constant_away_from_the_zero_padded_border(xp):
    images = xp.full((2, 3, 40, 40), 0.6)
    blurred = to_numpy(gaussian_blur(images, xp.asarray([0.5, 2.0]), 9))
    numpy.testing.assert_allclose(blurred[:, :, 4:-4, 4:-4], 0.6, rtol=1e-12)
    assert (blurred[:, :, 0, 0] < 0.6).all()  # zeros beyond the border darken the corners


def test_blur_matches_pytorch_depthwise_convolution(xp):
    torch = import_torch()
    images = numpy.random.default_rng(0).random((2, 3, 12, 10))
    sigma = numpy.array([0.4, 1.7])
    ours = to_numpy(gaussian_blur(xp.asarray(images), sigma, 5))
    kernels = to_numpy(gaussian_kernels(sigma, 5))
    for i in range(2):
        weight = torch.tensor(numpy.outer(kernels[i], kernels[i])).expand(3, 1, 5, 5)
        want = torch.nn.functional.conv2d(torch.tensor(images[i:i + 1]), weight, padding=2,
                                          groups=3)
        assert numpy.abs(ours[i] - want.numpy()[0].clip(0, 1)).max() <= 1e-12


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
@pytest.mark.parametrize("dtype", ["uint8", "float64"])
def test_views_are_float32_nchw_in_the_unit_range(xp, preset, dtype):
    images = numpy.random.default_rng(0).random((6, 40, 36, 3))
    images = (images * 255).astype("uint8") if dtype == "uint8" else images
    augment = SimCLRAugment.preset(preset, size=(24, 20))
    views = augment(xp.asarray(images), numpy.random.default_rng(1))
    assert views.shape == (6, 3, 24, 20) and views.dtype == "float32"
    assert type(views) is type(xp.asarray(images))
    assert 0.0 <= float(views.min()) and float(views.max()) <= 1.0


def test_same_seed_gives_the_same_views_and_other_seeds_differ(xp):
    images = xp.asarray(numpy.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), "uint8"))
    augment = SimCLRAugment.preset("imagenet", size=32)
    first, second = augment.pair(images, numpy.random.default_rng(5))
    again, _ = augment.pair(images, numpy.random.default_rng(5))
    other, _ = augment.pair(images, numpy.random.default_rng(6))
    assert (to_numpy(first) == to_numpy(again)).all()
    assert not numpy.allclose(to_numpy(first), to_numpy(second))
    assert not numpy.allclose(to_numpy(first), to_numpy(other))


def test_eval_augment_is_the_same_crop_and_flip_and_nothing_else(xp):
    images = xp.asarray(numpy.random.default_rng(0).integers(0, 256, (8, 20, 20, 3), "uint8"))
    views = to_numpy(LinearEvalAugment(12)(images, numpy.random.default_rng(3)))
    replay = numpy.random.default_rng(3)
    cropped = random_resized_crop(to_float_nchw(images), replay, (12, 12))
    assert (views == to_numpy(random_horizontal_flip(cropped, replay))).all()


def test_eval_augment_keeps_colours_that_pretraining_distorts(xp):
    colour = numpy.array([0.2, 0.5, 0.7])
    images = xp.asarray(numpy.broadcast_to(colour, (16, 20, 20, 3)).copy())
    views = to_numpy(LinearEvalAugment(12)(images, numpy.random.default_rng(0)))
    want = numpy.broadcast_to(colour.reshape(1, 3, 1, 1), views.shape)
    numpy.testing.assert_allclose(views, want, atol=1e-6)
    distort = SimCLRAugment(12, color_strength=1.0, blur=False)
    distorted = to_numpy(distort(images, numpy.random.default_rng(0)))
    assert not numpy.allclose(distorted, views, atol=1e-3)


def test_presets_follow_the_spec():
    cifar, imagenet = SimCLRAugment.preset("cifar"), SimCLRAugment.preset("imagenet")
    assert (cifar.size, cifar.color_strength, cifar.blur) == ((32, 32), 0.5, False)
    assert (imagenet.size, imagenet.color_strength, imagenet.blur) == ((224, 224), 1.0, True)


def test_bad_inputs_raise_clear_errors():
    augment = SimCLRAugment.preset("cifar")
    rng = numpy.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        augment(numpy.zeros((2, 3, 32, 32), "uint8"), rng)
    with pytest.raises(TypeError, match="uint8 or float"):
        augment(numpy.zeros((2, 32, 32, 3), "int32"), rng)
    with pytest.raises(TypeError, match="Generator"):
        augment(numpy.zeros((2, 32, 32, 3), "uint8"), 0)
    with pytest.raises(ValueError, match="preset 'cifar100'"):
        SimCLRAugment.preset("cifar100")
    with pytest.raises(ValueError, match="size"):
        SimCLRAugment(0)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(numpy.zeros((1, 3, 8, 8)), 1.0, 4)
