"""python -m nn.selfcheck: gradient-check every op on this machine, and print a table.

Each case builds small float64 inputs and runs autograd.gradcheck (central differences
against a random upstream gradient). Use it to check an installation, a GPU build
(--backend cupy), or an op you have just written.
"""
import argparse
import sys
import time

import numpy

import nn.functional as F
from autograd import GradcheckError, Tensor, gradcheck
from autograd.backend import require_cupy


def _cases(xp, rng):
    """(name, fn, inputs, quick) for every op; inputs are float64 tensors on xp's device."""

    def t(*shape, low=None, high=None):
        values = (rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape))
        return Tensor(xp.asarray(values), requires_grad=True)

    def running():
        return xp.zeros(3), xp.ones(3)

    labels = xp.asarray([0, 2, 1, 2])
    return [
        ("add, mul, div with broadcasting", lambda a, b: (a + b) * a / (b * b + 1.0),
         [t(2, 3, 4), t(3, 1)], True),
        ("matmul", lambda a, b: a @ b, [t(3, 4), t(4, 5)], True),
        ("sum, mean, max", lambda a: a.sum(axis=1) + a.mean(axis=1) + a.max(axis=1), [t(3, 5)], True),
        ("exp, log, sqrt, pow", lambda a: a.exp() + a.log() * a.sqrt() + a ** 1.5,
         [t(3, 4, low=0.5, high=2.0)], True),
        ("indexing, cat, stack", lambda a: F.cat([F.stack([a[0], a[2]]), a[1:3]], axis=0),
         [t(3, 2, 4)], True),
        ("linear", F.linear, [t(4, 5), t(3, 5), t(3)], True),
        ("relu", F.relu, [t(3, 7, low=0.1, high=1.0) * Tensor(xp.asarray(rng.choice([-1.0, 1.0], (3, 7))))],
         True),
        ("log_softmax", lambda a: F.log_softmax(a, dim=1), [t(4, 5)], True),
        ("logsumexp", lambda a: F.logsumexp(a, dim=1), [t(4, 5)], True),
        ("cross_entropy", lambda a: F.cross_entropy(a, labels), [t(4, 3)], True),
        ("normalize", lambda a: F.normalize(a, dim=1), [t(4, 5)], True),
        ("conv2d 3x3, stride 1, padding 1", lambda x, w, b: F.conv2d(x, w, b, padding=1),
         [t(2, 3, 5, 5), t(4, 3, 3, 3), t(4)], True),
        ("conv2d 1x1", lambda x, w: F.conv2d(x, w), [t(2, 3, 4, 4), t(4, 3, 1, 1)], False),
        ("conv2d 3x3, stride 2, odd size", lambda x, w: F.conv2d(x, w, stride=2, padding=1),
         [t(2, 2, 7, 5), t(3, 2, 3, 3)], False),
        ("conv2d 7x7, stride 2, padding 3", lambda x, w: F.conv2d(x, w, stride=2, padding=3),
         [t(1, 2, 9, 9), t(2, 2, 7, 7)], False),
        ("batch_norm, training, (N, C, H, W)",
         lambda x, g, b: F.batch_norm(x, *running(), g, b, training=True),
         [t(4, 3, 3, 2), t(3, low=1.2, high=2.0), t(3)], True),
        ("batch_norm, eval, (N, C)", lambda x, g, b: F.batch_norm(x, *running(), g, b),
         [t(5, 3), t(3, low=1.2, high=2.0), t(3)], False),
        ("batch_norm + residual + relu, training",
         lambda x, r, g, b: F.batch_norm(x, *running(), g, b, training=True, residual=r,
                                         relu=True),
         [t(4, 3, 3, 2), t(4, 3, 3, 2), t(3, low=1.2, high=2.0), t(3)], True),
        ("max_pool2d 3x3, stride 2, padding 1",
         lambda x: F.max_pool2d(x, 3, stride=2, padding=1), [t(2, 2, 7, 7)], True),
        ("avg_pool2d 2x2", lambda x: F.avg_pool2d(x, 2), [t(2, 2, 6, 6)], False),
        ("adaptive_avg_pool2d 1", lambda x: F.adaptive_avg_pool2d(x, 1), [t(2, 3, 4, 5)], False),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nn.selfcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--quick", action="store_true", help="check a smaller set of cases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    xp = numpy if args.backend == "numpy" else require_cupy()
    failures = 0
    cases = [c for c in _cases(xp, numpy.random.default_rng(args.seed)) if c[3] or not args.quick]
    for name, fn, inputs, _ in cases:
        inputs = [Tensor(i.data, requires_grad=True) for i in inputs]  # leaves, float64
        start = time.perf_counter()
        try:
            gradcheck(fn, inputs)
            status, detail = "ok", ""
        except GradcheckError as error:
            status, detail, failures = "FAIL", "\n" + str(error), failures + 1
        print(f"{status:4}  {name:40} {time.perf_counter() - start:6.2f} s{detail}")
    print(f"{len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
