"""batch_norm and normalize: gradients against finite differences, values, gradients and
running statistics against PyTorch, dtypes, and the errors a user can cause."""
import numpy
import pytest

from autograd import GradcheckError, Tensor, gradcheck, numerical_grad, to_numpy
from nn.functional.cpu.batch_norm import BatchNormBlocked
from nn.functional.dispatch import use_reference
from nn.functional.normalization import (BatchNormReference, batch_norm, batch_norm_reference,
                                         normalize)
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error

SHAPES = [(5, 3), (3, 2, 3, 5)]  # (N, C) and (N, C, H, W), odd sizes


def affine(xp, channels, dtype="float64", requires_grad=True):
    """gamma around 1.5 and a nonzero beta: gamma = 1, beta = 0 would hide missing factors."""
    rng = numpy.random.default_rng(7)
    gamma = 1.5 + 0.3 * rng.standard_normal(channels)
    beta = rng.standard_normal(channels)
    return (Tensor(xp.asarray(gamma.astype(dtype)), requires_grad=requires_grad),
            Tensor(xp.asarray(beta.astype(dtype)), requires_grad=requires_grad))


def running_stats(xp, channels, dtype="float64"):
    rng = numpy.random.default_rng(3)
    return (xp.asarray(rng.standard_normal(channels).astype(dtype)),
            xp.asarray((0.5 + rng.random(channels)).astype(dtype)))


def assert_matches_torch(ours, theirs, dtype, what):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    error = relative_error(ours, theirs)
    assert error <= PARITY_TOLERANCE[dtype], f"{what}: relative error {error:.3g} ({dtype})"


def to_torch(torch, tensor):
    return torch.tensor(to_numpy(tensor.data), requires_grad=tensor.requires_grad)


# ----- gradients against finite differences ------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_match_finite_differences(xp, shape, training):
    x = randn(xp, *shape, scale=2.0, requires_grad=True)
    weight, bias = affine(xp, shape[1])
    mean, var = running_stats(xp, shape[1])
    assert gradcheck(lambda x, w, b: batch_norm(x, mean, var, w, b, training=training),
                     [x, weight, bias])


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_parameter_gradients_match_when_input_needs_none(xp, training):
    x = randn(xp, 3, 2, 3, 5, scale=2.0)  # a constant: backward skips dx
    weight, bias = affine(xp, 2)
    mean, var = running_stats(xp, 2)
    assert gradcheck(lambda w, b: batch_norm(x, mean, var, w, b, training=training),
                     [weight, bias])


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_without_running_stats_or_affine_matches_finite_differences(xp, shape):
    x = randn(xp, *shape, requires_grad=True)
    assert gradcheck(lambda x: batch_norm(x, None, None, training=False), [x])


def test_batch_norm_input_gradient_of_the_sum_is_zero_in_training(xp):
    """sum(BN(x)) = N * sum(beta) whatever x is, so d sum(BN(x)) / dx = 0: a check seeded with
    ones sees nothing, and only a random upstream gradient can catch a wrong backward."""
    x = randn(xp, 6, 3, scale=2.0, requires_grad=True)
    weight, bias = affine(xp, 3)
    out = batch_norm(x, None, None, weight, bias, training=True)
    out.backward(xp.ones(out.shape))
    assert float(abs(x.grad).max()) < 1e-12

    class BatchNormWithoutInputGradient(BatchNormBlocked):
        @staticmethod
        def backward(ctx, grad):
            _, grad_weight, grad_bias = BatchNormBlocked.backward(ctx, grad)
            return ctx.saved[0] * 0, grad_weight, grad_bias  # wrong: dx is not 0

    def broken(x):
        return BatchNormWithoutInputGradient.apply(
            x, weight, bias, running_mean=None, running_var=None, use_batch_stats=True,
            momentum=0.1, eps=1e-5)

    (numeric_under_ones,) = numerical_grad(broken, [x], xp.ones(out.shape))
    assert float(abs(numeric_under_ones).max()) < 1e-6  # the ones-seeded check would pass
    with pytest.raises(GradcheckError, match="all zeros"):
        gradcheck(broken, [x])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", ["none", "relu", "residual", "residual+relu"])
