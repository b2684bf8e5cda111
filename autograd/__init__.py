"""A small reverse-mode automatic differentiation engine over NumPy and CuPy arrays.

Read in this order: backend.py (where arrays live), tensor.py (the Tensor), function.py
(an op = forward + backward), engine.py (the backward pass), ops/ (the ops themselves),
gradcheck.py (how we know the gradients are right).
"""
from .backend import array_module, to_numpy
from .engine import set_gradient_passes
from .function import Function, is_grad_enabled, no_grad
from .gradcheck import (GradcheckError, directional_gradcheck, gradcheck, module_gradcheck,
                        numerical_grad)
from .ops import cat, stack, unbroadcast
from .tensor import Tensor

__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "gradcheck", "numerical_grad",
           "directional_gradcheck", "module_gradcheck", "GradcheckError", "cat", "stack",
           "unbroadcast", "array_module", "to_numpy", "set_gradient_passes"]
