"""Batch norm's blocked, threaded kernel (nn/functional/cpu/batch_norm.py, its parts in
cpu/batch_norm_blocks.py) with every split forced on (the `split_everything` fixture of
conftest.py): fused with a ReLU and a residual, in both modes, against finite differences,
PyTorch and the reference; its blocks, its moments and its three ways of centring."""
import numpy
import pytest

import nn.functional as F
from autograd import Tensor, gradcheck, to_numpy
from nn.functional.cpu import batch_norm_blocks
from nn.functional.cpu.batch_norm_blocks import Centring, RowBlocks, batch_moments
from nn.functional.dispatch import use_reference
from nn.functional.normalization import batch_norm_reference
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error


def batch_norm_inputs(xp, shape, dtype="float64"):
    rng = numpy.random.default_rng(5)
    channels = shape[1]
    x = randn(xp, *shape, dtype=dtype, scale=2.0, requires_grad=True)
    residual = randn(xp, *shape, dtype=dtype, seed=9, requires_grad=True)
    weight = Tensor(xp.asarray((1.5 + 0.3 * rng.standard_normal(channels)).astype(dtype)),
                    requires_grad=True)
    bias = Tensor(xp.asarray(rng.standard_normal(channels).astype(dtype)), requires_grad=True)
    stats = (xp.asarray(rng.standard_normal(channels).astype(dtype)),
             xp.asarray((0.5 + rng.random(channels)).astype(dtype)))
    return x, residual, weight, bias, stats


def assert_like_pytorch(ours, theirs, tolerance, case):
    """ours = (output, running_mean, running_var, x, residual, weight, bias) after backward,
    theirs the same from PyTorch: the output, the statistics and the four gradients agree."""
    output, mean, var, *inputs = ours
    t_output, t_mean, t_var, *t_inputs = theirs
    pairs = [("output", output, t_output), ("running_mean", mean, t_mean),
             ("running_var", var, t_var)]
    pairs += [(f"gradient of {name}", mine.grad, t.grad)
              for name, mine, t in zip(("x", "residual", "weight", "bias"), inputs, t_inputs)]
    for what, mine, t in pairs:
        error = relative_error(mine, t.detach().numpy())
        assert error <= tolerance, f"{case} {what}: relative error {error:.3g}"


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", ["relu", "residual", "residual+relu"])
def test_fused_batch_norm_gradients_match_finite_differences(xp, split_everything, training,
                                                             fused):
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(xp, (4, 3, 5, 3))
    relu = "relu" in fused
    if "residual" in fused:
        assert gradcheck(lambda x, r, w, b: F.batch_norm(x, mean, var, w, b, training=training,
                                                         residual=r, relu=relu),
                         [x, residual, weight, bias])
    else:
        assert gradcheck(lambda x, w, b: F.batch_norm(x, mean, var, w, b, training=training,
                                                      relu=relu), [x, weight, bias])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_matches_pytorch(xp, split_everything, dtype, training):
    """relu(bn(x) + residual) and its four gradients, against PyTorch's separate ops."""
    torch = import_torch()
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(xp, (6, 4, 5, 5), dtype)
    x.data += 0.5
    tx, tr, tw, tb = (torch.tensor(to_numpy(t.data), requires_grad=True)
                      for t in (x, residual, weight, bias))
    t_mean, t_var = (torch.from_numpy(to_numpy(s).copy()) for s in (mean, var))
    ours = F.batch_norm(x, mean, var, weight, bias, training=training, momentum=0.3,
                        residual=residual, relu=True)
    theirs = torch.relu(torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb,
                                                       training=training, momentum=0.3) + tr)
    upstream = numpy.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    ours.backward(xp.asarray(upstream))
    theirs.backward(torch.from_numpy(upstream))
    assert_like_pytorch((ours.data, mean, var, x, residual, weight, bias),
                        (theirs, t_mean, t_var, tx, tr, tw, tb), PARITY_TOLERANCE[dtype], dtype)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", ["none", "relu", "residual+relu"])
def test_fused_batch_norm_equals_the_tensor_op_reference(xp, split_everything, fused, training):
    """The kernel against its reference (BatchNormReference, what use_reference() runs): the
    output, every gradient and the running statistics."""
    relu, res = "relu" in fused, "residual" in fused
    results = []
    for reference in (False, True):
        x, residual, weight, bias, (mean, var) = batch_norm_inputs(xp, (5, 4, 3, 6))
        with use_reference(reference):
            out = F.batch_norm(x, mean, var, weight, bias, training=training,
                               residual=residual if res else None, relu=relu)
            out.backward(xp.asarray(numpy.random.default_rng(4).standard_normal(x.shape)))
        results.append([out.data, mean, var, x.grad, weight.grad, bias.grad]
                       + ([residual.grad] if res else []))
    names = ["output", "running_mean", "running_var", "x", "weight", "bias", "residual"]
    for name, kernel, reference in zip(names, *results):
        assert relative_error(kernel, to_numpy(reference)) < 1e-10, name


def test_batch_norm_reference_is_gradient_checked_in_both_modes():
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(numpy, (4, 3, 2, 3))
    gradcheck(lambda x, w, b, r: batch_norm_reference(x, w, b, residual=r, relu=True),
              [x, weight, bias, residual])
    gradcheck(lambda x, w, b: batch_norm_reference(x, w, b, mean=mean, var=var),
              [x, weight, bias])


