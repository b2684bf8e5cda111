"""A procedural data set: one shape per image, the class is the shape.

Everything else is a nuisance a good representation should ignore: the shape's colour,
position, size and rotation, the background colour, and pixel noise. Made from a seed in
well under a second, so tests and offline demos need no files.
"""
import math

import numpy

from simclr.data.dataset import ImageDataset, Splits

BLOCK = 2048  # images rendered at once: bounds the (block, H, W) float temporaries


def _circle(u, v, r):
    return u * u + v * v <= r * r


def _square(u, v, r):
    return numpy.maximum(abs(u), abs(v)) <= 0.8 * r


def _triangle(u, v, r):
    # An equilateral triangle is where three half-planes meet, their normals 120 degrees apart;
    # inradius r/2 puts its corners on the circle of radius r.
    inside = numpy.ones(u.shape, dtype=bool)
    for degrees in (90, 210, 330):
        a = math.radians(degrees)
        inside &= u * math.cos(a) + v * math.sin(a) <= 0.5 * r
    return inside


def _cross(u, v, r):
    return ((abs(u) <= 0.3 * r) & (abs(v) <= r)) | ((abs(v) <= 0.3 * r) & (abs(u) <= r))


def _ring(u, v, r):
    squared = u * u + v * v
    return (squared <= r * r) & (squared >= (0.55 * r) ** 2)


def _bar(u, v, r):
    return (abs(u) <= r) & (abs(v) <= 0.3 * r)


def _half_disc(u, v, r):
    return (u * u + v * v <= r * r) & (v >= 0)


def _frame(u, v, r):
    extent = numpy.maximum(abs(u), abs(v))
    return (extent <= 0.8 * r) & (extent >= 0.45 * r)


# Each takes coordinates (u, v) relative to the shape's centre, already rotated, and its
# radius r, and returns where the shape covers the pixel.
SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross,
          "ring": _ring, "bar": _bar, "half_disc": _half_disc, "frame": _frame}


def synthetic(n, image_size=32, num_classes=4, seed=0):
    """`n` images of `image_size` x `image_size`, labelled by shape, as an ImageDataset.

    Classes are the first `num_classes` (at most 8) of circle, square, triangle, cross, ring,
    bar, half_disc, frame, balanced: each class has n // num_classes or one more image. Each
    image draws a background colour, a shape colour that differs from it by at least 80 in every
    channel (so the shape is always visible), a radius of 22-40% of the image, a position that
    keeps the shape inside, a rotation, and noise of up to +-12 per pixel. The same seed gives
    the same images.
    """
    if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, numpy.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an int of at least 8; got {image_size!r}")
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must lie in 1..{len(SHAPES)} (the shapes {list(SHAPES)}); "
                         f"got {num_classes!r}")
    rng = numpy.random.default_rng(seed)
    labels = rng.permutation(numpy.arange(n) % num_classes).astype(numpy.int64)
    radius = rng.uniform(0.22, 0.40, n) * image_size
    centre = radius[:, None] + rng.random((n, 2)) * (image_size - 2 * radius[:, None])  # (n, 2): y, x
    angle = rng.uniform(0, 2 * math.pi, n)
    background = rng.integers(0, 256, (n, 3))
    foreground = (background + rng.integers(80, 177, (n, 3))) % 256

    pixel = numpy.arange(image_size, dtype=numpy.float32) + 0.5  # pixel centres
    shapes = list(SHAPES.values())[:num_classes]
    images = numpy.empty((n, image_size, image_size, 3), dtype=numpy.uint8)
    for start in range(0, n, BLOCK):
        block = slice(start, min(start + BLOCK, n))
        dy = pixel[None, :, None] - centre[block, 0, None, None].astype(numpy.float32)  # (m, H, 1)
        dx = pixel[None, None, :] - centre[block, 1, None, None].astype(numpy.float32)  # (m, 1, W)
        cos = numpy.cos(angle[block]).astype(numpy.float32)[:, None, None]
        sin = numpy.sin(angle[block]).astype(numpy.float32)[:, None, None]
        u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (m, H, W): rotated coordinates
        r = radius[block].astype(numpy.float32)[:, None, None]
        covered = numpy.zeros(u.shape, dtype=bool)
        for label, shape in enumerate(shapes):
            members = labels[block] == label
            covered[members] = shape(u[members], v[members], r[members])
        colour = numpy.where(covered[..., None], foreground[block, None, None, :],
                             background[block, None, None, :])  # (m, H, W, 3)
        noise = rng.integers(-12, 13, colour.shape)
        images[block] = numpy.clip(colour + noise, 0, 255)
    return ImageDataset(images, labels, list(SHAPES)[:num_classes])


def load_synthetic(n=2000, n_test=500, image_size=32, num_classes=4, seed=0):
    """Splits of synthetic images: `n` for training and `n_test` for testing, drawn from
    independent streams of one seed."""
    train_seed, test_seed = numpy.random.SeedSequence(seed).spawn(2)
    return Splits(train=synthetic(n, image_size, num_classes, train_seed),
                  test=synthetic(n_test, image_size, num_classes, test_seed))
