"""The cases of the engine-level exercises: broadcasting, matmul, reductions, exp/log and
log-softmax, cross-entropy, linear, ReLU, and the backward pass itself.

Each grader takes the student's module and returns its Cases, in the order a mistake is best
explained: the shapes that expose the classic mistakes come first where they make the clearest
message (size-1 axes for unbroadcast, a batch of 1, x * x). Every gradient check is
autograd.gradcheck in float64 with a random upstream gradient of the grader's seed.
"""
import numpy

from autograd import GradcheckError, Tensor, gradcheck
from autograd.ops import arithmetic, elementwise, reduce

from .grading import Case, Mismatch


def tensor(rng, shape, low=None, high=None, grad=True):
    """A float64 Tensor of standard normal values (or uniform in [low, high])."""
    data = (rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape))
    return Tensor(numpy.asarray(data, dtype=numpy.float64), requires_grad=grad)


def copy(t):
    return Tensor(t.data.copy(), requires_grad=t.requires_grad)


def same(actual, expected, what, rtol=1e-10, atol=1e-12):
    """Mismatch unless `actual` (array or Tensor) equals `expected` in shape and values."""
    actual = actual.data if isinstance(actual, Tensor) else actual
    expected = expected.data if isinstance(expected, Tensor) else expected
    actual, expected = numpy.asarray(actual), numpy.asarray(expected)
    if actual.shape != expected.shape:
        raise Mismatch(f"{what}: shape {actual.shape}, expected {expected.shape}")
    close = numpy.isclose(actual, expected, rtol=rtol, atol=atol)
    if not close.all():
        worst = numpy.unravel_index(int(numpy.argmax(numpy.where(
            close, 0, numpy.abs(actual - expected) + 1))), actual.shape)
        raise Mismatch(f"{what}: wrong at {int((~close).sum())} of {actual.size} elements; "
                       f"at {tuple(int(i) for i in worst)} yours is {actual[worst]:.10g}, the "
                       f"reference's {expected[worst]:.10g}")


def op_case(label, student, library, make, hint, names=(), diagnose=None):
    """A Case: inputs from make(rng), forward equal to the library's, then gradcheck.

    names: the inputs' names, put into gradcheck's message ("input 0 (x)"). diagnose(inputs,
    student): when the check fails, a sentence saying which known mistake the student's
    gradients match, if one does (None otherwise)."""
    def run(rng):
        inputs = make(rng)
        same(student(*inputs), library(*(copy(t) for t in inputs)), f"{label}: forward")
        try:
            gradcheck(student, inputs, seed=int(rng.integers(1 << 30)))
        except GradcheckError as error:
            message = str(error)
            for position, name in enumerate(names):
                message = message.replace(f"input {position} (shape", f"input {position} "
                                                                      f"({name}, shape")
            found = diagnose(inputs, student) if diagnose else None
            raise GradcheckError(message + (f"\n  diagnosis: {found}" if found else ""))
    return Case(label, run, hint)


def grads_case(label, student, library, make, hint):
    """A Case for points where finite differences cannot see (ties, kinks): the student's
    gradients equal the library's, input by input."""
    def run(rng):
        inputs = make(rng)
        theirs = [copy(t) for t in inputs]
        upstream = None
        for fn, tensors in ((student, inputs), (library, theirs)):
            out = fn(*tensors)
            upstream = rng.standard_normal(out.shape) if upstream is None else upstream
            out.backward(upstream)
        for position, (mine, ref) in enumerate(zip(inputs, theirs)):
            got = mine.grad if mine.grad is not None else numpy.zeros(mine.shape)
            same(got, ref.grad, f"{label}: gradient of input {position}")
    return Case(label, run, hint)


UNBROADCAST_HINT = ("sum over the leading axes broadcasting added, then, keeping the axis, over "
                    "every axis where the input had size 1 and the gradient does not")


