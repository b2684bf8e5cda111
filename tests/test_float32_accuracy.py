"""float32 as accurate as PyTorch's: each op's float32 output and gradients, measured against
float64 truth, must err at most twice as much as PyTorch's float32 do on the same inputs.

Parity tests elsewhere hold our float32 results to PyTorch's at 1e-5, which tells nothing
about which of the two is nearer the truth: an op can pass them while losing two digits that
PyTorch keeps (batch norm's weight gradient once erred 20x more than PyTorch's where the input
had a mean of 10 standard deviations, as after a ReLU). Here both libraries run in float32
on the same float32 inputs and the same random upstream gradient, and each result is compared
with PyTorch's float64 result on those inputs (the truth; our own float64 path agrees with it
to 1e-10, test_*_matches_pytorch). Inputs have mean offsets 0, 3 and 10 (in units of their
spread), where sums of raw values cancel.

The error measure is max |ours - truth| / max |truth| over the whole array: the error in
units of the array's own scale. An elementwise relative error would be ruled by the values
near zero that neither library can get right relatively (a gradient that cancels to 1e-9);
a relative 2-norm would average a few large errors away. A small floor (FLOOR, a sixth of
float32's rounding unit 2^-24) keeps an error of 1e-9 against PyTorch's 0 from failing.

Where a ReLU follows, the upstream gradient is zeroed where the float64 value before the ReLU
lies within 1e-4 of its maximum magnitude from zero: there float32 rounding may flip the ReLU's
mask in either library, a difference of the whole gradient at that element, which measures
the luck of the draw, not the accuracy.
"""
import functools

import numpy
import pytest

import nn.functional as F
from autograd import Tensor
from nn.runtime import threads
from helpers import relative_error
from simclr.loss import nt_xent

torch = pytest.importorskip("torch", reason="PyTorch is not installed: accuracy test skipped")
TF = torch.nn.functional

FLOOR = 1e-8
OFFSETS = (0, 3, 10)


@pytest.fixture(scope="module", autouse=True)
def fixed_threads():
    """PyTorch on one thread and ours on two, so that the float32 sums (a product's split over
    threads decides where its partial sums end), and so both errors, are the same on every
    run and every machine."""
    theirs, ours = torch.get_num_threads(), threads.get_num_threads()
    torch.set_num_threads(1)
    threads.set_num_threads(2)
    yield
    torch.set_num_threads(theirs)
    threads.set_num_threads(ours)


def compare(ours, theirs, arrays, names, before_relu=None, seed=0):
    """{name: (our error, PyTorch's error)} for the output and each input's gradient.

    ours, theirs: functions of Tensors / torch tensors -> one output; arrays: float32 inputs;
    before_relu: theirs without its final ReLU, for the mask-flip guard (module docstring)."""
    rng = numpy.random.default_rng(seed + 1000)
    float64 = [torch.tensor(a, dtype=torch.float64) for a in arrays]
    with torch.no_grad():
        shape = theirs(*float64).shape
    upstream = rng.standard_normal(shape).astype(numpy.float32)
    if before_relu is not None:
        with torch.no_grad():
            kink = before_relu(*float64).numpy()
        upstream[numpy.abs(kink) < 1e-4 * numpy.abs(kink).max()] = 0
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = ours(*tensors)
    out.backward(upstream)
    results = {"float32": [out.data] + [t.grad for t in tensors]}
    for dtype in (torch.float32, torch.float64):
        inputs = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
        reference = theirs(*inputs)
        reference.backward(torch.tensor(upstream, dtype=dtype))
        results[dtype] = [reference.detach().numpy()] + [t.grad.numpy() for t in inputs]
    truth = results[torch.float64]
    return {name: (relative_error(mine, exact), relative_error(theirs32, exact))
            for name, mine, theirs32, exact in zip(names, results["float32"],
                                                  results[torch.float32], truth)}


# ----- the cases: (op, its parameters, offset), each computed once --------------------------

