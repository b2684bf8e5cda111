"""Ops that move values without changing them: reshape, transpose, indexing, cat, stack."""
from ..backend import array_module, scatter_add
from ..function import Function


class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Transpose(Function):
    @staticmethod
    def forward(ctx, x, axes=None):
        axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of a tensor's "
                             f"{x.ndim} axes")
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        inverse = [0] * len(ctx.axes)
        for position, axis in enumerate(ctx.axes):
            inverse[axis] = position
        return grad.transpose(inverse)


def _is_advanced(index):
    """True if `index` uses arrays or lists (which may repeat an element)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "shape") or isinstance(p, list) for p in parts)


class GetItem(Function):
    """x[index] with numpy's basic and advanced indexing. A repeated index receives the
    sum of its gradients (scatter-add), so x[[0, 0]] is differentiated correctly."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.index, ctx.shape, ctx.dtype = index, x.shape, x.dtype
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        grad_x = xp.zeros(ctx.shape, dtype=ctx.dtype)
        if _is_advanced(ctx.index):
            scatter_add(xp, grad_x, ctx.index, grad)
        else:
            grad_x[ctx.index] = grad  # basic indexing selects each element at most once
        return grad_x


class Cat(Function):
    """Join tensors along an existing axis."""

    @staticmethod
    def forward(ctx, *arrays, axis=0):
        xp = array_module(*arrays)
        ctx.axis = axis
        ctx.sizes = [a.shape[axis] for a in arrays]
        return xp.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        boundaries = []
        for size in ctx.sizes[:-1]:
            boundaries.append(size + (boundaries[-1] if boundaries else 0))
        return tuple(xp.split(grad, boundaries, axis=ctx.axis))


class Stack(Function):
    """Join tensors of one shape along a new axis."""

    @staticmethod
    def forward(ctx, *arrays, axis=0):
        xp = array_module(*arrays)
        ctx.axis = axis
        return xp.stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        count = grad.shape[ctx.axis]
        return tuple(xp.take(grad, i, axis=ctx.axis) for i in range(count))


def cat(tensors, axis=0):
    """Concatenate a sequence of tensors along `axis` (torch.cat)."""
    return Cat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Stack a sequence of tensors of one shape along a new `axis` (torch.stack)."""
    return Stack.apply(*tensors, axis=axis)
