"""Activations and their log-space relatives: relu, log_softmax, logsumexp."""
from autograd import Function, Tensor, array_module
from autograd.ops.reduce import normalize_axes

from .dispatch import reference


def _check_tensor(name, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input is a {type(x).__name__}, expected a Tensor")


def _check_dim(name, dim, ndim):
    if not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"{name}: dim={dim!r} is out of range for a tensor of {ndim} "
                         f"dimensions (expected an int in [{-ndim}, {ndim - 1}])")


class ReLU(Function):
    """max(x, 0); the derivative is 1 where x > 0 and 0 elsewhere (0 at x = 0, as PyTorch)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)
        return array_module(x).maximum(x, 0)  # not x * (x > 0): -inf * 0 would be nan

    @staticmethod
    def backward(ctx, grad):
        # course: begin relu-backward
        (positive,) = ctx.saved
        return grad * positive
        # course: end relu-backward


class LogSoftmax(Function):
    """y = x - log sum_j exp(x_j) along `dim`; dx = g - softmax(x) * sum_j g_j.

    The maximum m is subtracted first, so exp never overflows:
    log sum exp(x) = m + log sum exp(x - m).
    """

    @staticmethod
    def forward(ctx, x, dim):
        xp = array_module(x)
        shifted = x - x.max(axis=dim, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
        ctx.dim = dim
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        # course: begin log-softmax-backward
        (out,) = ctx.saved
        softmax = array_module(out).exp(out)
        return grad - softmax * grad.sum(axis=ctx.dim, keepdims=True)
        # course: end log-softmax-backward


class LogSumExp(Function):
    """y = log sum exp(x) over `axes`, computed as m + log sum exp(x - m) with m the maximum;
    dx = g * softmax(x) (softmax taken over the same axes)."""

    @staticmethod
    def forward(ctx, x, axes, keepdims):
        xp = array_module(x)
        peak = x.max(axis=axes, keepdims=True)
        out = peak + xp.log(xp.exp(x - peak).sum(axis=axes, keepdims=True))  # axes kept as 1
        ctx.axes, ctx.keepdims = axes, keepdims
        ctx.save_for_backward(xp.exp(x - out))  # softmax of x over the axes
        return out if keepdims else out.squeeze(axis=axes)

    @staticmethod
    def backward(ctx, grad):
        (softmax,) = ctx.saved
        if not ctx.keepdims:
            grad = array_module(grad).expand_dims(grad, ctx.axes)
        return grad * softmax


def relu(x):
    """max(x, 0) elementwise; any shape."""
    _check_tensor("relu", x)
    return reference("relu", ReLU).apply(x)


def log_softmax(x, dim=-1):
    """log(softmax(x)) along `dim`, computed stably; the output has x's shape."""
    _check_tensor("log_softmax", x)
    _check_dim("log_softmax", dim, x.ndim)
    return reference("log_softmax", LogSoftmax).apply(x, dim=dim)


def logsumexp(x, dim, keepdim=False):
    """log sum exp(x) over `dim` (an int or a tuple of ints), as torch.logsumexp.

    x: any shape; the reduced axes are removed, or kept with size 1 when keepdim=True.
    """
    _check_tensor("logsumexp", x)
    for d in (dim,) if isinstance(dim, int) else tuple(dim):
        _check_dim("logsumexp", d, x.ndim)
    return LogSumExp.apply(x, axes=normalize_axes(dim, x.ndim), keepdims=keepdim)