def batch_norm_case(shape, mode, offset, seed=0):
    """mode: train or eval, + "relu" (ReLU after), + "res" (a residual added before it).
    offset: one for every channel, or a tuple of one per channel."""
    rng = numpy.random.default_rng(seed)
    C = shape[1]
    per_channel = (1, C) + (1,) * (len(shape) - 2)
    spread = numpy.exp(rng.uniform(-1, 1, C)).reshape(per_channel)
    offset = numpy.broadcast_to(numpy.asarray(offset, dtype=float), (C,)).reshape(per_channel)
    x = (rng.standard_normal(shape) + offset) * spread
    axes = (0,) + tuple(range(2, len(shape)))
    # evaluation mode: running statistics near, not at, the batch's own
    running_mean = x.mean(axis=axes) * (1 + 0.01 * rng.standard_normal(C))
    running_var = x.var(axis=axes) * (1 + 0.1 * rng.uniform(0, 1, C))
    arrays = [x, rng.uniform(0.5, 1.5, C), rng.standard_normal(C)]
    if "res" in mode:
        arrays.append(rng.standard_normal(shape))
    arrays = [a.astype(numpy.float32) for a in arrays]
    stats = [s.astype(numpy.float32) for s in (running_mean, running_var)]
    training, relu = mode.startswith("train"), "relu" in mode

    def ours(x, weight, bias, *residual):
        return F.batch_norm(x, stats[0].copy(), stats[1].copy(), weight, bias,
                            training=training, residual=residual[0] if residual else None,
                            relu=relu)

    def before_relu(x, weight, bias, *residual):
        mean, var = (torch.tensor(s, dtype=x.dtype) for s in stats)
        y = TF.batch_norm(x, mean, var, weight, bias, training=training)
        return y + residual[0] if residual else y

    def theirs(*inputs):
        y = before_relu(*inputs)
        return TF.relu(y) if relu else y
    names = ["y", "dx", "dweight", "dbias", "dresidual"][:len(arrays) + 1]
    return compare(ours, theirs, arrays, names, before_relu if relu else None, seed)


def conv2d_case(N, C, F_out, H, kernel, stride, padding, offset, seed=0):
    rng = numpy.random.default_rng(seed)
    arrays = [rng.standard_normal((N, C, H, H)) + offset,
              rng.standard_normal((F_out, C, kernel, kernel)) / numpy.sqrt(C * kernel ** 2),
              rng.standard_normal(F_out)]
    return compare(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding),
                   lambda x, w, b: TF.conv2d(x, w, b, stride=stride, padding=padding),
                   [a.astype(numpy.float32) for a in arrays], ["y", "dx", "dweight", "dbias"],
                   seed=seed)


def linear_case(N, n_in, n_out, offset, seed=0):
    rng = numpy.random.default_rng(seed)
    arrays = [rng.standard_normal((N, n_in)) + offset,
              rng.standard_normal((n_out, n_in)) / numpy.sqrt(n_in), rng.standard_normal(n_out)]
    return compare(F.linear, TF.linear, [a.astype(numpy.float32) for a in arrays],
                   ["y", "dx", "dweight", "dbias"], seed=seed)


def pool_case(op, kernel, stride, padding, offset, seed=0):
    x = numpy.random.default_rng(seed).standard_normal((8, 32, 16, 16)) + offset
    return compare(lambda x: getattr(F, op)(x, kernel, stride, padding),
                   lambda x: getattr(TF, op)(x, kernel, stride, padding),
                   [x.astype(numpy.float32)], ["y", "dx"], seed=seed)


