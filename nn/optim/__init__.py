"""Optimisers (SGD, LARS) and SimCLR's learning-rate schedule and scaling rules.

One training step: `optimizer.lr = schedule(step)`, forward, backward, `optimizer.step()`,
`optimizer.zero_grad()`.
"""
from .lars import LARS, one_dimensional, trust_ratio
from .optimizer import Optimizer
from .schedule import WarmupCosine, linear_scaled_lr, sqrt_scaled_lr
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "LARS", "trust_ratio", "one_dimensional", "WarmupCosine",
           "linear_scaled_lr", "sqrt_scaled_lr"]
