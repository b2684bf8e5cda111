"""`Function`: one differentiable op, its forward and backward side by side.

A subclass writes two static methods on plain arrays (numpy or cupy):

    forward(ctx, *arrays, **params) -> array
    backward(ctx, grad_out)         -> one gradient (or None) per array input

and saves on `ctx` only what backward needs. `Function.apply(*tensors, **params)` runs
forward on the tensors' arrays and, when a gradient is wanted, records a `Node` that
links the output to its inputs. The backward pass (engine.py) walks those nodes.
Backward works on arrays, not tensors, so this engine computes first derivatives only.
"""
import contextlib
import threading

from .backend import array_module

_grad_mode = threading.local()  # .enabled: False inside no_grad(), in this thread only


@contextlib.contextmanager
def no_grad():
    """Within this block ops record no graph (evaluation, optimiser updates). It holds for the
    calling thread alone (as PyTorch's grad mode): with one process-wide flag, a thread
    leaving its block while another is inside one would switch the other's back on, and the
    other's exit would then leave it off for good."""
    previous, _grad_mode.enabled = is_grad_enabled(), False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def is_grad_enabled():
    """Whether ops record a graph in this thread (True unless inside no_grad())."""
    return getattr(_grad_mode, "enabled", True)


class Context:
    """Scratch space shared by one call's forward and backward."""

    def __init__(self, needs_input_grad):
        # needs_input_grad[i] is True when input i wants a gradient: backward may skip the rest.
        self.needs_input_grad = needs_input_grad
        self.saved = ()

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Node:
    """The record of one op in the graph: which function made a tensor, from which inputs."""

    __slots__ = ("function", "ctx", "inputs")

    def __init__(self, function, ctx, inputs):
        self.function = function
        self.ctx = ctx
        self.inputs = inputs


class Function:
    """Base class of every op. Subclasses define static `forward` and `backward`."""

    @staticmethod
    def forward(ctx, *arrays, **params):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on Tensors `inputs`; non-differentiable settings go in `params`."""
        from .tensor import Tensor

        for position, value in enumerate(inputs):
            if not isinstance(value, Tensor):
                raise TypeError(f"{cls.__name__}: input {position} is a {type(value).__name__}, "
                                f"expected a Tensor")
        arrays = [t.data for t in inputs]
        array_module(*arrays)  # raises a clear error if numpy and cupy arrays are mixed
        needs_input_grad = tuple(t.requires_grad for t in inputs)
        track = is_grad_enabled() and any(needs_input_grad)
        ctx = Context(needs_input_grad)
        out = Tensor(cls.forward(ctx, *arrays, **params))
        if track:
            out.requires_grad = True
            out._node = Node(cls, ctx, inputs)
        return out