def broadcast(m):
    cases = []
    for shape, target in (((2, 3, 4), (3, 1)), ((5, 4), (1, 4)), ((3, 1, 2), (3, 1, 2)),
                          ((4, 3), (3,)), ((2, 1, 3), (1, 1, 1))):
        def run(rng, shape=shape, target=target):
            grad = rng.standard_normal(shape)
            same(m.unbroadcast(grad, target), arithmetic.unbroadcast(grad, target),
                 f"unbroadcast of a {shape} gradient to {target}")
        cases.append(Case(f"unbroadcast {shape} -> {target}", run, UNBROADCAST_HINT))
    for name, mine, ref in (("add", m.Add, arithmetic.Add), ("mul", m.Mul, arithmetic.Mul)):
        for a, b in (((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((1,), (3, 2)), ((2, 3), (2, 3))):
            cases.append(op_case(f"{name} of shapes {a} and {b}", mine.apply, ref.apply,
                                 lambda rng, a=a, b=b: [tensor(rng, a), tensor(rng, b)],
                                 f"{name}'s gradients must have the inputs' shapes: "
                                 f"{UNBROADCAST_HINT}" + (" (d(a*b)/da = b, d(a*b)/db = a)"
                                                          if name == "mul" else ""),
                                 names=("a", "b")))
    cases.append(op_case("x * x (one tensor as both inputs)", lambda x: m.Mul.apply(x, x),
                         lambda x: arithmetic.Mul.apply(x, x), lambda rng: [tensor(rng, (3, 2))],
                         "each input's gradient is g times the OTHER input; the engine adds the "
                         "two uses of x"))
    return cases


def matmul(m):
    hint = ("dA = dC @ B^T (n, m) @ (m, k) and dB = A^T @ dC (k, n) @ (n, m): the transpose "
            "goes on the other operand, on the side where the inner sizes meet; batch axes "
            "unbroadcast")
    cases = [op_case(f"{a} @ {b}", m.MatMul.apply, arithmetic.MatMul.apply,
                     lambda rng, a=a, b=b: [tensor(rng, a), tensor(rng, b)], hint,
                     names=("a", "b"))
             for a, b in (((3, 4), (4, 5)), ((1, 3), (3, 1)), ((2, 3, 4), (4, 2)),
                          ((2, 1, 3, 4), (3, 4, 2)))]
    cases.append(op_case("x @ x", lambda x: m.MatMul.apply(x, x),
                         lambda x: arithmetic.MatMul.apply(x, x), lambda rng: [tensor(rng, (3, 3))],
                         hint))
    return cases


def reductions(m):
    cases = []
    for op, mine, ref, axis, keep, shape in (
            ("sum", m.Sum, reduce.Sum, 1, False, (3, 4, 2)),
            ("sum", m.Sum, reduce.Sum, None, False, (2, 3)),
            ("mean", m.Mean, reduce.Mean, (0, 2), False, (3, 4, 5)),
            ("mean", m.Mean, reduce.Mean, 1, True, (2, 3, 2)),
            ("max", m.Max, reduce.Max, 1, False, (3, 5)),
            ("max", m.Max, reduce.Max, None, False, (4, 3)),
            ("max", m.Max, reduce.Max, (0,), True, (3, 2, 2))):
        hint = {"sum": "expand_to: put the reduced axes back with size 1 (unless keepdims kept "
                       "them), then broadcast g to the input's shape",
                "mean": "the mean's gradient is g / count, count = the product of the reduced "
                        "axes' sizes, copied back along them (expand_to)",
                "max": "g goes where x equals the maximum (compare x with the kept-dims output), "
                       "0 elsewhere; put the reduced axes back before multiplying"}[op]
        cases.append(op_case(f"{op} over axis {axis}, keepdims={keep}, of shape {shape}",
                             lambda x, mine=mine, axis=axis, keep=keep: mine.apply(
                                 x, axis=axis, keepdims=keep),
                             lambda x, ref=ref, axis=axis, keep=keep: ref.apply(
                                 x, axis=axis, keepdims=keep),
                             lambda rng, shape=shape: [tensor(rng, shape)], hint))
    ties = numpy.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.5, -1.0, 4.0, 4.0]])
    cases.append(grads_case("max over axis 1 with tied maxima (rows [1, 3, 3, 0], [2, 2, 2, 2])",
                            lambda x: m.Max.apply(x, axis=1), lambda x: reduce.Max.apply(x, axis=1),
                            lambda rng: [Tensor(ties.copy(), requires_grad=True)],
                            "where k elements tie for the maximum each gets g / k: not g to "
                            "every one of them, and not 0 to all"))
    return cases


