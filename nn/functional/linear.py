"""The fully connected layer: y = x W^T + b.

For x (..., in), W (out, in), b (out,), with the leading axes of x and dy flattened into M
rows (x (M, in), dy (M, out)):

    y  = x W^T + b                   (M, out)
    dx = dy W                        (M, in)
    dW = dy^T x = sum_m dy_m x_m^T   (out, in): a sum over the batch's rows
    db = sum_m dy_m                  (out,)

Which implementation runs (`implementation`, nn/functional/dispatch.py): LinearReference,
below, the formulas as written, inside use_reference(); otherwise the kernel of the input's
device, the same three products: cpu/linear.py's, the products cut into pieces for the
threads, or cuda/linear.py's, cuBLAS's products. Both add dW's and db's sums over the rows in
an order chosen for float32's accuracy (nn/runtime/parallel.py: matmul_transposed, db in
float64); the tests hold them to the reference.
"""
from autograd import Function, Tensor
from autograd.ops.arithmetic import check_same_float_dtype

from .cpu.linear import LinearThreaded
from .cuda.linear import LinearCuda
from .dispatch import on_gpu, reference, reference_chosen


class LinearReference(Function):
    """y = x W^T (+ b) for x (..., in), W (out, in), b (out,) -> y (..., out), by the formulas
    of the module docstring: dx = dy W, dW = dy^T x, db = sum(dy), over the rows of dy."""

    @staticmethod
    def forward(ctx, x, weight, *bias):
        check_same_float_dtype("linear", x, weight)
        if bias:
            check_same_float_dtype("linear", x, bias[0])
        ctx.save_for_backward(x, weight)
        out = x @ weight.T                         # (..., in) @ (in, out) -> (..., out)
        return out + bias[0] if bias else out

    @staticmethod
    def backward(ctx, grad):
        # course: begin linear-backward
        x, weight = ctx.saved
        rows = grad.reshape(-1, weight.shape[0])   # (..., out) -> (M, out)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:                # (M, out) @ (out, in) -> (..., in)
            grad_x = (rows @ weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:                # (out, M) @ (M, in) -> (out, in)
            grad_weight = rows.T @ x.reshape(-1, weight.shape[1])
        if len(ctx.needs_input_grad) == 2:
            return grad_x, grad_weight
        if ctx.needs_input_grad[2]:                # (M, out) -> (out,)
            grad_bias = rows.sum(axis=0)
        return grad_x, grad_weight, grad_bias
        # course: end linear-backward


def implementation(x):
    """The Function that computes this layer (see the module docstring)."""
    if reference_chosen():
        return reference("linear", LinearReference)
    if on_gpu(x):
        return LinearCuda
    return LinearThreaded


def linear(x, weight, bias=None):
    """y = x W^T + b, as torch.nn.functional.linear.

    x: (..., in) (typically (N, in)); weight: (out, in); bias: (out,) or None -> (..., out).
    """
    for name, value in (("x", x), ("weight", weight), ("bias", bias)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"linear: {name} is a {type(value).__name__}, expected a Tensor")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight has shape {weight.shape}, expected (out_features, "
                         f"in_features)")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} does not fit weight of shape "
                         f"{weight.shape}: the input's last dimension must be "
                         f"in_features={weight.shape[1]}")
    if bias is None:
        return implementation(x).apply(x, weight)
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias has shape {bias.shape}, expected ({weight.shape[0]},) "
                         f"for weight of shape {weight.shape}")
    return implementation(x).apply(x, weight, bias)
