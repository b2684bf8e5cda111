"""SimCLR's data augmentations as batch array operations (NumPy or CuPy), each image with its own
random parameters from an explicit numpy.random.Generator.

Read in the order of the pipeline: crop.py (random resized crop, bicubic; flip), color.py
(colour jitter in a random order, grayscale), blur.py (Gaussian blur), pipeline.py (the presets).
"""
from .blur import blur_kernel_size, gaussian_blur, gaussian_kernels, random_gaussian_blur
from .color import (LUMA_WEIGHTS, adjust_brightness, adjust_contrast, adjust_hue,
                    adjust_saturation, color_jitter, hsv_to_rgb, random_grayscale, rgb_to_grayscale,
                    rgb_to_hsv, sample_jitter)
from .crop import (bicubic_weights, cubic_kernel, horizontal_flip, random_horizontal_flip,
                   random_resized_crop, resized_crop, sample_crop_boxes)
from .pipeline import (PRESETS, TRANSFORMATIONS, LinearEvalAugment, SimCLRAugment,
                       to_float_nchw)

__all__ = [
    "SimCLRAugment", "LinearEvalAugment", "PRESETS", "TRANSFORMATIONS", "to_float_nchw",
    "sample_crop_boxes", "bicubic_weights", "cubic_kernel", "resized_crop", "random_resized_crop",
    "horizontal_flip", "random_horizontal_flip",
    "rgb_to_hsv", "hsv_to_rgb", "adjust_brightness", "adjust_contrast", "adjust_saturation",
    "adjust_hue", "rgb_to_grayscale", "LUMA_WEIGHTS", "sample_jitter", "color_jitter",
    "random_grayscale",
    "blur_kernel_size", "gaussian_kernels", "gaussian_blur", "random_gaussian_blur",
]
