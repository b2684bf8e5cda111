"""linear, relu, log_softmax, logsumexp and cross_entropy: gradients against finite differences,
values and gradients against PyTorch, dtypes, the errors a user can cause, and linear's
products split over the CPU's threads."""
import numpy
import pytest

from autograd import Tensor, gradcheck, to_numpy
from nn.functional.activation import log_softmax, logsumexp, relu
from nn.functional.linear import linear
from nn.functional.loss import cross_entropy
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error


def away_from_zero(xp, *shape, seed=0):
    """Random values with |x| >= 0.1, so finite differences never straddle relu's kink."""
    values = numpy.random.default_rng(seed).standard_normal(shape)
    values = numpy.sign(values) * (numpy.abs(values) + 0.1)
    return Tensor(xp.asarray(values), requires_grad=True)


def labels(xp, n, classes, seed=0):
    return xp.asarray(numpy.random.default_rng(seed).integers(0, classes, size=n))


def assert_matches_torch(ours, theirs, dtype, what):
    error = relative_error(ours, theirs.detach().numpy())
    assert error <= PARITY_TOLERANCE[dtype], f"{what}: relative error {error:.3g} ({dtype})"


def backward_both(torch, ours, theirs, seed=1):
    """Run both backward passes with one random upstream gradient of the output's shape."""
    upstream = numpy.random.default_rng(seed).standard_normal(ours.shape).astype(ours.dtype)
    ours.backward(ours.xp.asarray(upstream))
    theirs.backward(torch.from_numpy(upstream))


def to_torch(torch, tensor):
    return torch.tensor(to_numpy(tensor.data), requires_grad=tensor.requires_grad)


# ----- gradients against finite differences ------------------------------------------------

@pytest.mark.parametrize("x_shape, out_features", [((4, 3), 5), ((2, 3, 4), 2), ((3,), 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradients_match_finite_differences(xp, x_shape, out_features, with_bias):
    x = randn(xp, *x_shape, requires_grad=True)
    weight = randn(xp, out_features, x_shape[-1], seed=1, requires_grad=True)
    bias = randn(xp, out_features, seed=2, requires_grad=True) if with_bias else None
    inputs = [x, weight] + ([bias] if with_bias else [])
    assert gradcheck(lambda x, w, *b: linear(x, w, *b), inputs)


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 2)])
def test_relu_gradient_matches_finite_differences(xp, shape):
    assert gradcheck(relu, [away_from_zero(xp, *shape)])


def test_relu_gradient_is_zero_at_zero_and_below(xp):
    x = Tensor(xp.asarray([-1.0, 0.0, 2.0]), requires_grad=True)
    relu(x).backward(xp.asarray([5.0, 5.0, 5.0]))
    numpy.testing.assert_array_equal(to_numpy(x.grad), [0.0, 0.0, 5.0])


@pytest.mark.parametrize("shape, dim", [((4, 5), -1), ((4, 5), 0), ((2, 3, 4), 1), ((6,), 0)])
def test_log_softmax_gradient_matches_finite_differences(xp, shape, dim):
    x = randn(xp, *shape, requires_grad=True)
    assert gradcheck(lambda x: log_softmax(x, dim=dim), [x])


@pytest.mark.parametrize("shape, dim, keepdim", [((4, 5), 1, False), ((4, 5), 0, True),
                                                 ((2, 3, 4), (0, 2), False), ((5,), 0, False)])
def test_logsumexp_gradient_matches_finite_differences(xp, shape, dim, keepdim):
    x = randn(xp, *shape, requires_grad=True)
    assert gradcheck(lambda x: logsumexp(x, dim, keepdim=keepdim), [x])


@pytest.mark.parametrize("n, classes", [(4, 5), (1, 3), (7, 2)])
def test_cross_entropy_gradient_matches_finite_differences(xp, n, classes):
    logits = randn(xp, n, classes, requires_grad=True)
    target = labels(xp, n, classes)
    assert gradcheck(lambda z: cross_entropy(z, target), [logits])


