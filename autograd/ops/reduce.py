"""Reductions over axes: sum, mean, max."""
from ..backend import array_module
from ..function import Function


def normalize_axes(axis, ndim):
    """axis (None, int or tuple, negatives allowed) -> a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor of {ndim} dimensions")
    return tuple(sorted(a % ndim for a in axes))


def expand_to(grad, axes, keepdims, shape):
    """Broadcast the gradient of a reduction back to the input's `shape`."""
    # course: begin expand-to
    xp = array_module(grad)
    if not keepdims:
        grad = xp.expand_dims(grad, axes)
    return xp.broadcast_to(grad, shape)
    # course: end expand-to


class Sum(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes(axis, x.ndim)
        ctx.keepdims, ctx.shape = keepdims, x.shape
        return x.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return expand_to(grad, ctx.axes, ctx.keepdims, ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes(axis, x.ndim)
        ctx.keepdims, ctx.shape = keepdims, x.shape
        ctx.count = 1
        for a in ctx.axes:
            ctx.count *= x.shape[a]
        return x.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        # course: begin mean-backward
        return expand_to(grad / ctx.count, ctx.axes, ctx.keepdims, ctx.shape)
        # course: end mean-backward


class Max(Function):
    """The maximum over axes. Where several elements tie for the maximum, the gradient is
    split equally between them (as torch.amax)."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes = normalize_axes(axis, x.ndim)
        ctx.keepdims = keepdims
        out = x.max(axis=ctx.axes, keepdims=True)
        ctx.save_for_backward(x, out)
        return out if keepdims else out.squeeze(axis=ctx.axes)

    @staticmethod
    def backward(ctx, grad):
        # course: begin max-backward
        x, out = ctx.saved
        winners = (x == out).astype(x.dtype)  # 1 where an element is the maximum
        winners /= winners.sum(axis=ctx.axes, keepdims=True)
        if not ctx.keepdims:
            grad = array_module(grad).expand_dims(grad, ctx.axes)
        return grad * winners
        # course: end max-backward
