"""The directional gradient check: a whole SimCLR step of a ResNet-18 checked in a few passes,
and a wrong backward anywhere inside caught and traced to the inputs whose gradients it spoils."""
import numpy
import pytest

import nn
import nn.functional as F
from autograd import (Function, GradcheckError, Tensor, directional_gradcheck, gradcheck,
                      module_gradcheck)
from helpers import randn
from simclr.loss import nt_xent
from simclr.model import SimCLR


def simclr_step(width=0.125, images=2, side=16, seed=0):
    """A float64 SimCLR model (ResNet-18 with the CIFAR stem, nonlinear head), a batch of two
    views of `images` images, and the training step's loss as a function of the batch."""
    model = SimCLR(nn.resnet18(cifar_stem=True, width=width, rng=seed), proj_dim=16,
                   rng=seed + 1).to(dtype="float64")
    views = randn(numpy, 2 * images, 3, side, side, seed=seed + 2, requires_grad=True)
    return model, views, (lambda x: nt_xent(model(x)))


def test_whole_resnet18_simclr_step_passes_with_respect_to_every_parameter_and_the_input():
    model, views, loss = simclr_step()
    assert len(list(model.parameters())) == 66  # every conv, batch norm and dense layer
    assert module_gradcheck(model, loss, [views])


def test_module_gradcheck_leaves_parameters_gradients_and_running_statistics_as_they_were():
    model, views, loss = simclr_step()
    state = model.state_dict()
    model.head[0].weight.grad = numpy.full(model.head[0].weight.shape, 3.0)
    module_gradcheck(model, loss, [views])
    for name, value in model.state_dict().items():
        numpy.testing.assert_array_equal(value, state[name], err_msg=name)
    assert (model.head[0].weight.grad == 3.0).all() and views.grad is None


def test_directional_check_refuses_a_float32_module_and_says_how_to_convert():
    model = SimCLR(nn.resnet18(cifar_stem=True, width=0.125, rng=0), proj_dim=16, rng=1)
    with pytest.raises(TypeError, match=r"'encoder.conv1.weight'.*to\(dtype='float64'\)"):
        module_gradcheck(model, lambda x: nt_xent(model(x)), [randn(numpy, 4, 3, 8, 8)])


