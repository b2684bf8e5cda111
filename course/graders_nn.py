"""The cases of the network-level exercises: im2col and col2im, conv2d, max pooling, batch
norm, NT-Xent, and the SGD and LARS updates (the engine's are in graders_engine.py)."""
import numpy

from autograd import Tensor
from nn.functional import conv as library_conv
from nn.functional.windows import output_size, pad2d

from .grading import Case, Mismatch
from .graders_ops import copy, grads_case, op_case, same, tensor

# (N, C, H, W, kh, kw, stride, padding): the geometries that expose the classic mistakes
GEOMETRIES = ((2, 3, 5, 5, 3, 3, 1, 1), (1, 2, 7, 6, 3, 3, 2, 1), (2, 1, 4, 4, 2, 2, 2, 0),
              (1, 2, 5, 4, 1, 3, 1, 0))


def describe(g):
    N, C, H, W, kh, kw, s, p = g
    return f"x ({N}, {C}, {H}, {W}), kernel {kh}x{kw}, stride {s}, padding {p}"


def im2col(m):
    cases = []
    for g in GEOMETRIES:
        def run(rng, g=g):
            N, C, H, W, kh, kw, s, p = g
            Ho, Wo = output_size("conv2d", (H, W), (kh, kw), (s, s), (p, p))
            x_padded = pad2d(rng.standard_normal((N, C, H, W)), (p, p))
            args = (kh, kw, (s, s), Ho, Wo)
            cols = m.im2col(x_padded, *args)
            same(cols, library_conv.im2col(x_padded, *args), f"im2col, {describe(g)}")
            c = rng.standard_normal(cols.shape)
            back = m.col2im(c, x_padded.shape, *args)
            same(back, library_conv.col2im(c, x_padded.shape, *args), f"col2im, {describe(g)}")
            left, right = float((cols * c).sum()), float((x_padded * back).sum())
            if abs(left - right) > 1e-9 * max(1.0, abs(left)):
                raise Mismatch(f"col2im is not im2col's adjoint: <im2col(x), c> = {left:.10g} "
                               f"but <x, col2im(c)> = {right:.10g}")
        cases.append(Case(describe(g), run,
                          "im2col: cols[n, (c, i, j), (p, q)] = x_padded[n, c, s*p + i, s*q + j], "
                          "one strided slice per offset (i, j); col2im ADDS each entry back "
                          "(+=, overlapping windows share pixels), into zeros"))
    return cases


def conv2d(m):
    cases = []
    for index, g in enumerate(GEOMETRIES):
        bias = index != 3

        def make(rng, g=g, bias=bias):
            N, C, H, W, kh, kw, s, p = g
            tensors = [tensor(rng, (N, C, H, W)), tensor(rng, (2, C, kh, kw))]
            return tensors + [tensor(rng, (2,))] if bias else tensors
        s, p = (g[6],) * 2, (g[7],) * 2
        cases.append(op_case(f"{describe(g)}, {'a' if bias else 'no'} bias",
                             lambda *t, s=s, p=p: m.Conv2dReference.apply(*t, stride=s, padding=p),
                             lambda *t, s=s, p=p: library_conv.Conv2dReference.apply(
                                 *t, stride=s, padding=p), make,
                             "dW = sum over the batch of dout[n] @ cols[n]^T (every image uses "
                             "the same filters); db = dout summed over n and the pixels; dx = "
                             "col2im(W^T @ dout) with the padding cut off",
                             names=("x", "weight", "bias")))
    return cases


