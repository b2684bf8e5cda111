"""SGD against torch.optim.SGD, LARS against a transcription of the official update,
checkpointing of optimiser state, the warm-up + cosine schedule, and steps split over the CPU's
threads equal to steps on one."""
import math

import numpy
import pytest

from autograd import Tensor, to_numpy
from nn.runtime import threads
from nn.module import Parameter
from nn.optim import LARS, SGD, WarmupCosine, linear_scaled_lr, sqrt_scaled_lr, trust_ratio
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error

# name and shape of each parameter: a conv, its batch norm, a linear layer, and one that starts at 0
SHAPES = [("conv.weight", (4, 3, 3, 3)), ("bn.weight", (4,)), ("bn.bias", (4,)),
          ("fc.weight", (5, 4)), ("fc.bias", (5,)), ("head.weight", (3, 5))]
LRS = [0.1, 0.3, 0.05, 0.2]


def make_params(xp, dtype="float64"):
    """(name, Tensor) pairs; `head.weight` is all zeros (so its trust ratio is 1 at first)."""
    params = [(name, randn(xp, *shape, dtype=dtype, seed=seed, requires_grad=True))
              for seed, (name, shape) in enumerate(SHAPES)]
    params[-1][1].data[...] = 0
    return params


def gradients(step, dtype="float64"):
    """Host arrays of gradients for one step; fc.bias has none at step 1 (it must be skipped)."""
    rng = numpy.random.default_rng(100 + step)
    grads = [rng.standard_normal(shape).astype(dtype) for _, shape in SHAPES]
    if step == 1:
        grads[4] = None
    return grads


def set_gradients(xp, params, grads):
    for (_, param), grad in zip(params, grads):
        param.grad = None if grad is None else xp.asarray(grad)


def official_lars(weights, steps, lrs, momentum, weight_decay, eta, excluded):
    """lars_optimizer.py, transcribed in float64 with plain loops over elements."""
    weights = [w.astype("float64").copy() for w in weights]
    velocities = [numpy.zeros_like(w) for w in weights]
    for grads, lr in zip(steps, lrs):
        for k, grad in enumerate(grads):
            if grad is None:
                continue
            w, g = weights[k].ravel(), grad.astype("float64").ravel().copy()
            trust = 1.0
            if not excluded[k]:
                for i in range(g.size):
                    g[i] += weight_decay * w[i]
                w_norm = math.sqrt(sum(float(x) ** 2 for x in w))
                g_norm = math.sqrt(sum(float(x) ** 2 for x in g))
                if w_norm > 0 and g_norm > 0:
                    trust = eta * w_norm / g_norm
            v = velocities[k].ravel()
            for i in range(g.size):
                v[i] = momentum * v[i] + lr * trust * g[i]
                w[i] -= v[i]
    return weights


def run(xp, optimizer, params, first_step, last_step, dtype="float64"):
    for step in range(first_step, last_step):
        optimizer.lr = LRS[step]
        set_gradients(xp, params, gradients(step, dtype))
        optimizer.step()


# ----- LARS -----------------------------------------------------------------------------

def test_lars_matches_official_update_float64(xp):
    params = make_params(xp)
    initial = [to_numpy(p.data).copy() for _, p in params]
    optimizer = LARS(params, lr=LRS[0], momentum=0.9, weight_decay=0.05, eta=0.02)
    run(xp, optimizer, params, 0, len(LRS))
    expected = official_lars(initial, [gradients(s) for s in range(len(LRS))], LRS,
                             momentum=0.9, weight_decay=0.05, eta=0.02,
                             excluded=[False, True, True, False, True, False])
    for (name, param), want in zip(params, expected):
        assert relative_error(param.data, want) <= 1e-12, name


def test_lars_excludes_batch_norm_and_bias(xp):
    params = make_params(xp)
    optimizer = LARS(params, lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.001)
    assert optimizer.excluded == [False, True, True, False, True, False]
    before = [to_numpy(p.data).copy() for _, p in params]
    grads = gradients(0)
    set_gradients(xp, params, grads)
    optimizer.step()
    for k in (1, 2, 4):  # excluded: no weight decay, no trust ratio -> w - lr * g
        numpy.testing.assert_array_equal(to_numpy(params[k][1].data), before[k] - 0.5 * grads[k])
    # not excluded: the tiny trust ratio (eta = 0.001) shrinks the step far below lr * g
    conv_step = numpy.abs(to_numpy(params[0][1].data) - before[0]).max()
    assert conv_step < 0.01 * numpy.abs(0.5 * grads[0]).max()


