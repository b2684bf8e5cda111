"""Random compositions of the functional ops, many of them one after another in one process.

A test of one op at a time starts from a fresh process state and cannot see what one call
leaves for the next: a scratch array reused by shape alone once gave a convolution another
convolution's pixels as its zero padding, and every single-op test passed. Here seeded random
chains of conv2d (kernels 1, 3, 5; strides 1, 2; paddings 0..k//2+1; so the im2col, 1x1 and
Winograd paths), batch_norm (training and evaluation, with and without running statistics,
residual and ReLU), relu, max and average pooling, linear after a flatten, and sometimes
cross_entropy, run on small maps of a few channels whose padded shapes collide on purpose, and
nothing is reset between chains. Each chain is gradient-checked in float64 and, where PyTorch
is installed, compared with PyTorch's forward and backward: on one thread with the default
splits, on two threads with every split forced down to single images and rows, and on one
thread with the scratch arrays forgotten at almost every request. The collisions that were
bugs, one by one, are in tests/test_state_between_calls.py.
"""

import numpy
import pytest

import nn.functional as F
from autograd import Tensor, gradcheck, to_numpy
from nn.functional import conv
from nn.runtime import scratch, threads
from nn.functional.cpu.winograd import Conv2dWinograd
from helpers import PARITY_TOLERANCE, force_every_split, import_torch, relative_error

GRADCHECK_CHAINS = {"1-thread": 160, "2-threads": 30, "evicting": 40}
PARITY_CHAINS = {"1-thread": 400, "2-threads": 300, "evicting": 200}
CHECKED_ELEMENTS = 200  # gradcheck at most about this many input elements of a chain


# ----- the chains --------------------------------------------------------------------------