def max_pool(m):
    from nn.functional.pooling import MaxPool2dReference
    cases = []
    for shape, k, s, p in (((2, 2, 4, 4), 2, 2, 0), ((1, 2, 7, 7), 3, 2, 1),
                           ((2, 1, 5, 6), 3, 1, 1)):
        settings = dict(kernel_size=(k, k), stride=(s, s), padding=(p, p))
        cases.append(op_case(f"x {shape}, kernel {k}, stride {s}, padding {p}",
                             lambda x, st=settings: m.MaxPool2dReference.apply(x, **st),
                             lambda x, st=settings: MaxPool2dReference.apply(x, **st),
                             lambda rng, shape=shape: [tensor(rng, shape)],
                             "each window's g goes to its argmax alone; a pixel that is the "
                             "maximum of several overlapping windows gets the SUM (+=); cut the "
                             "padding off at the end", names=("x",)))
    settings = dict(kernel_size=(2, 2), stride=(1, 1), padding=(0, 0))
    cases.append(grads_case("an image of ties (every pixel 1), kernel 2, stride 1",
                            lambda x: m.MaxPool2dReference.apply(x, **settings),
                            lambda x: MaxPool2dReference.apply(x, **settings),
                            lambda rng: [Tensor(numpy.ones((1, 1, 3, 4)), requires_grad=True)],
                            "a window whose values tie sends g to its FIRST maximum (the saved "
                            "argmax) only"))
    return cases


def batch_norm(m):
    from nn.functional.normalization import BatchNormReference
    cases = []
    for shape, residual, relu, train in (((4, 3, 2, 2), False, False, True),
                                         ((1, 2, 3, 3), False, False, True),
                                         ((5, 3), False, False, True),
                                         ((3, 2, 2, 3), True, True, True),
                                         ((3, 2, 2, 2), False, False, False)):
        channels = shape[1]
        stats = {} if train else dict(running_mean=numpy.linspace(-0.5, 0.5, channels),
                                      running_var=numpy.linspace(0.5, 2.0, channels))

        def settings(stats=stats, train=train, relu=relu):
            return dict(running_mean=stats.get("running_mean"),
                        running_var=stats.get("running_var"), use_batch_stats=train,
                        momentum=0.1, eps=1e-5, relu=relu)

        def make(rng, shape=shape, channels=channels, residual=residual):
            tensors = [tensor(rng, shape), tensor(rng, (channels,), 0.5, 1.5),
                       tensor(rng, (channels,))]
            return tensors + [tensor(rng, shape)] if residual else tensors
        what = ("training" if train else "evaluation") + (", residual and ReLU" if relu else "")
        cases.append(op_case(f"x {shape}, {what}",
                             lambda *t, settings=settings: m.BatchNormReference.apply(
                                 *t, **settings()),
                             lambda *t, settings=settings: BatchNormReference.apply(
                                 *t, **settings()), make,
                             "dx = gamma / (n sigma) (n g - sum(g) - x_hat sum(g x_hat)), sums "
                             "per channel over every axis but 1, n values each, sigma from the "
                             "BIASED variance as in forward; dgamma = sum(g x_hat), dbeta = "
                             "sum(g); mask g by out > 0 first when relu; evaluation: gamma g / "
                             "sigma", names=("x", "gamma", "beta", "residual"),
                             diagnose=batch_norm_diagnosis if train else None))
    return cases


def batch_norm_diagnosis(inputs, student):
    """Which known wrong formula the student's training-mode dx matches, in words, or None."""
    tensors = [copy(t) for t in inputs]
    out = student(*tensors)
    upstream = numpy.random.default_rng(0).standard_normal(out.shape)
    out.backward(upstream)
    x, gamma = inputs[0].data, inputs[1].data
    axes = (0,) + tuple(range(2, x.ndim))
    gamma = gamma.reshape((1, -1) + (1,) * (x.ndim - 2))
    n = x.size // x.shape[1]
    x_hat = (x - x.mean(axis=axes, keepdims=True)) / numpy.sqrt(x.var(axis=axes, keepdims=True)
                                                               + 1e-5)
    sigma = numpy.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
    masked = upstream * (out.data > 0) if len(inputs) == 4 else upstream

    def formula(g, count, mean_term=True, x_hat_term=True):
        total = g.sum(axis=axes, keepdims=True) if mean_term else 0
        along = (g * x_hat).sum(axis=axes, keepdims=True) if x_hat_term else 0
        return gamma / (count * sigma) * (count * g - total - x_hat * along)
    variants = {
        "the formula without its -sum(g) term (the mean of the gradient, from mu)":
            formula(masked, n, mean_term=False),
        "the formula without its -x_hat sum(g x_hat) term (from sigma)":
            formula(masked, n, x_hat_term=False),
        "gamma g / sigma: mu and sigma treated as constants (evaluation mode's formula)":
            formula(masked, n, False, False),
        "the formula with n - 1 values per channel (the unbiased count; forward divides by n)":
            formula(masked, n - 1),
        "the formula applied to g before the ReLU's mask": formula(upstream, n),
    }
    for words, dx in variants.items():
        if tensors[0].grad is not None and numpy.allclose(tensors[0].grad, dx, rtol=1e-8,
                                                          atol=1e-10):
            return f"your dx equals {words}"
    return None


