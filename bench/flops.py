"""Counting a model's floating-point operations from the shapes its layers see.

Only the products are counted, as is usual: a multiply-add is 2 FLOPs, so

    convolution  2 * (N * F * Ho * Wo) * (C * kh * kw)     (every output element is a dot
    linear       2 * (N * out_features) * in_features        product of one window or row)

Batch norm, ReLU, pooling, additions and the loss are a few percent at most and left out.
A training step costs about 3 forward passes: the forward itself, then in backward one
product for the input gradient and one for the weight gradient, each as large as the
forward's (the first convolution needs no input gradient, so 3x slightly overstates it).
"""
import numpy

import nn
from autograd import Tensor, no_grad

TRAINING_STEP_FORWARDS = 3


def _layer_flops(module, out):
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return 2 * out.size * module.in_channels * kh * kw
    return 2 * out.size * module.in_features


def forward_flops(model, input_shape, device="cpu"):
    """FLOPs of one forward pass of `model` (an nn.Module) on a batch of `input_shape`, counted
    from the output shape of every nn.Conv2d and nn.Linear on one pass of that shape.

    The pass runs in evaluation mode under no_grad (batch-norm statistics are not touched)
    and the model is left in the mode it was in."""
    xp = numpy if device == "cpu" else __import__("cupy")
    counted = []
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def counting(module):
        layer_forward = module.forward

        def forward(x):
            out = layer_forward(x)
            counted.append(_layer_flops(module, out))
            return out
        return forward

    was_training = model.training
    for layer in layers:
        layer.forward = counting(layer)  # an instance attribute shadows the class's forward
    try:
        model.eval()
        with no_grad():
            model(Tensor(xp.zeros(input_shape, dtype=xp.float32)))
    finally:
        for layer in layers:
            del layer.forward
        model.train(was_training)
    return sum(counted)


def torch_forward_flops(model, example):
    """The same count for a PyTorch model, from forward hooks on its Conv2d and Linear layers
    (a cross-check that both sides run the same network)."""
    import torch

    counted = []

    def hook(module, inputs, out):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            counted.append(2 * out.numel() * module.in_channels // module.groups * kh * kw)
        else:
            counted.append(2 * out.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return sum(counted)
