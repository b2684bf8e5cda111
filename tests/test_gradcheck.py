"""gradcheck is a tool for students: it must catch wrong gradients and say where."""
import numpy
import pytest

from autograd import Function, GradcheckError, Tensor, gradcheck, numerical_grad
from helpers import randn


class SquareWithWrongFactor(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved
        return grad * x  # should be 2 x


class CenterWithWrongFactor(Function):
    """y = x - mean(x) over axis 0, with a backward that is off by a factor of 2.

    sum(y) does not depend on x, so seeded with ones both the true and this wrong backward
    give 0: only a random upstream gradient exposes the bug (as in training-mode batch norm)."""

    @staticmethod
    def forward(ctx, x):
        return x - x.mean(axis=0, keepdims=True)

    @staticmethod
    def backward(ctx, grad):
        return 2 * (grad - grad.mean(axis=0, keepdims=True))  # wrong: the 2 should not be there


def test_gradcheck_reports_input_index_values_and_tolerance():
    x = randn(numpy, 3, 2, requires_grad=True)
    with pytest.raises(GradcheckError) as error:
        gradcheck(SquareWithWrongFactor.apply, [x])
    message = str(error.value)
    for expected in ("input 0", "shape (3, 2)", "worst element", "analytic", "numeric",
                     "tolerance", "0.5 x numeric"):
        assert expected in message


def test_gradcheck_catches_a_bug_that_a_ones_seeded_check_misses():
    x = randn(numpy, 4, 3, requires_grad=True)
    ones = numpy.ones((4, 3))
    CenterWithWrongFactor.apply(x).backward(ones)
    (numeric,) = numerical_grad(CenterWithWrongFactor.apply, [x], ones)
    numpy.testing.assert_allclose(x.grad, numeric, atol=1e-8)  # the ones-seeded check is fooled
    x.grad = None
    with pytest.raises(GradcheckError, match="2 x numeric"):
        gradcheck(CenterWithWrongFactor.apply, [x])


def test_gradcheck_passes_a_correct_function_and_checks_only_requires_grad_inputs():
    a = randn(numpy, 3, requires_grad=True)
    b = randn(numpy, 3, seed=1)  # constant
    assert gradcheck(lambda a, b: a * b + a * a, [a, b])


def test_gradcheck_refuses_float32():
    x = randn(numpy, 3, dtype="float32", requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2.0, [x])


def test_gradcheck_needs_an_input_to_check():
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(lambda x: x * 2.0, [Tensor(numpy.ones(2))])


def test_gradcheck_leaves_inputs_and_their_grads_unchanged():
    x = randn(numpy, 2, 2, requires_grad=True)
    before = x.data.copy()
    x.grad = numpy.full((2, 2), 7.0)
    gradcheck(lambda x: x.exp(), [x])
    numpy.testing.assert_array_equal(x.data, before)
    assert (x.grad == 7.0).all()


def test_numerical_grad_matches_a_known_derivative():
    x = Tensor(numpy.array([0.5, -1.0, 2.0]), requires_grad=True)
    upstream = numpy.array([1.0, 2.0, -1.0])
    (numeric,) = numerical_grad(lambda x: x * x * x, [x], upstream)
    numpy.testing.assert_allclose(numeric, 3 * x.data ** 2 * upstream, rtol=1e-8)


def test_gradcheck_works_on_non_contiguous_inputs():
    x = Tensor(numpy.random.default_rng(0).standard_normal((3, 4)).T, requires_grad=True)
    assert not x.data.flags.c_contiguous
    assert gradcheck(lambda a: a * a, [x])
