"""What every random step shares: per-image parameters and applying a step to some images.

Random parameters are drawn on the host from a numpy.random.Generator, in float64, one small
vector per batch; they go to the device in the images' dtype only when used, so a float32
batch never meets a float64 array (NumPy would promote the whole batch to float64).
"""
import numpy

from autograd.backend import array_module


def check_rng(rng):
    """Raise a TypeError unless `rng` is a numpy.random.Generator."""
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")


def check_nchw_rgb(images):
    """Raise a ValueError or TypeError unless `images` is a float batch (N, 3, H, W)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (N, 3, H, W), got shape {images.shape}")
    if images.dtype.kind != "f":
        raise TypeError(f"expected float images in [0, 1], got dtype {images.dtype}")


def per_image(values, images):
    """`values` (a scalar or one per image) as an array of the images' module and dtype, shaped
    to broadcast over (N, C, H, W): (N,) -> (N, 1, 1, 1)."""
    xp = array_module(images)
    return xp.asarray(values, dtype=images.dtype).reshape(-1, 1, 1, 1)


def apply_to_chosen(images, chosen, step, *params):
    """Replace, in place, the images marked in the host bool mask `chosen` (N,) by
    step(those images, *their params); each param is a host array with one value per image.

    Only the chosen images are computed, so a step taken with probability p costs about p of a
    full pass. Callers pass an array they own (a copy of the user's batch, never the batch).
    """
    index = numpy.flatnonzero(chosen)
    if index.size:
        on_device = array_module(images).asarray(index)
        images[on_device] = step(images[on_device], *(param[index] for param in params))
    return images