def test_blocked_moments_are_exact_for_data_far_from_zero(split_everything):
    """A mean 1000 times the spread: E[x^2] - E[x]^2 in float32 would lose every digit; the
    blocks' combined centred sums must match float64 to float32 precision."""
    rng = numpy.random.default_rng(0)
    rows = (1000 + rng.standard_normal((103, 3))).astype(numpy.float32)
    mean, var = batch_moments(rows, RowBlocks(rows))
    exact = rows.astype(numpy.float64)
    numpy.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-7)
    numpy.testing.assert_allclose(var, exact.var(axis=0), rtol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1.0, 3.0, 1e3], ids=lambda v: f"mean={v:g}std")
def test_batch_statistics_of_float32_are_float64_accurate(xp, offset):
    """mean and var of float32 input against float64 ones. Sums of x and x^2 would cancel
    when the mean is large against the spread (at mean = 1000 std, var = E[x^2] - E[x]^2 in
    float32 loses every digit), and float32 sums of many rows lose digits to rounding even
    near zero. The statistics come back in float64, from centred values summed in short
    float32 sums: their errors must lie far below float32's own rounding (6e-8)."""
    rng = numpy.random.default_rng(5)
    C = 24
    spread = numpy.exp(rng.uniform(-3, 3, C))
    x = rng.standard_normal((20000, C)) * spread + offset * spread * rng.choice([-1, 1], C)
    rows = xp.asarray(x.astype(numpy.float32))
    mean, var = batch_moments(rows, RowBlocks(rows))
    exact = x.astype(numpy.float32).astype(numpy.float64)
    assert mean.dtype == var.dtype == numpy.float64
    mean_error = numpy.abs(to_numpy(mean) - exact.mean(axis=0)) / exact.std(axis=0)
    var_error = numpy.abs(to_numpy(var) - exact.var(axis=0)) / exact.var(axis=0)
    assert mean_error.max() < 1e-8 * (1 + offset), mean_error.max()  # 1e-9 of the mean
    assert var_error.max() < 1e-7, f"var relative error {var_error.max():.3g}"


@pytest.mark.parametrize("far", ["none", "few", "many"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_centres_the_channels_far_from_zero_and_matches_pytorch(
        split_everything, far, training):
    """The three ways of batch_norm_blocks.Centring: no channel with mu^2 > var (nothing
    centred), a few (their columns redone apart) and many (whole blocks centred, c = 0 in
    the other channels). Each must give PyTorch's output and gradients in float64, running
    statistics included, and take the way it was meant to."""
    torch = import_torch()
    C = 34                                                     # C // FEW_CENTRED = 2
    offsets = numpy.zeros(C)
    offsets[{"none": [], "few": [5, 20], "many": list(range(0, C, 3))}[far]] = 10.0
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(numpy, (6, C, 3, 4))
    x.data += offsets.reshape(1, C, 1, 1) * x.data.std()
    if not training:                                           # running stats near the batch's
        mean[...] = x.data.mean(axis=(0, 2, 3))
        var[...] = x.data.var(axis=(0, 2, 3))
    centring = Centring(mean if not training else x.data.mean(axis=(0, 2, 3)),
                        var if not training else x.data.var(axis=(0, 2, 3)),
                        x.dtype, RowBlocks(x.data.reshape(-1, C)))
    assert (centring.few_channels is None, centring.whole_blocks) == {
        "none": (True, False), "few": (False, False), "many": (True, True)}[far]
    tx, tr, tw, tb = (torch.tensor(to_numpy(t.data), requires_grad=True)
                      for t in (x, residual, weight, bias))
    t_mean, t_var = (torch.from_numpy(s.copy()) for s in (mean, var))
    ours = F.batch_norm(x, mean, var, weight, bias, training=training, residual=residual,
                        relu=True)
    theirs = torch.relu(torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb,
                                                       training=training) + tr)
    upstream = numpy.random.default_rng(2).standard_normal(x.shape)
    ours.backward(upstream)
    theirs.backward(torch.from_numpy(upstream))
    assert_like_pytorch((ours.data, mean, var, x, residual, weight, bias),
                        (theirs, t_mean, t_var, tx, tr, tw, tb), PARITY_TOLERANCE["float64"], far)


def test_batch_norm_blocks_are_whole_tiles_then_the_rest(monkeypatch):
    monkeypatch.setattr(batch_norm_blocks, "BLOCK_BYTES", 64)  # 8 rows of 8 bytes a block ...
    monkeypatch.setattr(batch_norm_blocks, "TILE_BYTES", 24)  # ... but a whole number of 3-row tiles
    rows = numpy.arange(46, dtype=numpy.float32).reshape(23, 2)
    blocks = RowBlocks(rows)
    assert blocks.tile_rows == 3
    assert blocks.ranges == [(0, 6), (6, 12), (12, 18), (18, 21), (21, 23)]
    for start, stop in blocks.ranges:
        view = blocks.view(rows, start, stop)
        assert view.shape[1:] == blocks.tile(numpy.zeros(2, numpy.float32))[:view.shape[1]].shape
        assert numpy.shares_memory(view, rows)
        numpy.testing.assert_array_equal(view.reshape(-1, 2), rows[start:stop])


def test_batch_norm_rejects_a_residual_of_another_shape():
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(numpy, (2, 3, 4, 4))
    with pytest.raises(ValueError, match="residual has shape"):
        F.batch_norm(x, mean, var, weight, bias, residual=Tensor(residual.data[:1]))
    with pytest.raises(TypeError, match="residual is a ndarray"):
        F.batch_norm(x, mean, var, weight, bias, residual=residual.data)