def test_lars_exclude_callable_overrides_default(xp):
    params = make_params(xp)
    optimizer = LARS(params, lr=0.1, exclude=lambda name, param: name.startswith("bn."))
    assert optimizer.excluded == [False, True, True, False, False, False]


def test_lars_trust_ratio_is_one_when_a_norm_is_zero(xp):
    weight, grad = randn(xp, 3, 4).data, randn(xp, 3, 4, seed=1).data
    zeros = xp.zeros((3, 4))
    assert float(trust_ratio(zeros, grad, 0.001)) == 1.0
    assert float(trust_ratio(weight, zeros, 0.001)) == 1.0
    expected = 0.001 * numpy.linalg.norm(to_numpy(weight)) / numpy.linalg.norm(to_numpy(grad))
    assert float(trust_ratio(weight, grad, 0.001)) == pytest.approx(expected, rel=1e-14)


def test_lars_rejects_bad_arguments():
    param = Tensor(numpy.zeros(3), requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        LARS([param], lr=-0.1)
    with pytest.raises(TypeError, match="exclude"):
        LARS([param], lr=0.1, exclude="bias")
    with pytest.raises(TypeError, match="single Tensor"):
        LARS(param, lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        LARS([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        LARS([param, param], lr=0.1)
    with pytest.raises(TypeError, match="dtype int64"):
        LARS([Tensor(numpy.zeros(3, "int64"))], lr=0.1)


# ----- SGD ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("momentum, nesterov, weight_decay",
                         [(0.0, False, 0.0), (0.9, False, 1e-2), (0.9, True, 1e-2)])
def test_sgd_matches_pytorch(xp, dtype, momentum, nesterov, weight_decay):
    torch = import_torch()
    params = make_params(xp, dtype)
    theirs = [torch.tensor(to_numpy(p.data), requires_grad=True) for _, p in params]
    ours = SGD([p for _, p in params], lr=LRS[0], momentum=momentum, nesterov=nesterov,
               weight_decay=weight_decay)
    reference = torch.optim.SGD(theirs, lr=LRS[0], momentum=momentum, nesterov=nesterov,
                                weight_decay=weight_decay)
    for step, lr in enumerate(LRS):
        grads = gradients(step, dtype)
        set_gradients(xp, params, grads)
        for tensor, grad in zip(theirs, grads):
            tensor.grad = None if grad is None else torch.from_numpy(grad)
        ours.lr = lr
        reference.param_groups[0]["lr"] = lr
        ours.step()
        reference.step()
    for (name, param), tensor in zip(params, theirs):
        assert relative_error(param.data, tensor.detach().numpy()) <= PARITY_TOLERANCE[dtype], name


def test_sgd_zero_grad_clears_gradients(xp):
    params = make_params(xp)
    optimizer = SGD(params, lr=0.1)
    set_gradients(xp, params, gradients(0))
    optimizer.zero_grad()
    assert all(param.grad is None for _, param in params)


def test_sgd_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        SGD([Tensor(numpy.zeros(3), requires_grad=True)], lr=0.1, nesterov=True)


# ----- state and dtypes -----------------------------------------------------------------

OPTIMIZERS = {
    "lars": lambda params: LARS(params, lr=0.0, momentum=0.9, weight_decay=0.05, eta=0.02),
    "sgd": lambda params: SGD(params, lr=0.0, momentum=0.9, nesterov=True, weight_decay=0.01),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_bitwise(xp, kind):
    uninterrupted = make_params(xp)
    optimizer = OPTIMIZERS[kind](uninterrupted)
    run(xp, optimizer, uninterrupted, 0, len(LRS))

    interrupted = make_params(xp)
    first = OPTIMIZERS[kind](interrupted)
    run(xp, first, interrupted, 0, 2)
    state = first.state_dict()
    weights = [to_numpy(p.data).copy() for _, p in interrupted]
    assert all(type(buffer) is numpy.ndarray for buffer in state["momentum_buffers"].values())
    run(xp, first, interrupted, 2, 3)  # training on must not change the saved state
    resumed_params = [(name, Tensor(xp.asarray(w), requires_grad=True))
                      for (name, _), w in zip(interrupted, weights)]
    resumed = OPTIMIZERS[kind](resumed_params)
    saved_buffers = {index: buffer.copy() for index, buffer in state["momentum_buffers"].items()}
    resumed.load_state_dict(state)
    run(xp, resumed, resumed_params, 2, len(LRS))
    for index, buffer in state["momentum_buffers"].items():  # loading copied, never aliased
        numpy.testing.assert_array_equal(buffer, saved_buffers[index])
    for (name, want), (_, got) in zip(uninterrupted, resumed_params):
        numpy.testing.assert_array_equal(to_numpy(got.data), to_numpy(want.data), err_msg=name)


def test_load_state_dict_rejects_other_parameters(xp):
    params = make_params(xp)
    optimizer = LARS(params, lr=0.1)
    run(xp, optimizer, params, 0, 1)
    state = optimizer.state_dict()
    with pytest.raises(ValueError, match="saved for 6 parameters, this optimizer has 5"):
        LARS(params[:5], lr=0.1).load_state_dict(state)
    reshaped = [(name, Tensor(xp.zeros(p.shape[::-1]), requires_grad=True)) for name, p in params]
    with pytest.raises(ValueError, match=r"parameter 0 \(conv.weight\) has shape \(3, 3, 3, 4\)"):
        LARS(reshaped, lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="saved by a LARS optimizer"):
        SGD(params, lr=0.1).load_state_dict(state)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_float32_parameters_stay_float32(xp, kind):
    params32, params64 = make_params(xp, "float32"), make_params(xp, "float64")
    optimizer32, optimizer64 = OPTIMIZERS[kind](params32), OPTIMIZERS[kind](params64)
    for step, lr in enumerate(LRS):
        grads = gradients(step, "float32")
        set_gradients(xp, params32, grads)
        set_gradients(xp, params64, [None if g is None else g.astype("float64") for g in grads])
        optimizer32.lr = optimizer64.lr = lr
        optimizer32.step()
        optimizer64.step()
    for (name, p32), (_, p64) in zip(params32, params64):
        assert p32.data.dtype == numpy.float32, name
        assert relative_error(p32.data, to_numpy(p64.data)) <= 1e-5, name
    assert all(b.dtype == numpy.float32 for b in optimizer32.momentum_buffers)


# ----- schedule and learning-rate scaling -------------------------------------------------

def test_warmup_cosine_values():
    schedule = WarmupCosine(base_lr=2.0, warmup_steps=10, total_steps=110)
    assert schedule(0) == 0.0
    assert schedule(5) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(1.8)
    assert schedule(10) == 2.0  # end of warm-up: the full rate
    assert schedule(60) == pytest.approx(1.0)  # half-way through the cosine
    assert schedule(109) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert 0 < schedule(109) < 1e-3
    assert schedule(110) == 0.0 and schedule(500) == 0.0
    values = [schedule(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_cosine_without_warmup_starts_at_base_lr():
    assert WarmupCosine(0.5, 0, 100)(0) == 0.5


def test_warmup_cosine_rejects_bad_arguments():
    with pytest.raises(ValueError, match="must not exceed"):
        WarmupCosine(1.0, 20, 10)
    with pytest.raises(TypeError, match="warmup_steps must be an integer"):
        WarmupCosine(1.0, 2.5, 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        WarmupCosine(1.0, 0, 0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        WarmupCosine(1.0, 1, 10)(-1)


def test_learning_rate_scaling_rules():
    assert linear_scaled_lr(0.3, 256) == pytest.approx(0.3)
    assert linear_scaled_lr(0.3, 4096) == pytest.approx(4.8)
    assert sqrt_scaled_lr(0.075, 4096) == pytest.approx(4.8)
    assert sqrt_scaled_lr(0.075, 256) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        linear_scaled_lr(0.3, 0)
    with pytest.raises(ValueError, match="base_lr"):
        sqrt_scaled_lr(-1.0, 256)


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_optimizer_steps_on_threads_equal_one_thread(split_everything, optimizer):
    """The optimisers hand their parameters to the threads (map_ranges): two steps, under
    split_everything, equal to the bit the same two steps on one thread."""
    def two_steps():
        rng = numpy.random.default_rng(0)
        params = [Parameter(rng.standard_normal(shape).astype("float32"))
                  for shape in ((6, 5), (7,), (3, 2, 2), (1,), (4, 4))]
        make = {"lars": lambda: LARS(params, lr=0.5, weight_decay=1e-3),
                "sgd": lambda: SGD(params, lr=0.5, momentum=0.9, nesterov=True)}[optimizer]
        opt = make()
        for _ in range(2):
            for index, param in enumerate(params):
                param.grad = None if index == 3 else rng.standard_normal(param.shape).astype(
                    "float32")  # parameter 3 has no gradient: left alone
            opt.step()
        return [param.data for param in params]
    threaded = two_steps()
    threads.set_num_threads(1)
    for a, b in zip(threaded, two_steps()):
        numpy.testing.assert_array_equal(a, b)
