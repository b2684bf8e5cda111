"""The SimCLR model: an encoder f (a ResNet without its classifier) and a projection head g.

    x --f--> h (the representation used downstream) --g--> z (the input of NT-Xent)
"""
import numbers

import nn
from nn import init

HEADS = ("nonlinear", "linear", "none")


def dense(in_features, out_features, rng=None):
    """A Linear layer as the official code starts its dense layers: weights N(0, 0.01^2), biases
    0 (the projection head's, and fine-tuning's new classifier)."""
    rng = init.as_generator(rng)
    layer = nn.Linear(in_features, out_features, rng=rng)
    init.normal_(layer.weight, 0.0, 0.01, rng)
    init.zeros_(layer.bias)
    return layer


def projection_head(kind, in_features, proj_dim=128, rng=None):
    """The paper's head variants (section 4.2): "nonlinear" (v1: Linear -> BN -> ReLU -> Linear),
    "linear" (one Linear) or "none" (z = h). Dense weights start as N(0, 0.01^2) and biases at
    0, as in the official code. (The official v1 code also ends with a BN without beta; we follow
    the paper's figure and omit it.)"""
    rng = init.as_generator(rng)
    if kind == "nonlinear":
        return nn.Sequential(dense(in_features, in_features, rng), nn.BatchNorm1d(in_features),
                             nn.ReLU(), dense(in_features, proj_dim, rng))
    if kind == "linear":
        return dense(in_features, proj_dim, rng)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown projection head {kind!r}: expected one of {', '.join(HEADS)}")


class SimCLR(nn.Module):
    """encoder: a module mapping images (N, 3, H, W) to representations h (N, D), with the
    attribute `num_features` = D (as nn.ResNet has); `forward` returns the projections z."""

    def __init__(self, encoder, head="nonlinear", proj_dim=128, rng=None):
        super().__init__()
        self.encoder = encoder
        if not hasattr(encoder, "num_features"):
            raise TypeError(f"the encoder ({type(encoder).__name__}) must say the size of its "
                            f"output in an attribute num_features, as nn.ResNet does")
        if isinstance(proj_dim, bool) or not isinstance(proj_dim, numbers.Integral) or proj_dim < 1:
            raise ValueError(f"proj_dim must be a positive int, got {proj_dim!r}")
        self.head = projection_head(head, encoder.num_features, proj_dim, rng)

    def forward(self, x):
        return self.head(self.encoder(x))

