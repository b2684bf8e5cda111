"""Elementwise arithmetic with broadcasting, and matrix multiplication.

Broadcasting copies an operand along some axes in forward, so in backward the gradient
must be summed back along those axes: `unbroadcast` does this once, for every op here.
"""
from ..backend import array_module
from ..function import Function


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`: the reverse of numpy broadcasting.

    (2, 3, 4) -> (3, 1): sum over the leading axis, then over the axis where shape has 1.
    """
    # course: begin unbroadcast
    if grad.shape == shape:
        return grad
    leading = grad.ndim - len(shape)
    if leading:
        grad = grad.sum(axis=tuple(range(leading)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad
    # course: end unbroadcast


def check_same_float_dtype(name, a, b):
    """Refuse float32 (op) float64: NumPy would silently promote a float32 model to float64."""
    if a.dtype != b.dtype and a.dtype.kind == "f" and b.dtype.kind == "f":
        raise TypeError(f"{name}: operands have dtypes {a.dtype} and {b.dtype}; convert one "
                        f"(tensor.to(dtype=...)) so that both have the same precision")


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        check_same_float_dtype("add", a, b)
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, grad):
        # course: begin add-backward
        shape_a, shape_b = ctx.shapes
        return unbroadcast(grad, shape_a), unbroadcast(grad, shape_b)
        # course: end add-backward


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        check_same_float_dtype("subtract", a, b)
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, grad):
        shape_a, shape_b = ctx.shapes
        return unbroadcast(grad, shape_a), unbroadcast(-grad, shape_b)


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        check_same_float_dtype("multiply", a, b)
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        # course: begin mul-backward
        a, b = ctx.saved
        grad_a = unbroadcast(grad * b, a.shape) if ctx.needs_input_grad[0] else None
        grad_b = unbroadcast(grad * a, b.shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b
        # course: end mul-backward


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        check_same_float_dtype("divide", a, b)
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        grad_a = unbroadcast(grad / b, a.shape) if ctx.needs_input_grad[0] else None
        # d(a/b)/db = -a / b^2
        grad_b = unbroadcast(-grad * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


class Pow(Function):
    """a ** b. d/da = b a^(b-1); d/db = a^b ln(a) (defined for a > 0)."""

    @staticmethod
    def forward(ctx, a, b):
        check_same_float_dtype("power", a, b)
        out = a ** b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, out = ctx.saved
        xp = array_module(a)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = unbroadcast(grad * b * a ** (b - 1), a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = unbroadcast(grad * out * xp.log(a), b.shape)
        return grad_a, grad_b


class MatMul(Function):
    """a @ b for arrays of two or more dimensions; leading (batch) dimensions broadcast.

    (..., n, k) @ (..., k, m) -> (..., n, m);  dA = dC B^T,  dB = A^T dC.
    """

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} do not fit: both need two or more "
                f"dimensions and the last dimension of the first must equal the second-to-last "
                f"of the second (reshape a vector to (1, n) or (n, 1))")
        check_same_float_dtype("matmul", a, b)
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        # course: begin matmul-backward
        a, b = ctx.saved
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = unbroadcast(grad @ b.swapaxes(-1, -2), a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = unbroadcast(a.swapaxes(-1, -2) @ grad, b.shape)
        return grad_a, grad_b
        # course: end matmul-backward
