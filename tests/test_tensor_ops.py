"""The engine's own ops: each passes a float64 gradient check, with broadcasting."""
import numpy
import pytest

from autograd import Tensor, cat, gradcheck, stack
from helpers import randn


def test_add_sub_mul_div_broadcast_gradients(xp):
    a = randn(xp, 3, 1, 4, requires_grad=True, seed=1)
    b = randn(xp, 5, 1, requires_grad=True, seed=2)
    c = Tensor(xp.asarray(numpy.random.default_rng(3).uniform(1, 2, (4,))), requires_grad=True)
    assert gradcheck(lambda a, b, c: (a + b) * c - a / c + (b - a) / (c + 3.0), [a, b, c])


def test_python_scalars_on_both_sides(xp):
    a = randn(xp, 2, 3, requires_grad=True)
    assert gradcheck(lambda a: 2.0 - a * 3 + 1 / (a * a + 1.0) - (-a), [a])


def test_pow_with_constant_and_tensor_exponent(xp):
    base = Tensor(xp.asarray(numpy.random.default_rng(0).uniform(0.5, 2, (3, 4))), requires_grad=True)
    exponent = randn(xp, 4, requires_grad=True, seed=5)
    assert gradcheck(lambda b: b ** 3 + b ** 0.5, [base])
    assert gradcheck(lambda b, e: b ** e, [base, exponent])
    assert gradcheck(lambda e: 2.0 ** e, [exponent])


@pytest.mark.parametrize("shape_a, shape_b", [((3, 4), (4, 5)), ((2, 3, 4), (4, 2)),
                                              ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_gradients_with_batch_broadcasting(xp, shape_a, shape_b):
    a = randn(xp, *shape_a, requires_grad=True, seed=1)
    b = randn(xp, *shape_b, requires_grad=True, seed=2)
    assert gradcheck(lambda a, b: a @ b, [a, b])


@pytest.mark.parametrize("axis, keepdims", [(None, False), (0, False), (1, True), ((0, 2), False),
                                            (-1, True)])
def test_reductions(xp, axis, keepdims):
    x = randn(xp, 3, 4, 5, requires_grad=True)
    assert gradcheck(lambda x: x.sum(axis=axis, keepdims=keepdims), [x])
    assert gradcheck(lambda x: x.mean(axis=axis, keepdims=keepdims), [x])
    assert gradcheck(lambda x: x.max(axis=axis, keepdims=keepdims), [x])  # no ties in random data


def test_max_splits_the_gradient_between_ties(xp):
    x = Tensor(xp.asarray([[1.0, 3.0, 3.0], [0.0, -1.0, 2.0]]), requires_grad=True)
    x.max(axis=1).backward(xp.asarray([1.0, 1.0]))
    numpy.testing.assert_allclose(x.grad.tolist(), [[0, 0.5, 0.5], [0, 0, 1]])


def test_elementwise_functions(xp):
    x = Tensor(xp.asarray(numpy.random.default_rng(0).uniform(0.2, 3, (3, 5))), requires_grad=True)
    assert gradcheck(lambda x: x.exp() * x.log() + x.sqrt(), [x])


def test_shape_ops(xp):
    x = randn(xp, 2, 3, 4, requires_grad=True)
    assert gradcheck(lambda x: x.reshape(4, 6).transpose() * 1.5, [x])
    assert gradcheck(lambda x: x.transpose(2, 0, 1).reshape(-1), [x])
    assert gradcheck(lambda x: x.T, [x])


@pytest.mark.parametrize("index", [
    (slice(None), 1), (Ellipsis, slice(1, 3)), (0, slice(None, None, 2), -1),
    ([0, 1, 0],), (slice(None), [2, 0, 2], slice(1, 3))])
def test_indexing_accumulates_repeated_elements(xp, index):
    x = randn(xp, 2, 3, 4, requires_grad=True)
    index = tuple(xp.asarray(i) if isinstance(i, list) else i for i in index)
    assert gradcheck(lambda x: x[index] * 2.0, [x])


def test_cat_and_stack(xp):
    a = randn(xp, 2, 3, requires_grad=True, seed=1)
    b = randn(xp, 4, 3, requires_grad=True, seed=2)
    c = randn(xp, 2, 3, requires_grad=True, seed=3)
    assert gradcheck(lambda a, b: cat([a, b], axis=0), [a, b])
    assert gradcheck(lambda a, c: cat([a, c, a], axis=1), [a, c])
    assert gradcheck(lambda a, c: stack([a, c], axis=1), [a, c])
    assert stack([a, c], axis=0).shape == (2, 2, 3)
