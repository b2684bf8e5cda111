"""`Tensor`: an array (numpy or cupy), its gradient, and the op that made it."""
import numpy

from . import engine
from .backend import array_module, device_of, is_cupy_array, to_device, to_numpy


class Tensor:
    """A numpy or cupy array that can take part in differentiation.

    data          the array; the tensor lives on the device of this array
    grad          the accumulated gradient (an array of data's shape), or None
    requires_grad whether backward() should compute a gradient for this tensor

    A tensor made by an op holds a `_node` (engine.py walks these backwards);
    a tensor made by the user is a leaf, and only leaves keep `.grad`.
    """

    __array_priority__ = 1000  # numpy_array + tensor calls Tensor.__radd__, not numpy's add

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, numpy.ndarray) or is_cupy_array(data)):
            data = numpy.asarray(data)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {data.dtype}; "
                f"convert first, e.g. Tensor(x.astype('float32'), requires_grad=True)")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._node = None

    # ----- what the tensor is -------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def device(self):
        return device_of(self.data)

    @property
    def xp(self):
        """The array module of this tensor: numpy or cupy."""
        return array_module(self.data)

    @property
    def is_leaf(self):
        return self._node is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({to_numpy(self.data)!r}{grad}, device='{self.device}')"

    # ----- leaving the graph ----------------------------------------------------------
    def detach(self):
        """The same array, cut from the graph (no gradient flows through it)."""
        return Tensor(self.data)

    def numpy(self):
        """A NumPy copy of the values, on the host."""
        return numpy.array(to_numpy(self.data))

    def item(self):
        return self.data.item()

    def to(self, device=None, dtype=None):
        """A copy on `device` ('cpu' or 'cuda') and/or of `dtype`, detached from the graph."""
        data = self.data if device is None else to_device(self.data, device)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        return Tensor(data, requires_grad=self.requires_grad)

    # ----- differentiation ------------------------------------------------------------
    def backward(self, grad=None):
        """Compute the gradient of this tensor with respect to every leaf that requires one.

        `grad` is the upstream gradient dL/dself (same shape). It may be omitted only for a
        scalar, where it is 1. The graph is freed afterwards.
        """
        if self._node is engine.FREED:
            raise RuntimeError("this tensor's graph was freed by an earlier backward(); "
                               "run the forward pass again")
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input of "
                               "the computation had requires_grad=True (or it ran under no_grad())")
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient works only on a scalar, but this tensor has "
                    f"shape {self.shape}; pass grad= of that shape, or reduce first (e.g. .sum())")
            grad = xp.ones(self.shape, dtype=self.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape}, "
                                 f"but the tensor has shape {self.shape}")
        if self._node is None:  # a leaf: its gradient is grad itself
            self.grad = grad.copy() if self.grad is None else self.grad + grad
            return
        engine.backward(self, grad)

    # ----- operators (each is one Function in ops/) -------------------------------------
    def _lift(self, value):
        """Turn a Python number or array into a constant Tensor on this tensor's device.

        Python numbers take this tensor's dtype, so `x * 2` stays float32."""
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (int, float)):
            dtype = self.dtype if self.dtype.kind == "f" else None
            return Tensor(self.xp.asarray(value, dtype=dtype))
        return Tensor(value)

    def __add__(self, other):
        return ops.Add.apply(self, self._lift(other))

    def __radd__(self, other):
        return ops.Add.apply(self._lift(other), self)

    def __sub__(self, other):
        return ops.Sub.apply(self, self._lift(other))

    def __rsub__(self, other):
        return ops.Sub.apply(self._lift(other), self)

    def __mul__(self, other):
        return ops.Mul.apply(self, self._lift(other))

    def __rmul__(self, other):
        return ops.Mul.apply(self._lift(other), self)

    def __truediv__(self, other):
        return ops.Div.apply(self, self._lift(other))

    def __rtruediv__(self, other):
        return ops.Div.apply(self._lift(other), self)

    def __pow__(self, exponent):
        return ops.Pow.apply(self, self._lift(exponent))

    def __rpow__(self, base):
        return ops.Pow.apply(self._lift(base), self)

    def __matmul__(self, other):
        return ops.MatMul.apply(self, self._lift(other))

    def __rmatmul__(self, other):
        return ops.MatMul.apply(self._lift(other), self)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=_index_data(index))

    # ----- methods --------------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.Reshape.apply(self, shape=shape)

    def transpose(self, *axes):
        """Permute the axes (all reversed when none are given), as numpy.transpose."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return ops.Transpose.apply(self, axes=axes or None)

    @property
    def T(self):
        return self.transpose()

    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)


def _index_data(index):
    """Replace Tensors inside an index by their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


from . import ops  # noqa: E402  (ops import Tensor, so they come after it)