def _conv_layer(rng, shape, channels):
    """A conv2d that fits the (N, C, H, W) input `shape`: (spec, output shape). One in four is
    Winograd's (3x3, stride 1, padding 1) where the map is even and small enough."""
    N, C, H, W = shape
    if H % 2 == 0 and W % 2 == 0 and H * W <= conv.WINOGRAD_MAX_PIXELS and rng.random() < 0.25:
        k, stride, padding = 3, 1, 1
    else:
        while True:
            k, stride = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2]))
            padding = int(rng.integers(0, k // 2 + 2))
            if min(H, W) + 2 * padding >= k:
                break
    out = C if rng.random() < 0.6 or C not in channels else int(rng.choice(channels))
    Ho, Wo = ((size + 2 * padding - k) // stride + 1 for size in (H, W))
    spec = {"op": "conv2d", "kernel": k, "stride": stride, "padding": padding, "out": out,
            "bias": bool(rng.random() < 0.5)}
    return spec, (N, out, Ho, Wo)


def _pool_layer(rng, shape):
    N, C, H, W = shape
    k = int(rng.choice([2, 3]))
    stride, padding = int(rng.choice([1, 2, k])), int(rng.integers(0, k // 2 + 1))
    if min(H, W) + 2 * padding < k:
        return None
    op = "max_pool2d" if rng.random() < 0.5 else "avg_pool2d"
    Ho, Wo = ((size + 2 * padding - k) // stride + 1 for size in (H, W))
    return {"op": op, "kernel": k, "stride": stride, "padding": padding}, (N, C, Ho, Wo)


def _batch_norm_layer(rng, shape):
    if numpy.prod(shape) // shape[1] <= 1:
        return None  # one value per channel: no batch statistics
    training = bool(rng.random() < 0.6)
    running = (not training) or bool(rng.random() < 0.5)
    return {"op": "batch_norm", "training": training, "running": running,
            "residual": bool(rng.random() < 0.4), "relu": bool(rng.random() < 0.5)}, shape


def random_chain(rng, channels=(2, 3), wide=False):
    """A chain of 2 to 6 ops on a random small input: (input shape, [spec, ...]).

    The input is N = 2 or 3 images of 1..12 pixels a side (mostly square, so that many
    convolutions in a row and across chains reach the same padded shapes) with channels from
    `channels`; wide=True draws 16 channels throughout, where conv2d's dW comes from the
    columns of its input gradient (the backward by the flipped kernel, cpu/conv.py)."""
    channels = (16,) if wide else channels
    H = int(rng.integers(1, 13))
    W = H if rng.random() < 0.8 else int(rng.integers(1, 13))
    shape = (int(rng.choice([2, 3])), int(rng.choice(channels)), H, W)
    input_shape, specs = shape, []
    length = int(rng.integers(2, 7))
    while len(specs) < length:
        last = len(specs) == length - 1
        if len(shape) == 4:
            kind = rng.choice(["conv2d", "conv2d", "conv2d", "batch_norm", "relu", "pool",
                               "linear"])
        else:
            kind = rng.choice(["linear", "batch_norm", "relu"] + ["cross_entropy"] * last)
        if kind == "conv2d":
            made = _conv_layer(rng, shape, channels)
        elif kind == "pool":
            made = _pool_layer(rng, shape)
        elif kind == "batch_norm":
            made = _batch_norm_layer(rng, shape)
        elif kind == "relu":
            made = {"op": "relu"}, shape
        elif kind == "linear":
            out = int(rng.integers(2, 5))
            made = {"op": "linear", "out": out, "bias": bool(rng.random() < 0.5)}, (shape[0], out)
        else:
            made = {"op": "cross_entropy"}, ()
        if made is not None:
            specs.append(made[0])
            shape = made[1]
    return input_shape, specs


def parameters(rng, input_shape, specs):
    """The float64 arrays of a chain: its input, then each op's parameters in order (conv
    weight and bias; batch norm's gamma and beta; linear weight and bias), and the constants
    that are not differentiated (running statistics, class targets), per op."""
    shape, arrays, constants = input_shape, [rng.standard_normal(input_shape)], []
    for spec in specs:
        op, const = spec["op"], {}
        if op == "conv2d":
            C, k = shape[1], spec["kernel"]
            arrays.append(rng.standard_normal((spec["out"], C, k, k)) / numpy.sqrt(C * k * k))
            if spec["bias"]:
                arrays.append(0.5 * rng.standard_normal(spec["out"]))
            Ho, Wo = ((size + 2 * spec["padding"] - k) // spec["stride"] + 1
                      for size in shape[2:])
            shape = (shape[0], spec["out"], Ho, Wo)
        elif op == "batch_norm":
            C = shape[1]
            arrays += [1.5 + 0.3 * rng.standard_normal(C), rng.standard_normal(C)]
            if spec["running"]:
                const["running"] = (0.3 * rng.standard_normal(C), 0.5 + rng.random(C))
        elif op in ("max_pool2d", "avg_pool2d"):
            k, s, p = spec["kernel"], spec["stride"], spec["padding"]
            shape = shape[:2] + tuple((size + 2 * p - k) // s + 1 for size in shape[2:])
        elif op == "linear":
            features = int(numpy.prod(shape[1:]))
            arrays.append(rng.standard_normal((spec["out"], features)) / numpy.sqrt(features))
            if spec["bias"]:
                arrays.append(0.5 * rng.standard_normal(spec["out"]))
            shape = (shape[0], spec["out"])
        elif op == "cross_entropy":
            const["target"] = rng.integers(0, shape[1], shape[0])
        constants.append(const)
    return arrays, constants


def run_ours(specs, constants, tensors, xp=numpy):
    """The chain on our ops: tensors = [input, parameters...] as `parameters` lists them."""
    h, rest = tensors[0], list(tensors[1:])
    for spec, const in zip(specs, constants):
        op = spec["op"]
        if op == "conv2d":
            weight, bias = rest.pop(0), rest.pop(0) if spec["bias"] else None
            h = F.conv2d(h, weight, bias, stride=spec["stride"], padding=spec["padding"])
        elif op == "batch_norm":
            gamma, beta = rest.pop(0), rest.pop(0)
            mean, var = const.get("running", (None, None))
            h = F.batch_norm(h, mean, var, gamma, beta, training=spec["training"],
                             residual=h if spec["residual"] else None, relu=spec["relu"])
        elif op == "relu":
            h = F.relu(h)
        elif op == "max_pool2d":
            h = F.max_pool2d(h, spec["kernel"], spec["stride"], spec["padding"])
        elif op == "avg_pool2d":
            h = F.avg_pool2d(h, spec["kernel"], spec["stride"], spec["padding"])
        elif op == "linear":
            weight, bias = rest.pop(0), rest.pop(0) if spec["bias"] else None
            h = F.linear(h.reshape(h.shape[0], -1), weight, bias)
        else:
            h = F.cross_entropy(h, xp.asarray(const["target"]))
    return h


def run_torch(torch, specs, constants, tensors):
    """The same chain on PyTorch's ops."""
    tF = torch.nn.functional
    h, rest = tensors[0], list(tensors[1:])
    for spec, const in zip(specs, constants):
        op = spec["op"]
        if op == "conv2d":
            weight, bias = rest.pop(0), rest.pop(0) if spec["bias"] else None
            h = tF.conv2d(h, weight, bias, stride=spec["stride"], padding=spec["padding"])
        elif op == "batch_norm":
            gamma, beta = rest.pop(0), rest.pop(0)
            mean, var = (torch.tensor(s) for s in const["running"]) if spec["running"] \
                else (None, None)
            y = tF.batch_norm(h, mean, var, gamma, beta, training=spec["training"])
            y = y + h if spec["residual"] else y
            h = torch.relu(y) if spec["relu"] else y
        elif op == "relu":
            h = torch.relu(h)
        elif op == "max_pool2d":
            h = tF.max_pool2d(h, spec["kernel"], spec["stride"], spec["padding"])
        elif op == "avg_pool2d":
            h = tF.avg_pool2d(h, spec["kernel"], spec["stride"], spec["padding"])
        elif op == "linear":
            weight, bias = rest.pop(0), rest.pop(0) if spec["bias"] else None
            h = tF.linear(h.reshape(h.shape[0], -1), weight, bias)
        else:
            h = tF.cross_entropy(h, torch.tensor(const["target"]))
    return h


def describe(input_shape, specs):
    parts = []
    for spec in specs:
        settings = ",".join(f"{key}={value}" for key, value in spec.items() if key != "op")
        parts.append(f"{spec['op']}({settings})")
    return f"{input_shape}: " + " -> ".join(parts)


def uses(specs, path, shape):
    """Whether a chain starting from `shape` has a conv2d that takes `path`: "winograd",
    "1x1" (one matrix product, no im2col) or "im2col"."""
    for spec in specs:
        if spec["op"] == "conv2d":
            k, s, p = spec["kernel"], spec["stride"], spec["padding"]
            H, W = shape[2:]
            x = Tensor(numpy.empty(shape))
            weight = Tensor(numpy.empty((spec["out"], shape[1], k, k)))
            if conv.implementation(x, weight, (s, s), (p, p)) is Conv2dWinograd:
                taken = "winograd"
            else:
                taken = "1x1" if k == 1 and p == 0 else "im2col"
            if taken == path:
                return True
            shape = (shape[0], spec["out"]) + tuple((size + 2 * p - k) // s + 1 for size in (H, W))
        elif spec["op"] in ("max_pool2d", "avg_pool2d"):
            k, s, p = spec["kernel"], spec["stride"], spec["padding"]
            shape = shape[:2] + tuple((size + 2 * p - k) // s + 1 for size in shape[2:])
        elif spec["op"] == "linear":
            return False
    return False


# ----- how the chains run ------------------------------------------------------------------

@pytest.fixture(params=list(GRADCHECK_CHAINS))
def mode(request, monkeypatch):
    """1-thread: the default splits, one thread. 2-threads: two threads with every split a big
    array would see forced onto the small ones (no minimum work per thread, conv chunks and
    Winograd pieces of one image, batch-norm blocks of a few rows). evicting: one thread, and
    the scratch arrays evicted at almost every request, while views of them are in use."""
    before = threads.get_num_threads()
    if request.param == "2-threads":
        threads.set_num_threads(2)
        if threads.get_num_threads() != 2:
            pytest.skip("NumPy's BLAS is not OpenBLAS here: the CPU kernels run one thread")
        force_every_split(monkeypatch)
    else:
        threads.set_num_threads(1)
    if request.param == "evicting":
        monkeypatch.setattr(scratch, "MAX_ARRAYS", 1)
    yield request.param
    threads.set_num_threads(before)


def chains(seed, count):
    """`count` chains from one seed, with their arrays: one in ten with 16 channels."""
    rng = numpy.random.default_rng(seed)
    for index in range(count):
        input_shape, specs = random_chain(rng, wide=index % 10 == 9)
        arrays, constants = parameters(rng, input_shape, specs)
        yield input_shape, specs, arrays, constants


@pytest.mark.parametrize("seed, count", [(1, min(GRADCHECK_CHAINS.values())),
                                         (2, min(PARITY_CHAINS.values()))])
def test_the_chains_of_every_mode_cover_every_conv_path_and_op(seed, count):
    drawn = list(chains(seed, count))
    for path in ("winograd", "1x1", "im2col"):
        assert sum(uses(specs, path, shape) for shape, specs, _, _ in drawn) >= 3, path
    ops = [spec["op"] for _, specs, _, _ in drawn for spec in specs]
    for op in ("conv2d", "batch_norm", "relu", "max_pool2d", "avg_pool2d", "linear",
               "cross_entropy"):
        assert ops.count(op) >= 2, op


def test_random_compositions_match_finite_differences(mode):
    """Every chain's gradients, with a random upstream gradient, against central differences:
    those of its smallest inputs, up to CHECKED_ELEMENTS elements in all (at least one)."""
    failures = []
    count = GRADCHECK_CHAINS[mode]
    for input_shape, specs, arrays, constants in chains(1, count):
        order = numpy.argsort([a.size for a in arrays], kind="stable")
        checked, budget = set(), CHECKED_ELEMENTS
        for index in order:  # the smallest always, then the others while they fit
            if arrays[index].size <= budget or not checked:
                checked.add(int(index))
                budget -= arrays[index].size
        tensors = [Tensor(a.copy(), requires_grad=i in checked) for i, a in enumerate(arrays)]
        try:
            gradcheck(lambda *ts: run_ours(specs, constants, ts), tensors)
        except AssertionError as error:
            failures.append(f"{describe(input_shape, specs)}\n    {str(error).splitlines()[0]}")
    assert not failures, f"{len(failures)} of {count} chains:\n" + "\n".join(failures)


def test_random_compositions_match_pytorch(xp, mode):
    """Every chain's output and the gradients of all its inputs against PyTorch's, float64.
    A gradient's error is relative to the chain's largest gradient element: some gradients
    are zero in exact arithmetic (a bias before a training-mode batch norm), and both
    libraries give rounding noise there, amplified by a batch norm of a few values."""
    torch = import_torch()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its threads would wait for cores that ours are using
    try:
        check_against_torch(torch, xp, PARITY_CHAINS[mode])
    finally:
        torch.set_num_threads(torch_threads)


def check_against_torch(torch, xp, count):
    failures = []
    tolerance = PARITY_TOLERANCE["float64"]
    rng = numpy.random.default_rng(3)
    for input_shape, specs, arrays, constants in chains(2, count):
        ours = [Tensor(xp.asarray(a), requires_grad=True) for a in arrays]
        theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
        our_constants = [{key: tuple(xp.asarray(s.copy()) for s in value) if key == "running"
                          else value for key, value in const.items()} for const in constants]
        out = run_ours(specs, our_constants, ours, xp)
        out_torch = run_torch(torch, specs, constants, theirs)
        upstream = rng.standard_normal(out.shape)
        out.backward(xp.asarray(upstream))
        out_torch.backward(torch.tensor(upstream))
        errors = [relative_error(out.data, out_torch.detach().numpy())]
        largest = max(float(abs(u.grad).max()) for u in theirs)
        errors += [float(abs(to_numpy(t.grad) - u.grad.numpy()).max())
                   / max(largest, 1e-300) for t, u in zip(ours, theirs)]
        if max(errors) > tolerance:
            worst = int(numpy.argmax(errors))
            what = "the output" if worst == 0 else f"the gradient of input {worst - 1}"
            failures.append(f"{describe(input_shape, specs)}\n    {what}: relative error "
                            f"{errors[worst]:.3g}")
    assert not failures, f"{len(failures)} of {count} chains:\n" + "\n".join(failures)