def nt_xent_case(two_n, dim, temperature, offset, seed=0):
    z = numpy.random.default_rng(seed).standard_normal((two_n, dim)) + offset

    def theirs(z):  # the same loss in PyTorch: the self-similarity masked by -1e9
        u = TF.normalize(z, dim=1)
        logits = u @ u.T / temperature + torch.eye(two_n, dtype=z.dtype) * -1e9
        positives = torch.cat([torch.arange(two_n // 2, two_n), torch.arange(0, two_n // 2)])
        return TF.cross_entropy(logits, positives)
    return compare(lambda z: nt_xent(z, temperature), theirs, [z.astype(numpy.float32)],
                   ["loss", "dz"], seed=seed)


BN_MODES = ("train", "train+relu", "train+res+relu", "eval", "eval+res+relu")
CASES = {}
for offset in OFFSETS:
    for shape in ((256, 32), (32, 128, 8, 8)):
        for mode in BN_MODES:
            CASES[f"batch_norm-{'x'.join(map(str, shape))}-{mode}-offset{offset}"] = \
                functools.partial(batch_norm_case, shape, mode, offset)
    for name, args in (("im2col-3x3-16x16", (8, 32, 32, 16, 3, 1, 1)),
                       ("im2col-3x3-stride2", (8, 32, 64, 16, 3, 2, 1)),
                       ("im2col-3x3-rgb", (8, 3, 32, 32, 3, 1, 1)),
                       ("1x1", (8, 256, 64, 8, 1, 1, 0)),
                       ("winograd-8x8", (8, 64, 64, 8, 3, 1, 1)),
                       ("winograd-4x4", (8, 32, 64, 4, 3, 1, 1))):
        CASES[f"conv2d-{name}-offset{offset}"] = functools.partial(conv2d_case, *args, offset)
    for args in ((64, 512, 128), (256, 2048, 128)):
        CASES[f"linear-{'x'.join(map(str, args))}-offset{offset}"] = \
            functools.partial(linear_case, *args, offset)
    for name, args in (("max_pool2d-3x3-stride2", ("max_pool2d", 3, 2, 1)),
                       ("avg_pool2d-2x2", ("avg_pool2d", 2, 2, 0)),
                       ("avg_pool2d-3x3-stride2", ("avg_pool2d", 3, 2, 1))):
        CASES[f"{name}-offset{offset}"] = functools.partial(pool_case, *args, offset)
    for args in ((64, 128, 0.5), (256, 128, 0.1)):
        CASES[f"nt_xent-{args[0]}x{args[1]}-t{args[2]}-offset{offset}"] = \
            functools.partial(nt_xent_case, *args, offset)
# the case: a ResNet's first batch norm at offset 10, where dweight erred 20x more
for mode in ("train", "train+res+relu", "eval"):
    CASES[f"batch_norm-16x64x32x32-{mode}-offset10-large"] = \
        functools.partial(batch_norm_case, (16, 64, 32, 32), mode, 10)


# batch norm centres x only in the channels with mu^2 > var (batch_norm_blocks.Centring): at the
# limit, offset 1, nothing is centred; with a few channels far from zero (at most C / 16)
# their columns are redone apart; with more, whole blocks are centred, c = 0 in the others
MIXED = {"few": tuple(10.0 if c in (3, 70, 100) else 0.0 for c in range(128)),
         "many": tuple(10.0 if c % 4 == 0 else 1.0 for c in range(128))}
for mode in BN_MODES:
    for shape in ((256, 32), (32, 128, 8, 8)):
        CASES[f"batch_norm-{'x'.join(map(str, shape))}-{mode}-offset1"] = \
            functools.partial(batch_norm_case, shape, mode, 1)
    for name, offsets in MIXED.items():
        CASES[f"batch_norm-32x128x8x8-{mode}-offsets-{name}"] = \
            functools.partial(batch_norm_case, (32, 128, 8, 8), mode, offsets)


@functools.lru_cache(maxsize=None)
def errors(case):
    return CASES[case]()


def quantities(case):
    if case.startswith("batch_norm"):
        return ["y", "dx", "dweight", "dbias"] + (["dresidual"] if "+res" in case else [])
    if case.startswith(("conv2d", "linear")):
        return ["y", "dx", "dweight", "dbias"]
    return ["loss", "dz"] if case.startswith("nt_xent") else ["y", "dx"]


# What an op still misses, measured, as {(case, quantity): reason}: each a strict xfail until
# fixed (conv2d's 1x1 dW and db were, at 2.2-2.7x and 4.6x PyTorch's error, until they summed
# shorter runs: passes.matmul_transposed and passes.column_sum, in nn/functional/cpu). None at
# present.
KNOWN = {}


def parameters():
    for case in CASES:
        for quantity in quantities(case):
            reason = KNOWN.get((case, quantity))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(case, quantity, id=f"{case}-{quantity}", marks=marks)


@pytest.mark.parametrize("case, quantity", list(parameters()))
def test_float32_error_is_at_most_twice_pytorchs(case, quantity):
    ours, theirs = errors(case)[quantity]
    assert ours <= 2 * theirs + FLOOR, (
        f"{case} {quantity}: float32 error {ours:.3g}, PyTorch's {theirs:.3g} "
        f"({ours / max(theirs, 1e-300):.2f}x)")