class MulWithDoubledSecondGradient(Function):
    """a * b, whose backward doubles b's gradient: one input wrong, the other right."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        return grad * b, 2 * grad * a  # b's should be grad * a


def composition(a, b, c):
    return (MulWithDoubledSecondGradient.apply(a, b) + c.exp()) * a


def test_a_factor_on_one_input_is_caught_and_that_input_named():
    inputs = [randn(numpy, 3, 4, seed=s, requires_grad=True) for s in range(3)]
    with pytest.raises(GradcheckError) as error:
        directional_gradcheck(composition, inputs, names=["a", "b", "c"])
    message = str(error.value)
    for expected in ("3 checked inputs (36 values)", "v^T J u", "central difference",
                     "tolerance", "1 disagree, 2 agree", "b (shape (3, 4))",
                     "analytic / numeric 2\n"):
        assert expected in message, expected
    assert "a (shape" not in message and "c (shape" not in message
    with pytest.raises(GradcheckError, match=r"input 1 \(shape"):  # unnamed: by position
        directional_gradcheck(composition, inputs)


def test_without_locate_the_message_says_how_to_find_the_culprit():
    inputs = [randn(numpy, 3, 4, seed=s, requires_grad=True) for s in range(3)]
    with pytest.raises(GradcheckError, match="rerun with locate=True"):
        directional_gradcheck(composition, inputs, locate=False)


def test_a_correct_composition_passes_both_checks():
    inputs = [randn(numpy, 3, 4, seed=s, requires_grad=True) for s in range(3)]

    def fn(a, b, c):
        return (a * b + c.exp()) * a / (1.5 + (b * b).sum(axis=0))
    assert directional_gradcheck(fn, inputs) and gradcheck(fn, inputs)


class CenterWithWrongFactor(Function):
    """x - mean(x) over axis 0, backward doubled: a ones-seeded check is blind to it."""

    @staticmethod
    def forward(ctx, x):
        return x - x.mean(axis=0, keepdims=True)

    @staticmethod
    def backward(ctx, grad):
        return 2 * (grad - grad.mean(axis=0, keepdims=True))


def test_the_upstream_is_random_so_a_sum_free_bug_is_caught():
    with pytest.raises(GradcheckError):
        directional_gradcheck(CenterWithWrongFactor.apply, [randn(numpy, 4, 3, requires_grad=True)])


def test_names_must_match_the_inputs():
    with pytest.raises(ValueError, match="2 names for 1 inputs"):
        directional_gradcheck(lambda x: x * x, [randn(numpy, 2, requires_grad=True)],
                              names=["x", "y"])


# ----- planted batch-norm bugs inside the whole network -------------------------------------

class TextbookBatchNorm(Function):
    """Training-mode batch norm with the closed-form backward, and a switch that breaks it:
    `bug` "mean_terms" drops the two mean-of-gradient terms of dx (dx = gamma g / sigma), and
    "weight_1d" gives dgamma = sum(g) for (N, C) inputs (the projection head's batch norm)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps=1e-5, bug=None):
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        sigma = numpy.sqrt(x.var(axis=axes, keepdims=True) + eps)
        x_hat = (x - x.mean(axis=axes, keepdims=True)) / sigma
        ctx.save_for_backward(x_hat, sigma, gamma.reshape(shape))
        ctx.axes, ctx.bug = axes, bug
        return gamma.reshape(shape) * x_hat + beta.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        x_hat, sigma, gamma = ctx.saved
        axes, n = ctx.axes, g.size // g.shape[1]
        sum_g = g.sum(axis=axes, keepdims=True)
        sum_g_x_hat = (g * x_hat).sum(axis=axes, keepdims=True)
        dx = gamma / (n * sigma) * (n * g - sum_g - x_hat * sum_g_x_hat)
        if ctx.bug == "mean_terms":
            dx = gamma * g / sigma
        dgamma = sum_g if (ctx.bug == "weight_1d" and g.ndim == 2) else sum_g_x_hat
        return dx, dgamma.reshape(-1), sum_g.reshape(-1)


def batch_norm_with(bug):
    """A stand-in for F.batch_norm in training mode, built on TextbookBatchNorm."""
    def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                   momentum=0.1, eps=1e-5, residual=None, relu=False, group=None):
        assert training, "the planted batch norm stands in for training mode only"
        y = TextbookBatchNorm.apply(x, weight, bias, eps=eps, bug=bug)
        y = y + residual if residual is not None else y
        return F.relu(y) if relu else y
    return batch_norm


def wrong_gradients(message):
    """The names of the inputs that the failure message lists as wrong."""
    listed = message.split("Wrong gradients:\n")[1].split("\n  next:")[0]
    return [line.strip().split(" (shape")[0] for line in listed.splitlines()
            if not line.strip().startswith("...")]


def test_textbook_batch_norm_stand_in_is_right_when_no_bug_is_planted(monkeypatch):
    monkeypatch.setattr(nn.functional, "batch_norm", batch_norm_with(None))
    model, views, loss = simclr_step()
    assert module_gradcheck(model, loss, [views])


def test_batch_norm_missing_its_mean_terms_is_caught_in_the_whole_network(monkeypatch):
    monkeypatch.setattr(nn.functional, "batch_norm", batch_norm_with("mean_terms"))
    model, views, loss = simclr_step()
    with pytest.raises(GradcheckError) as error:
        module_gradcheck(model, loss, [views])
    message = str(error.value)
    assert {"input 0", "encoder.conv1.weight"} <= set(wrong_gradients(message))
    # every gradient that flows through a batch norm's dx is wrong: all but the head's batch
    # norm and last dense layer, and the last wrong one points at the op after it
    assert "63 disagree, 4 agree" in message
    assert "the ops just after the last of them (head.0.bias," in message


def test_a_wrong_batch_norm_weight_gradient_is_traced_to_that_one_parameter(monkeypatch):
    monkeypatch.setattr(nn.functional, "batch_norm", batch_norm_with("weight_1d"))
    model, views, loss = simclr_step()
    with pytest.raises(GradcheckError) as error:
        module_gradcheck(model, loss, [views])
    assert wrong_gradients(str(error.value)) == ["head.1.weight"]
