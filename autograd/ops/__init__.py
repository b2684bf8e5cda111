"""The engine's own ops: arithmetic, elementwise functions, reductions, shapes.

Neural-network ops (convolution, batch norm, pooling, losses) live in nn/functional.
"""
from .arithmetic import Add, Div, MatMul, Mul, Neg, Pow, Sub, unbroadcast
from .elementwise import Exp, Log, Sqrt
from .reduce import Max, Mean, Sum
from .shape import Cat, GetItem, Reshape, Stack, Transpose, cat, stack