# ----- parity with PyTorch --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("x_shape", [(6, 4), (2, 3, 4)])
def test_linear_matches_pytorch(xp, dtype, x_shape):
    torch = import_torch()
    x = randn(xp, *x_shape, dtype=dtype, requires_grad=True)
    weight = randn(xp, 3, 4, dtype=dtype, seed=1, requires_grad=True)
    bias = randn(xp, 3, dtype=dtype, seed=2, requires_grad=True)
    tx, tw, tb = (to_torch(torch, t) for t in (x, weight, bias))
    ours, theirs = linear(x, weight, bias), torch.nn.functional.linear(tx, tw, tb)
    assert_matches_torch(ours.data, theirs, dtype, "output")
    backward_both(torch, ours, theirs)
    for name, mine, torchs in (("x", x, tx), ("weight", weight, tw), ("bias", bias, tb)):
        assert_matches_torch(mine.grad, torchs.grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu_matches_pytorch(xp, dtype):
    torch = import_torch()
    x = randn(xp, 5, 6, dtype=dtype, requires_grad=True)
    tx = to_torch(torch, x)
    ours, theirs = relu(x), torch.relu(tx)
    assert_matches_torch(ours.data, theirs, dtype, "output")
    backward_both(torch, ours, theirs)
    assert_matches_torch(x.grad, tx.grad, dtype, "gradient of x")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("dim", [-1, 0])
def test_log_softmax_matches_pytorch(xp, dtype, dim):
    torch = import_torch()
    x = randn(xp, 5, 7, dtype=dtype, scale=4.0, requires_grad=True)
    tx = to_torch(torch, x)
    ours, theirs = log_softmax(x, dim=dim), torch.log_softmax(tx, dim=dim)
    assert_matches_torch(ours.data, theirs, dtype, "output")
    backward_both(torch, ours, theirs)
    assert_matches_torch(x.grad, tx.grad, dtype, "gradient of x")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("dim, keepdim", [(1, False), ((0, 2), True)])
def test_logsumexp_matches_pytorch(xp, dtype, dim, keepdim):
    torch = import_torch()
    x = randn(xp, 3, 4, 5, dtype=dtype, scale=4.0, requires_grad=True)
    tx = to_torch(torch, x)
    ours, theirs = logsumexp(x, dim, keepdim=keepdim), torch.logsumexp(tx, dim, keepdim=keepdim)
    assert_matches_torch(ours.data, theirs, dtype, "output")
    backward_both(torch, ours, theirs)
    assert_matches_torch(x.grad, tx.grad, dtype, "gradient of x")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cross_entropy_matches_pytorch(xp, dtype):
    torch = import_torch()
    logits = randn(xp, 8, 5, dtype=dtype, scale=3.0, requires_grad=True)
    target = labels(xp, 8, 5)
    tz = to_torch(torch, logits)
    ours = cross_entropy(logits, Tensor(target))
    theirs = torch.nn.functional.cross_entropy(tz, torch.from_numpy(to_numpy(target)))
    assert_matches_torch(ours.data, theirs, dtype, "loss")
    ours.backward(xp.asarray(0.7, dtype=dtype))
    theirs.backward(torch.tensor(0.7, dtype=getattr(torch, dtype)))
    assert_matches_torch(logits.grad, tz.grad, dtype, "gradient of logits")


# ----- numerical stability and dtypes ---------------------------------------------------------

def test_log_softmax_and_cross_entropy_are_finite_for_huge_logits(xp):
    logits = Tensor(xp.asarray([[1000.0, 0.0, -1000.0], [5e4, 5e4, 0.0]], dtype="float32"),
                    requires_grad=True)
    out = log_softmax(logits)
    assert bool(xp.isfinite(out.data).all())
    numpy.testing.assert_allclose(to_numpy(out.data[:, 0]), [0.0, -numpy.log(2.0)], rtol=1e-6)
    loss = cross_entropy(logits, xp.asarray([0, 1]))
    loss.backward()
    assert numpy.isfinite(loss.item()) and bool(xp.isfinite(logits.grad).all())
    big = logsumexp(Tensor(xp.asarray([1000.0, 1000.0])), 0)
    assert abs(big.item() - (1000 + numpy.log(2))) < 1e-9


@pytest.mark.parametrize("op", ["linear", "relu", "log_softmax", "logsumexp", "cross_entropy"])
def test_float32_inputs_give_float32_outputs_and_gradients(xp, op):
    x = randn(xp, 4, 3, dtype="float32", requires_grad=True)
    weight = randn(xp, 2, 3, dtype="float32", seed=1, requires_grad=True)
    bias = randn(xp, 2, dtype="float32", seed=2, requires_grad=True)
    run = {"linear": lambda: linear(x, weight, bias),
           "relu": lambda: relu(x),
           "log_softmax": lambda: log_softmax(x, dim=1),
           "logsumexp": lambda: logsumexp(x, 1),
           "cross_entropy": lambda: cross_entropy(x, labels(xp, 4, 3))}[op]
    out = run()
    assert out.dtype == numpy.float32
    out.backward(xp.ones(out.shape, dtype="float32"))
    assert x.grad.dtype == numpy.float32
    if op == "linear":
        assert weight.grad.dtype == numpy.float32 and bias.grad.dtype == numpy.float32


# ----- errors a user can cause --------------------------------------------------------------

def test_linear_shape_mismatch_names_both_shapes(xp):
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 5\)"):
        linear(randn(xp, 4, 3), randn(xp, 2, 5))
    with pytest.raises(ValueError, match=r"bias has shape \(3,\), expected \(2,\)"):
        linear(randn(xp, 4, 5), randn(xp, 2, 5), randn(xp, 3))


def test_linear_refuses_mixed_precision(xp):
    with pytest.raises(TypeError, match="float32 and float64"):
        linear(randn(xp, 4, 3, dtype="float32"), randn(xp, 2, 3))


def test_cross_entropy_rejects_non_integer_target(xp):
    with pytest.raises(TypeError, match="target has dtype float64"):
        cross_entropy(randn(xp, 3, 4), xp.asarray([0.0, 1.0, 2.0]))


def test_cross_entropy_rejects_target_of_wrong_shape(xp):
    with pytest.raises(ValueError, match=r"target has shape \(2,\), expected \(3,\)"):
        cross_entropy(randn(xp, 3, 4), xp.asarray([0, 1]))
    with pytest.raises(ValueError, match=r"logits have shape \(3, 4, 2\)"):
        cross_entropy(randn(xp, 3, 4, 2), xp.asarray([0, 1, 2]))


@pytest.mark.parametrize("bad", [4, -1])
def test_cross_entropy_names_the_out_of_range_class_index(xp, bad):
    with pytest.raises(ValueError, match=rf"target\[1\] = {bad} is not a class index in \[0, 4\)"):
        cross_entropy(randn(xp, 3, 4), xp.asarray([0, bad, 2]))


def test_log_softmax_rejects_an_axis_out_of_range(xp):
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        log_softmax(randn(xp, 3, 4), dim=2)


def test_linear_split_matches_finite_differences(split_everything):
    """Under split_everything (on 3 threads, every product cut into pieces of one row): the
    forward product and both gradient products (passes.matmul, passes.matmul_transposed)."""
    x = randn(numpy, 9, 4, requires_grad=True)
    w, b = randn(numpy, 3, 4, seed=1, requires_grad=True), randn(numpy, 3, seed=2,
                                                                requires_grad=True)
    assert gradcheck(linear, [x, w, b])
