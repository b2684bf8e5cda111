"""Gradient checking: is backward() right? Compare it with finite differences.

For a function f and an upstream gradient u of f's output shape, backward() computes
the vector-Jacobian product  g = u^T df/dx.  The same quantity is the derivative of the
scalar  s(x) = sum(f(x) * u), which central differences estimate one element at a time:

    g[i] ~ (s(x + eps e_i) - s(x - eps e_i)) / (2 eps)

u is random, never all ones: with u = 1 the check only sees d sum(f)/dx, and for some ops
that is identically zero whatever the backward pass does (training-mode batch norm:
sum(BN(x)) = N * sum(beta) does not depend on x), so a wrong gradient would pass.

Everything runs in float64: with eps = 1e-6, float32 rounding (about 1e-7 relative)
would swamp the difference being measured.
"""
import numpy

from .backend import array_module, to_numpy
from .function import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """backward() disagrees with finite differences; the message says where and by how much."""


def _checked_inputs(inputs):
    inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    for position, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"gradcheck: input {position} is a {type(t).__name__}; pass Tensors")
        if t.requires_grad and t.dtype != numpy.float64:
            raise TypeError(
                f"gradcheck: input {position} has dtype {t.dtype}; gradient checks need float64 "
                f"(finite differences with eps=1e-6 in float32 measure rounding noise, not the "
                f"derivative): use Tensor(x.astype('float64'), requires_grad=True)")
    if not any(t.requires_grad for t in inputs):
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    return inputs


def _scalar(fn, inputs, upstream):
    """s = sum(fn(*inputs) * upstream), as a Python float."""
    out = fn(*inputs)
    return float((out.data * upstream).sum())


def numerical_grad(fn, inputs, upstream, eps=1e-6):
    """Central-difference estimate of upstream^T d fn(*inputs) / d input, for each input.

    Returns a list with one array per input (None for inputs without requires_grad).
    Each element of each input is nudged by +eps and -eps in place, then restored.
    """
    inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    upstream = upstream.data if isinstance(upstream, Tensor) else upstream
    grads = []
    with no_grad():
        for t in inputs:
            if not t.requires_grad:
                grads.append(None)
                continue
            xp = array_module(t.data)
            grad = xp.zeros(t.shape, dtype=t.dtype)
            for index in numpy.ndindex(*t.shape):  # (works for non-contiguous arrays too)
                original = t.data[index].item()
                t.data[index] = original + eps
                plus = _scalar(fn, inputs, upstream)
                t.data[index] = original - eps
                minus = _scalar(fn, inputs, upstream)
                t.data[index] = original
                grad[index] = (plus - minus) / (2 * eps)
            grads.append(grad)
    return grads


def _hint(analytic, numeric):
    """A guess at the kind of bug behind a mismatch, for the error message."""
    scale = float(numpy.abs(numeric).max())
    if not numpy.any(analytic):
        return "backward() gave all zeros: is a gradient dropped, or returned as None?"
    if scale > 0 and numpy.allclose(analytic, -numeric, rtol=1e-3, atol=1e-6 * scale):
        return "analytic = -numeric everywhere: a sign error in backward()."
    ratio = analytic.reshape(-1) @ numeric.reshape(-1) / max(numeric.reshape(-1) @ numeric.reshape(-1), 1e-300)
    if scale > 0 and numpy.allclose(analytic, ratio * numeric, rtol=1e-3, atol=1e-6 * scale):
        return (f"analytic = {ratio:.6g} x numeric everywhere: a constant factor is missing or "
                f"extra (a count, a 1/N, a 2 from a square?).")
    return ("the error is not a sign or a constant factor: check each term of the derivative, "
            "and the handling of broadcasting (unbroadcast) and of axes.")


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check fn's backward() against central finite differences, in float64.

    fn:      a function of the tensors `inputs` returning one Tensor.
    inputs:  Tensors; those with requires_grad=True are checked (they must be float64).
    An element passes when |analytic - numeric| <= atol + rtol * |numeric|.

    Returns True, or raises GradcheckError naming the input, the worst element's index,
    both values and the tolerance.
    """
    inputs = _checked_inputs(inputs)
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn returned a {type(out).__name__}, expected a Tensor")
    xp = array_module(out.data)
    upstream = xp.asarray(numpy.random.default_rng(seed).standard_normal(out.shape))
    saved_grads = [t.grad for t in inputs]
    for t in inputs:
        t.grad = None
    try:
        if out.requires_grad:
            out.backward(upstream)
        analytic = [None if not t.requires_grad else
                    (t.grad if t.grad is not None else xp.zeros(t.shape, dtype=t.dtype))
                    for t in inputs]
    finally:
        for t, g in zip(inputs, saved_grads):
            t.grad = g
    numeric = numerical_grad(fn, inputs, upstream, eps)

    for position, (t, a, n) in enumerate(zip(inputs, analytic, numeric)):
        if a is None:
            continue
        a, n = to_numpy(a), to_numpy(n)
        excess = numpy.abs(a - n) - (atol + rtol * numpy.abs(n))
        if excess.max() > 0:
            worst = numpy.unravel_index(int(excess.argmax()), a.shape)
            bad = int((excess > 0).sum())
            raise GradcheckError(
                f"gradient of input {position} (shape {tuple(t.shape)}) is wrong at {bad} of "
                f"{a.size} elements.\n"
                f"  worst element {tuple(int(i) for i in worst)}: analytic (backward) "
                f"{a[worst]:.10g}, numeric (finite differences) {n[worst]:.10g}, "
                f"difference {abs(a[worst] - n[worst]):.3g}, "
                f"tolerance {atol + rtol * abs(n[worst]):.3g} (atol={atol} + rtol={rtol} * |numeric|)\n"
                f"  hint: {_hint(a, n)}")
    return True