def test_batch_norm_reference_backward_is_the_derivative_of_its_formula(xp, training, fused):
    """BatchNormReference's hand-written backward (the closed form of normalization.py's
    docstring) against the engine's derivative of the same forward written with Tensor ops
    (batch_norm_reference): output, dx, dgamma, dbeta and the residual's gradient, float64."""
    relu, res = "relu" in fused, "residual" in fused
    mean, var = running_stats(xp, 3)
    upstream = xp.asarray(numpy.random.default_rng(4).standard_normal((4, 3, 2, 5)))
    results = []
    for hand_written in (True, False):
        x = randn(xp, 4, 3, 2, 5, scale=2.0, requires_grad=True)
        residual = randn(xp, 4, 3, 2, 5, seed=1, requires_grad=True)
        weight, bias = affine(xp, 3)
        if hand_written:
            inputs = [x, weight, bias] + ([residual] if res else [])
            out = BatchNormReference.apply(*inputs, running_mean=None if training else mean,
                                           running_var=None if training else var,
                                           use_batch_stats=training, momentum=0.1, eps=1e-5,
                                           relu=relu)
        else:
            stats = {} if training else {"mean": mean, "var": var}
            out = batch_norm_reference(x, weight, bias, residual=residual if res else None,
                                       relu=relu, **stats)
        out.backward(upstream)
        results.append([out.data, x.grad, weight.grad, bias.grad]
                       + ([residual.grad] if res else []))
    for name, ours, theirs in zip(["y", "dx", "dgamma", "dbeta", "dresidual"], *results):
        assert relative_error(ours, to_numpy(theirs)) < 1e-12, name


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_reference_passes_gradcheck_and_is_what_use_reference_runs(xp, training):
    x = randn(xp, 3, 2, 2, 3, scale=2.0, requires_grad=True)
    residual = randn(xp, 3, 2, 2, 3, seed=1, requires_grad=True)
    weight, bias = affine(xp, 2)
    mean, var = running_stats(xp, 2)
    with use_reference():
        assert gradcheck(lambda x, w, b, r: batch_norm(x, mean, var, w, b, training=training,
                                                       residual=r, relu=True),
                         [x, weight, bias, residual])
        out = batch_norm(x, mean, var, weight, bias, training=training)
    assert out._node.function is BatchNormReference


@pytest.mark.parametrize("shape, dim", [((4, 3), 1), ((4, 3), 0), ((2, 3, 2), -1)])
def test_normalize_gradient_matches_finite_differences(xp, shape, dim):
    x = randn(xp, *shape, requires_grad=True)
    assert gradcheck(lambda x: normalize(x, dim=dim), [x])


def test_normalize_gradient_below_eps_matches_finite_differences(xp):
    x = randn(xp, 3, 4, scale=1e-3, requires_grad=True)  # every norm < eps: divisor constant
    assert gradcheck(lambda x: normalize(x, dim=1, eps=0.1), [x])


