"""SimCLR's augmentation pipeline: one call makes one random view of every image of a batch.

crop (bicubic) -> flip -> colour jitter (p 0.8) -> grayscale (p 0.2) -> Gaussian blur (p 0.5,
ImageNet only). Images come in as the data sets store them, uint8 or float (N, H, W, 3), and
leave as float32 (N, 3, H', W') in [0, 1], ready for the network; no mean/std normalisation
(as the official code). All randomness comes from the numpy.random.Generator passed in, drawn on
the host, so a seed gives the same views on the CPU.
"""
import math

from autograd.backend import device_of
from nn.functional.windows import pair

from . import cuda
from ._batch import apply_to_chosen, check_rng
from .blur import apply_blur, draw_blur
from .color import apply_jitter, draw_grayscale, draw_jitter, rgb_to_grayscale
from .crop import (check_stored_images, draw_flips, horizontal_flip, random_horizontal_flip,
                   random_resized_crop, resized_crop, sample_crop_boxes, to_float_nchw)

# The steps of a view, in order. The augmentation ablations (python -m simclr.experiments
# augmentations) switch them on and off one by one.
TRANSFORMATIONS = ("crop", "flip", "jitter", "grayscale", "blur")

PRESETS = {
    "cifar": dict(size=32, color_strength=0.5, blur=False),
    "imagenet": dict(size=224, color_strength=1.0, blur=True),
}


