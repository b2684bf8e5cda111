"""The fully connected layer on the GPU: cuBLAS's three products.

The op, its math and its reference are in nn/functional/linear.py (read that first). As the
CPU kernel (cpu/linear.py) it adds the weight gradient's sum over the rows by
nn/runtime/parallel.py's matmul_transposed (a short sum in runs, for float32's accuracy) and
the bias gradient in float64, so that both devices round these sums alike.
"""
from autograd import Function, array_module
from autograd.ops.arithmetic import check_same_float_dtype
from nn.runtime import parallel


class LinearCuda(Function):
    """y = x W^T (+ b) on CuPy arrays, as the CPU's LinearThreaded computes it."""

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
        x, weight = ctx.saved
        rows = grad.reshape(-1, weight.shape[0])   # (..., out) -> (M, out)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:                # (M, out) @ (out, in) -> (..., in)
            grad_x = (rows @ weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:                # (out, M) @ (M, in) -> (out, in)
            grad_weight = parallel.matmul_transposed(rows, x.reshape(-1, weight.shape[1]))
        if len(ctx.needs_input_grad) == 2:
            return grad_x, grad_weight
        grad_bias = None
        if ctx.needs_input_grad[2]:                # in float64, rounded once
            grad_bias = rows.sum(axis=0, dtype=array_module(rows).float64).astype(rows.dtype)
        return grad_x, grad_weight, grad_bias