# ----- parity with PyTorch --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_pytorch(xp, dtype, shape, training):
    """Output, the three gradients and, after one step, the running statistics."""
    torch = import_torch()
    x = randn(xp, *shape, dtype=dtype, scale=2.0, requires_grad=True)
    x.data += 0.5  # a nonzero mean per channel
    weight, bias = affine(xp, shape[1], dtype)
    mean, var = running_stats(xp, shape[1], dtype)
    tx, tw, tb = (to_torch(torch, t) for t in (x, weight, bias))
    t_mean, t_var = torch.from_numpy(to_numpy(mean).copy()), torch.from_numpy(to_numpy(var).copy())

    ours = batch_norm(x, mean, var, weight, bias, training=training, momentum=0.3)
    theirs = torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb, training=training,
                                            momentum=0.3)
    assert_matches_torch(ours.data, theirs, dtype, "output")
    assert_matches_torch(mean, t_mean, dtype, "running_mean")
    assert_matches_torch(var, t_var, dtype, "running_var")

    upstream = numpy.random.default_rng(1).standard_normal(shape).astype(dtype)
    ours.backward(xp.asarray(upstream))
    theirs.backward(torch.from_numpy(upstream))
    for name, mine, torchs in (("x", x, tx), ("weight", weight, tw), ("bias", bias, tb)):
        assert_matches_torch(mine.grad, torchs.grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_without_running_stats_uses_batch_statistics_like_pytorch(xp, dtype, training):
    torch = import_torch()
    x = randn(xp, 4, 3, 2, 2, dtype=dtype, requires_grad=True)
    tx = to_torch(torch, x)
    ours = batch_norm(x, None, None, training=training)
    # torch's BatchNorm2d(track_running_stats=False) passes training=True in both modes
    theirs = torch.nn.functional.batch_norm(tx, None, None, training=True)
    assert_matches_torch(ours.data, theirs, dtype, "output")
    upstream = numpy.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    ours.backward(xp.asarray(upstream))
    theirs.backward(torch.from_numpy(upstream))
    assert_matches_torch(x.grad, tx.grad, dtype, "gradient of x")


def test_batch_norm_running_stats_follow_pytorch_over_several_steps(xp):
    torch = import_torch()
    mean, var = xp.zeros(3), xp.ones(3)
    t_mean, t_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for step in range(3):
        x = randn(xp, 4, 3, 2, 3, seed=step, scale=step + 1.0)
        batch_norm(x, mean, var, training=True)
        torch.nn.functional.batch_norm(torch.from_numpy(to_numpy(x.data)), t_mean, t_var,
                                       training=True)
    assert_matches_torch(mean, t_mean, "float64", "running_mean")
    assert_matches_torch(var, t_var, "float64", "running_var")


def test_batch_norm_in_evaluation_leaves_running_stats_unchanged(xp):
    mean, var = running_stats(xp, 3)
    before = to_numpy(mean).copy(), to_numpy(var).copy()
    batch_norm(randn(xp, 4, 3), mean, var, training=False)
    numpy.testing.assert_array_equal(to_numpy(mean), before[0])
    numpy.testing.assert_array_equal(to_numpy(var), before[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, dim", [((6, 5), 1), ((3, 4, 2), 0)])
def test_normalize_matches_pytorch(xp, dtype, shape, dim):
    torch = import_torch()
    x = randn(xp, *shape, dtype=dtype, requires_grad=True)
    tx = to_torch(torch, x)
    ours, theirs = normalize(x, dim=dim), torch.nn.functional.normalize(tx, dim=dim)
    assert_matches_torch(ours.data, theirs, dtype, "output")
    upstream = numpy.random.default_rng(1).standard_normal(shape).astype(dtype)
    ours.backward(xp.asarray(upstream))
    theirs.backward(torch.from_numpy(upstream))
    assert_matches_torch(x.grad, tx.grad, dtype, "gradient of x")


def test_normalize_of_a_zero_vector_matches_pytorch(xp):
    torch = import_torch()
    x = Tensor(xp.asarray([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]]), requires_grad=True)
    tx = to_torch(torch, x)
    ours, theirs = normalize(x, eps=1e-3), torch.nn.functional.normalize(tx, eps=1e-3)
    numpy.testing.assert_array_equal(to_numpy(ours.data), theirs.detach().numpy())
    upstream = numpy.asarray([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]])
    ours.backward(xp.asarray(upstream))
    theirs.backward(torch.from_numpy(upstream))
    numpy.testing.assert_allclose(to_numpy(x.grad), tx.grad.numpy(), rtol=1e-12)


# ----- the batch statistics in float32 ------------------------------------------------------

# ----- dtypes -------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_keeps_float32(xp, training):
    x = randn(xp, 4, 3, 2, 2, dtype="float32", requires_grad=True)
    weight, bias = affine(xp, 3, "float32")
    mean, var = running_stats(xp, 3, "float64")  # float64 statistics must not promote x
    out = batch_norm(x, mean, var, weight, bias, training=training)
    assert out.dtype == numpy.float32
    out.backward(xp.ones(out.shape, dtype="float32"))
    assert x.grad.dtype == weight.grad.dtype == bias.grad.dtype == numpy.float32


def test_normalize_keeps_float32(xp):
    x = randn(xp, 4, 3, dtype="float32", requires_grad=True)
    out = normalize(x)
    assert out.dtype == numpy.float32
    out.backward(xp.ones(out.shape, dtype="float32"))
    assert x.grad.dtype == numpy.float32


# ----- errors a user can cause --------------------------------------------------------------

def test_batch_norm_rejects_running_stat_of_wrong_shape(xp):
    with pytest.raises(ValueError, match=r"running_var has shape \(4,\), expected \(3,\)"):
        batch_norm(randn(xp, 5, 3), xp.zeros(3), xp.ones(4), training=True)


def test_batch_norm_rejects_input_of_rank_one(xp):
    with pytest.raises(ValueError, match=r"input has shape \(5,\), expected \(N, C\)"):
        batch_norm(randn(xp, 5), xp.zeros(5), xp.ones(5))


def test_batch_norm_refuses_one_value_per_channel_when_training(xp):
    message = "(?i)expected more than 1 value per channel when training"
    with pytest.raises(ValueError, match=message):
        batch_norm(randn(xp, 1, 3, 1, 1), xp.zeros(3), xp.ones(3), training=True)
    batch_norm(randn(xp, 1, 3, 1, 1), xp.zeros(3), xp.ones(3), training=False)  # fine in eval


def test_batch_norm_rejects_weight_of_wrong_shape_or_dtype(xp):
    with pytest.raises(ValueError, match=r"weight has shape \(2,\), expected \(3,\)"):
        batch_norm(randn(xp, 4, 3), None, None, weight=randn(xp, 2))
    with pytest.raises(TypeError, match="bias has dtype float64 but the input has float32"):
        batch_norm(randn(xp, 4, 3, dtype="float32"), None, None, bias=randn(xp, 3))


def test_normalize_supports_only_p_2(xp):
    with pytest.raises(ValueError, match="p=1 is not supported"):
        normalize(randn(xp, 3, 4), p=1)
