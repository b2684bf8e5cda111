"""Elementwise functions of one tensor."""
from ..backend import array_module
from ..function import Function


class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        out = array_module(x).exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        # course: begin exp-backward
        (out,) = ctx.saved
        return grad * out  # d e^x / dx = e^x
        # course: end exp-backward


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return array_module(x).log(x)

    @staticmethod
    def backward(ctx, grad):
        # course: begin log-backward
        (x,) = ctx.saved
        return grad / x
        # course: end log-backward


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        out = array_module(x).sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad / (2 * out)  # d sqrt(x) / dx = 1 / (2 sqrt(x))
