"""Weight initialisation, as torchvision's ResNet does it.

    conv weights       Kaiming (He) normal, fan_out, ReLU gain: N(0, 2 / (C_out * kh * kw))
    batch-norm         gamma = 1, beta = 0
    linear layers      weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))  (torch's default)

Randomness comes only from an explicit numpy.random.Generator. Values are drawn on the host
in float64, then cast to the tensor's dtype and copied to its device, so one seed gives the
same weights on the CPU and the GPU. Each function fills a Parameter in place (the trailing
underscore, as torch.nn.init) and returns it.
"""
import math

import numpy

from autograd.backend import device_of, to_device

GAINS = {"linear": 1.0, "relu": math.sqrt(2.0)}


def as_generator(rng):
    """None -> a fresh numpy.random.default_rng(); an int -> default_rng(seed); a Generator
    is returned as it is (so several layers can draw one after another from one stream)."""
    if rng is None:
        return numpy.random.default_rng()
    if isinstance(rng, numpy.random.Generator):
        return rng
    if isinstance(rng, (int, numpy.integer)) and not isinstance(rng, bool):
        return numpy.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, "
                    f"got a {type(rng).__name__}")


def fan_in_and_fan_out(shape):
    """Fans of a weight of shape (out, in) or (out, in, kh, kw): (in*kh*kw, out*kh*kw)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in and fan_out need a weight of at least 2 dimensions, "
                         f"got shape {tuple(shape)}")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def _fill(tensor, values):
    """Copy host float64 `values` into `tensor`, keeping its dtype and device."""
    tensor.data[...] = to_device(values.astype(tensor.dtype), device_of(tensor.data))
    return tensor


def kaiming_normal_(tensor, mode="fan_out", nonlinearity="relu", rng=None):
    """Fill with N(0, std^2), std = gain / sqrt(fan): He et al. 2015, as torchvision's ResNet
    (mode "fan_out", nonlinearity "relu": std = sqrt(2 / (C_out * kh * kw)))."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    if nonlinearity not in GAINS:
        raise ValueError(f"nonlinearity must be one of {sorted(GAINS)}, got {nonlinearity!r}")
    fan_in, fan_out = fan_in_and_fan_out(tensor.shape)
    std = GAINS[nonlinearity] / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    return _fill(tensor, as_generator(rng).normal(0.0, std, size=tensor.shape))


def uniform_(tensor, low, high, rng=None):
    """Fill with U(low, high)."""
    return _fill(tensor, as_generator(rng).uniform(low, high, size=tensor.shape))


def normal_(tensor, mean=0.0, std=1.0, rng=None):
    """Fill with N(mean, std^2) (SimCLR's head uses std 0.01)."""
    return _fill(tensor, as_generator(rng).normal(mean, std, size=tensor.shape))


def constant_(tensor, value):
    """Fill with one value."""
    return _fill(tensor, numpy.full(tensor.shape, value, dtype="float64"))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)