class SimCLRAugment:
    """The SimCLR pre-training augmentation (docs/SIMCLR.md, Augmentation).

    size: output side (int) or (height, width); color_strength: the colour jitter strength s;
    blur: whether to Gaussian-blur (p 0.5). SimCLRAugment.preset("cifar") is s = 0.5 without
    blur at 32x32, SimCLRAugment.preset("imagenet") is s = 1 with blur at 224x224.
    transformations: for ablations, the steps that run, any of TRANSFORMATIONS (it then
    decides the blur too). A step switched off leaves the images as they are: no crop is the
    whole image resized to `size` (unchanged when the sizes agree), no jitter and no grayscale
    leave the colours. Every random number is still drawn, so the steps that do run see the
    same draws as in the full pipeline.
    """

    def __init__(self, size, color_strength=1.0, blur=True, transformations=None):
        self.size = pair(size, f"{type(self).__name__}: size", 1)
        self.color_strength = float(color_strength)
        if not (math.isfinite(self.color_strength) and self.color_strength >= 0):
            raise ValueError(f"color_strength must be a finite number >= 0, got {color_strength!r}")
        if transformations is None:
            transformations = TRANSFORMATIONS if blur else TRANSFORMATIONS[:-1]
        unknown = set(transformations) - set(TRANSFORMATIONS)
        if unknown:
            raise ValueError(f"unknown transformations {sorted(unknown)}: expected some of "
                             f"{', '.join(TRANSFORMATIONS)}")
        self.transformations = tuple(t for t in TRANSFORMATIONS if t in transformations)
        self.blur = "blur" in self.transformations

    @classmethod
    def preset(cls, name, size=None):
        """The augmentation of the recipe `name` ('cifar' or 'imagenet'); `size` overrides its
        output size."""
        if name not in PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}: expected one of "
                             f"{sorted(PRESETS)}")
        settings = dict(PRESETS[name])
        if size is not None:
            settings["size"] = size
        return cls(**settings)

    def __call__(self, images, rng, rows=None):
        """One random view of each image: (N, H, W, 3) uint8 or float -> float32 (N, 3, H', W').

        Every random number is drawn first, on the host, in the order of the steps (the
        random_* functions draw the same): so a seed gives the same view on either device.
        On the CPU the steps are the NumPy ops of crop.py, color.py and blur.py; on a GPU,
        augment/cuda.py's kernels, four launches for the lot.

        rows=(start, total): the images are rows start.. of a batch of `total` (one rank's
        shard in a data-parallel run): the draws are made for the whole batch and these rows'
        taken, so that each image gets the view it would get in one process."""
        check_rng(rng)
        check_stored_images(images)
        count, height, width = images.shape[:3]
        start, total = (0, count) if rows is None else rows
        draws = self.draw(rng, total, height, width)
        if rows is not None:
            draws = _rows(draws, start, start + count)
        return self.apply(images, *draws)

    def draw(self, rng, count, height, width):
        """The random parameters of `count` views of images of height x width, in the order
        of the steps: (crop boxes, flips, colour jitter, grayscale, blur or None); a step
        that is switched off draws as it would, then chooses no image (no crop: whole boxes)."""
        boxes = sample_crop_boxes(rng, count, height, width)    # random_resized_crop's draws
        flips = draw_flips(rng, count)                          # random_horizontal_flip's
        jitter = draw_jitter(rng, count, self.color_strength)   # color_jitter's
        grayscale = draw_grayscale(rng, count)                  # random_grayscale's
        blur = draw_blur(rng, count) if self.blur else None     # random_gaussian_blur's
        on = set(self.transformations)
        if "crop" not in on:
            boxes[:] = (0, 0, height, width)
        for step, chosen in (("flip", flips), ("jitter", jitter[0]), ("grayscale", grayscale)):
            if step not in on:
                chosen[:] = False
        return boxes, flips, jitter, grayscale, blur

    def apply(self, images, boxes, flips, jitter, grayscale, blur):
        """The views of `images` for draws of `draw`."""
        if device_of(images) == "cuda":
            views = cuda.crop_resize_flip(images, boxes, flips, self.size)
            views = cuda.distort_colors(views, *jitter, grayscale)
            return views if blur is None else cuda.blur(views, *blur)
        views = resized_crop(to_float_nchw(images), boxes, self.size)
        views = apply_to_chosen(views, flips, horizontal_flip)
        views = apply_to_chosen(apply_jitter(views, *jitter), grayscale, rgb_to_grayscale)
        return views if blur is None else apply_blur(views, *blur)

    def pair(self, images, rng, rows=None):
        """Two independent views of each image (the positive pair): a tuple of two
        float32 (N, 3, H', W') arrays, as two calls of __call__ make them. rows: as for
        __call__."""
        return self.pair_on_demand(images, rng, rows)(0, len(images))

    def pair_on_demand(self, images, rng, rows=None):
        """pair's views, drawn now and made later, a run of images at a time: returns
        views(start, stop), the two views of images start..stop-1, bit for bit those that two
        calls of __call__(images, rng, rows) give them (the draws are made in the same order,
        and each view depends on its image and its draws alone). A step that takes its images a few at a time (simclr/pretraining.py,
        --micro-batch) then never holds the whole batch's views: at 224 px, 4,096 images
        have 4.6 GiB of them, and more of the colour steps' temporaries."""
        check_rng(rng)
        check_stored_images(images)
        count, height, width = images.shape[:3]
        first, total = (0, count) if rows is None else rows
        draws = [self.draw(rng, total, height, width) for _ in range(2)]   # as pair's calls

        def views(start, stop):
            part = images[start:stop]
            return tuple(self.apply(part, *_rows(d, first + start, first + stop)) for d in draws)
        return views

    def __repr__(self):
        steps = "" if self.transformations in (TRANSFORMATIONS, TRANSFORMATIONS[:-1]) \
            else f", transformations={self.transformations}"
        return (f"SimCLRAugment(size={self.size}, color_strength={self.color_strength}, "
                f"blur={self.blur}{steps})")


def _rows(draws, start, stop):
    """The part of SimCLRAugment.draw's draws that belongs to images start..stop-1."""
    boxes, flips, (jittered, params, order), grayscale, blur = draws
    part = slice(start, stop)
    return (boxes[part], flips[part], (jittered[part], params[:, part], order[part]),
            grayscale[part], None if blur is None else tuple(b[part] for b in blur))


class LinearEvalAugment:
    """The augmentation for training the linear probe: random resized crop and flip only, no
    colour ops (official). Test images take no augmentation: use to_float_nchw."""

    def __init__(self, size):
        self.size = pair(size, f"{type(self).__name__}: size", 1)

    def __call__(self, images, rng):
        """(N, H, W, 3) uint8 or float -> float32 (N, 3, H', W')."""
        check_rng(rng)
        views = random_resized_crop(to_float_nchw(images), rng, self.size)
        return random_horizontal_flip(views, rng)

    def __repr__(self):
        return f"LinearEvalAugment(size={self.size})"