def exp_log(m):
    from nn.functional.activation import LogSoftmax
    cases = [op_case("exp of shape (3, 4)", m.Exp.apply, elementwise.Exp.apply,
                     lambda rng: [tensor(rng, (3, 4))], "d exp(x)/dx = exp(x): g * out"),
             op_case("log of shape (2, 5), values in [0.5, 3]", m.Log.apply, elementwise.Log.apply,
                     lambda rng: [tensor(rng, (2, 5), 0.5, 3.0)], "d log(x)/dx = 1 / x: g / x")]
    for dim, shape, scale in ((1, (3, 5), 1.0), (0, (4, 3), 1.0), (1, (2, 4), 300.0)):
        cases.append(op_case(f"log-softmax along dim {dim} of shape {shape}, values of size "
                             f"{scale:g}", lambda x, dim=dim: m.LogSoftmax.apply(x, dim=dim),
                             lambda x, dim=dim: LogSoftmax.apply(x, dim=dim),
                             lambda rng, shape=shape, scale=scale: [Tensor(
                                 rng.standard_normal(shape) * scale, requires_grad=True)],
                             "dx = g - softmax(x) * sum(g) along dim, softmax(x) = exp(out); the "
                             "sum keeps its axis"))
    return cases


def cross_entropy(m):
    from nn.functional.loss import CrossEntropy
    cases = []
    for n, c, scale in ((5, 3, 1.0), (1, 4, 1.0), (4, 6, 1000.0)):
        def make(rng, n=n, c=c, scale=scale):
            return [Tensor(rng.standard_normal((n, c)) * scale, requires_grad=True)]

        def run(rng, n=n, c=c, make=make, scale=scale):
            logits = make(rng)
            target = rng.integers(0, c, n)
            mine = lambda z: m.CrossEntropy.apply(z, target=target)   # noqa: E731
            same(mine(*logits), CrossEntropy.apply(copy(logits[0]), target=target),
                 f"loss of {n} rows of {c} logits")
            if scale == 1.0:
                gradcheck(mine, logits, seed=int(rng.integers(1 << 30)))
        hint = ("forward: subtract each row's maximum before exp (logits of 1000 overflow), then "
                "log p = shifted[t] - log sum exp(shifted); backward: (softmax - onehot(t)) / N, "
                "times the upstream g")
        cases.append(Case(f"{n} rows of {c} logits of size {scale:g}", run, hint))
    return cases


def linear(m):
    from nn.functional.linear import LinearReference
    hint = ("dx = g W (M, out) @ (out, in); dW = g^T x, summed over every row of the batch; db = "
            "the sum of g over the rows; leading axes of x flattened into rows")
    cases = []
    for x, out, bias in (((4, 3), 2, True), ((4, 3), 2, False), ((1, 5), 3, True),
                         ((2, 3, 4), 5, True)):
        def make(rng, x=x, out=out, bias=bias):
            tensors = [tensor(rng, x), tensor(rng, (out, x[-1]))]
            return tensors + [tensor(rng, (out,))] if bias else tensors
        cases.append(op_case(f"x {x}, weight ({out}, {x[-1]}), {'a' if bias else 'no'} bias",
                             m.LinearReference.apply, LinearReference.apply, make, hint,
                             names=("x", "weight", "bias")))
    return cases


def relu(m):
    from nn.functional.activation import ReLU

    def away_from_zero(rng):
        x = rng.standard_normal((3, 4))
        return [Tensor(x + numpy.sign(x) * 0.1, requires_grad=True)]
    zeros = numpy.array([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]])
    return [op_case("relu of shape (3, 4)", m.ReLU.apply, ReLU.apply, away_from_zero,
                    "g where x > 0, 0 elsewhere: multiply by the saved mask"),
            grads_case("relu at x = 0", m.ReLU.apply, ReLU.apply,
                       lambda rng: [Tensor(zeros.copy(), requires_grad=True)],
                       "at x = 0 the gradient is 0 (x > 0, not x >= 0)")]
