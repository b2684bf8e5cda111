"""The fully connected layer: y = x W^T + b.

One implementation, the op below, which is its own reference: its products are NumPy's (or
CuPy's) matmul, on the CPU cut into pieces for the threads by cpu/passes.py, which changes no
arithmetic but where BLAS rounds the rows at a piece's edge."""
from autograd import Function, Tensor, array_module
from autograd.ops.arithmetic import check_same_float_dtype

from .cpu import passes


class Linear(Function):
    """y = x W^T (+ b) for x (..., in), W (out, in), b (out,) -> y (..., out).

    dx = dy W,  dW = sum over the leading axes of dy^T x,  db = sum over the leading axes of dy.
    db is added in float64 (one pass over dy, small beside the products): a float32 sum of M
    rows taken one after another errs about sqrt(M) times more than one rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, *bias):
        check_same_float_dtype("linear", x, weight)
        if bias:
            check_same_float_dtype("linear", x, bias[0])
        ctx.save_for_backward(x, weight)
        if x.ndim == 2:  # (N, in) @ (in, out) -> (N, out), split over the CPU's threads
            out = passes.matmul(x, weight.T)
        else:
            out = x @ weight.T  # (..., in) @ (in, out) -> (..., out)
        return out + bias[0] if bias else out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved
        rows = grad.reshape(-1, weight.shape[0])  # (..., out) -> (M, out): M rows of the batch
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # (M, out) @ (out, in) -> (M, in)
            grad_x = passes.matmul(rows, weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:  # (out, M) @ (M, in) -> (out, in)
            grad_weight = passes.matmul_transposed(rows, x.reshape(-1, weight.shape[1]))
        if len(ctx.needs_input_grad) == 2:
            return grad_x, grad_weight
        # db in float64: float32 rows added one after another err in proportion to their count
        grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = rows.sum(axis=0, dtype=array_module(rows).float64).astype(rows.dtype)
        return grad_x, grad_weight, grad_bias


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
        return Linear.apply(x, weight)
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias has shape {bias.shape}, expected ({weight.shape[0]},) "
                         f"for weight of shape {weight.shape}")
    return Linear.apply(x, weight, bias)