def nt_xent(m):
    from simclr.loss import nt_xent as library_nt_xent
    return [op_case(f"z ({rows}, {d}), temperature {t:g}",
                    lambda z, t=t: m.NTXent.apply(z, temperature=t),
                    lambda z, t=t: library_nt_xent(z, t),
                    lambda rng, rows=rows, d=d: [tensor(rng, (rows, d))],
                    "D = g (p - onehot(pos)) / 2N; u meets itself twice in u u^T, so du = "
                    "(D + D^T) u / T; then dz = (du - u (u . du)) / ||z|| row by row",
                    names=("z",))
            for rows, d, t in ((4, 3, 0.5), (6, 5, 0.1), (8, 2, 1.0))]


def optimizer_case(label, make_student, make_library, shapes, hint, steps=3):
    """Run both optimisers `steps` times on equal parameters and gradients; compare weights."""
    def run(rng):
        names = list(shapes)
        start = {name: rng.standard_normal(shape) if not name.startswith("zero") else
                 numpy.zeros(shape) for name, shape in shapes.items()}
        mine = [(name, Tensor(start[name].copy(), requires_grad=True)) for name in names]
        ref = [(name, Tensor(start[name].copy(), requires_grad=True)) for name in names]
        student, library = make_student(mine), make_library(ref)
        for step in range(1, steps + 1):
            for (_, a), (_, b) in zip(mine, ref):
                a.grad = rng.standard_normal(a.shape)
                b.grad = a.grad.copy()
            student.step()
            library.step()
            for (name, a), (_, b) in zip(mine, ref):
                same(a.data, b.data, f"after step {step}, parameter {name!r} {a.shape}",
                     rtol=1e-12, atol=1e-14)
    return Case(label, run, hint)


def sgd(m):
    from nn.optim import SGD
    shapes = {"fc.weight": (3, 4), "fc.bias": (4,), "conv.weight": (2, 3, 3)}
    hint = ("d = g + weight_decay * w FIRST; the buffer starts as a copy of d, then b = momentum "
            "b + d in place; nesterov: d + momentum b; w -= lr * d in place")
    return [optimizer_case(f"SGD({', '.join(f'{k}={v}' for k, v in options.items())}), 3 steps",
                           lambda p, o=options: m.SGD(p, **o), lambda p, o=options: SGD(p, **o),
                           shapes, hint)
            for options in (dict(lr=0.1, momentum=0.9, weight_decay=0.01),
                            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.001),
                            dict(lr=0.1, momentum=0, weight_decay=0.1))]


def lars(m):
    from nn.optim import LARS
    shapes = {"conv.weight": (3, 2, 3, 3), "fc.weight": (4, 3), "fc.bias": (4,),
              "bn.weight": (3,), "zero.weight": (2, 2)}
    hint = ("excluded (one-dimensional: biases, batch norm): no weight decay, trust 1; others: g "
            "+ weight_decay w, then trust = eta ||w|| / ||g||; v = momentum v + lr trust g; w -= v")
    options = dict(lr=0.5, momentum=0.9, weight_decay=0.01, eta=0.01)
    return [optimizer_case("LARS with the default exclusion, 3 steps",
                           lambda p: m.LARS(p, **options), lambda p: LARS(p, **options),
                           shapes, hint),
            optimizer_case("LARS excluding the parameters named fc.*, 3 steps",
                           lambda p: m.LARS(p, exclude=_fc, **options),
                           lambda p: LARS(p, exclude=_fc, **options), shapes, hint)]


def _fc(name, param):
    return name.startswith("fc.")
