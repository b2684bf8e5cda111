"""The fully connected layer on the CPU: its three products cut into pieces for the threads.

The op, its math and its reference are in nn/functional/linear.py (read that first). The
products are NumPy's matmul, split by nn/runtime/parallel.py into pieces that the threads
take as they come free; that changes no arithmetic but where BLAS rounds the rows at a
piece's edge.
"""
import numpy

from autograd import Function
from autograd.ops.arithmetic import check_same_float_dtype
from nn.runtime import parallel


class LinearThreaded(Function):
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
        if x.ndim == 2:  # (N, in) @ (in, out) -> (N, out), split over the threads
            out = parallel.matmul(x, weight.T)
        else:
            out = x @ weight.T  # (..., in) @ (in, out) -> (..., out)
        return out + bias[0] if bias else out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved
        rows = grad.reshape(-1, weight.shape[0])  # (..., out) -> (M, out): M rows of the batch
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # (M, out) @ (out, in) -> (M, in)
            grad_x = parallel.matmul(rows, weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:  # (out, M) @ (M, in) -> (out, in)
            grad_weight = parallel.matmul_transposed(rows, x.reshape(-1, weight.shape[1]))
        if len(ctx.needs_input_grad) == 2:
            return grad_x, grad_weight
        grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = rows.sum(axis=0, dtype=numpy.float64).astype(rows.dtype)
        return grad_x, grad_weight, grad_bias
