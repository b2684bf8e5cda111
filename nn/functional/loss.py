"""Losses: cross-entropy over class logits.

Which implementation runs (`implementation`, nn/functional/dispatch.py): CrossEntropy, below,
the formulas as written, inside use_reference() and on the CPU (where its few whole-array
NumPy calls are the kernel); on a GPU, cuda/loss.py's kernels, two launches forward and one
backward.
"""
from autograd import Function, Tensor, array_module, to_numpy

from .cuda.loss import CrossEntropyCuda
from .dispatch import on_gpu, reference, reference_chosen


class CrossEntropy(Function):
    """L = -(1/N) sum_i log softmax(z_i)[t_i] for logits z (N, C) and class indices t (N,).

    dL/dz = (softmax(z) - onehot(t)) / N, scaled by the upstream gradient g (a scalar).
    The log-softmax subtracts each row's maximum first, so exp never overflows.
    """

    @staticmethod
    def forward(ctx, logits, target):
        xp = array_module(logits, target)
        n = logits.shape[0]
        rows = xp.arange(n)
        # course: begin cross-entropy-forward
        shifted = logits - logits.max(axis=1, keepdims=True)  # (N, C), each row's maximum 0
        exp = xp.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)  # (N, 1)
        ctx.save_for_backward(exp / total, target)
        log_likelihood = shifted[rows, target] - xp.log(total[:, 0])  # (N,): log p(t_i | z_i)
        return -log_likelihood.mean()
        # course: end cross-entropy-forward

    @staticmethod
    def backward(ctx, grad):
        # course: begin cross-entropy-backward
        softmax, target = ctx.saved
        n = softmax.shape[0]
        grad_logits = softmax.copy()
        grad_logits[array_module(softmax).arange(n), target] -= 1  # softmax - onehot(target)
        return grad_logits * (grad / n)
        # course: end cross-entropy-backward


def implementation(logits):
    """The Function that computes the cross-entropy of these logits (see the module docstring)."""
    if reference_chosen():
        return reference("cross_entropy", CrossEntropy)
    if on_gpu(logits):
        return CrossEntropyCuda
    return CrossEntropy


def cross_entropy(logits, target, check_targets=True):
    """Mean cross-entropy of class logits against integer class labels (torch's default
    reduction='mean'): -(1/N) sum_i log softmax(logits_i)[target_i].

    logits: Tensor (N, C) of floats; target: Tensor or array (N,) of integers in [0, C).
    Returns a scalar Tensor. check_targets=False skips the check that every target lies in
    [0, C), which reads them on the host (on a GPU, a wait for the device): for targets that
    are valid by construction, as NT-Xent's.
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"cross_entropy: logits is a {type(logits).__name__}, expected a Tensor")
    target = target.data if isinstance(target, Tensor) else target
    if not hasattr(target, "dtype"):
        raise TypeError(f"cross_entropy: target is a {type(target).__name__}, expected a Tensor "
                        f"or array of integer class indices")
    if logits.ndim != 2 or logits.dtype.kind != "f":
        raise ValueError(f"cross_entropy: logits have shape {logits.shape} and dtype "
                         f"{logits.dtype}, expected a floating-point (N, C) array")
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target has dtype {target.dtype}, expected integer class "
                        f"indices (e.g. int64), not one-hot vectors or probabilities")
    n, classes = logits.shape
    if target.shape != (n,):
        raise ValueError(f"cross_entropy: target has shape {target.shape}, expected ({n},) "
                         f"for logits of shape {logits.shape}")
    if check_targets:
        outside = to_numpy((target < 0) | (target >= classes))
        if outside.any():
            position = int(outside.argmax())
            raise ValueError(f"cross_entropy: target[{position}] = {int(target[position])} is "
                             f"not a class index in [0, {classes})")
    return implementation(logits).apply(logits, target=target)
