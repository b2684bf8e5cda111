"""python -m nn.selfcheck: gradient-check every op on this machine, and print a table.

Each case builds small float64 inputs and runs autograd.gradcheck (central differences
against a random upstream gradient). Use it to check an installation, a GPU build
(--backend cupy), or an op you have just written. Every case runs, whatever the one before it
did: a case that raises (a kernel that does not compile, a device error) is reported with its
exception, and the last lines name every case that failed or raised. Exit status 1 if any did.
"""
import argparse
import sys
import time
import traceback

import numpy

import nn.functional as F
from autograd import GradcheckError, Tensor, gradcheck
from autograd.backend import require_cupy


def _cases(xp, rng):
    """(name, fn, make_inputs, quick) for every op; make_inputs() makes its float64 tensors on
    xp's device when the case runs (so that a device error there is that case's alone)."""

    def t(*shape, low=None, high=None):
        values = (rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape))
        return Tensor(xp.asarray(values), requires_grad=True)

    def running():
        return xp.zeros(3), xp.ones(3)

    return [
        ("add, mul, div with broadcasting", lambda a, b: (a + b) * a / (b * b + 1.0),
         lambda: [t(2, 3, 4), t(3, 1)], True),
        ("matmul", lambda a, b: a @ b, lambda: [t(3, 4), t(4, 5)], True),
        ("sum, mean, max", lambda a: a.sum(axis=1) + a.mean(axis=1) + a.max(axis=1),
         lambda: [t(3, 5)], True),
        ("exp, log, sqrt, pow", lambda a: a.exp() + a.log() * a.sqrt() + a ** 1.5,
         lambda: [t(3, 4, low=0.5, high=2.0)], True),
        ("indexing, cat, stack", lambda a: F.cat([F.stack([a[0], a[2]]), a[1:3]], axis=0),
         lambda: [t(3, 2, 4)], True),
        ("linear", F.linear, lambda: [t(4, 5), t(3, 5), t(3)], True),
        ("relu", F.relu, lambda: [t(3, 7, low=0.1, high=1.0)
                                  * Tensor(xp.asarray(rng.choice([-1.0, 1.0], (3, 7))))], True),
        ("log_softmax", lambda a: F.log_softmax(a, dim=1), lambda: [t(4, 5)], True),
        ("logsumexp", lambda a: F.logsumexp(a, dim=1), lambda: [t(4, 5)], True),
        ("cross_entropy", lambda a: F.cross_entropy(a, xp.asarray([0, 2, 1, 2])),
         lambda: [t(4, 3)], True),
        ("normalize", lambda a: F.normalize(a, dim=1), lambda: [t(4, 5)], True),
        ("conv2d 3x3, stride 1, padding 1", lambda x, w, b: F.conv2d(x, w, b, padding=1),
         lambda: [t(2, 3, 5, 5), t(4, 3, 3, 3), t(4)], True),
        ("conv2d 1x1", lambda x, w: F.conv2d(x, w), lambda: [t(2, 3, 4, 4), t(4, 3, 1, 1)],
         False),
        ("conv2d 3x3, stride 2, odd size", lambda x, w: F.conv2d(x, w, stride=2, padding=1),
         lambda: [t(2, 2, 7, 5), t(3, 2, 3, 3)], False),
        ("conv2d 7x7, stride 2, padding 3", lambda x, w: F.conv2d(x, w, stride=2, padding=3),
         lambda: [t(1, 2, 9, 9), t(2, 2, 7, 7)], False),
        ("batch_norm, training, (N, C, H, W)",
         lambda x, g, b: F.batch_norm(x, *running(), g, b, training=True),
         lambda: [t(4, 3, 3, 2), t(3, low=1.2, high=2.0), t(3)], True),
        ("batch_norm, eval, (N, C)", lambda x, g, b: F.batch_norm(x, *running(), g, b),
         lambda: [t(5, 3), t(3, low=1.2, high=2.0), t(3)], False),
        ("batch_norm + residual + relu, training",
         lambda x, r, g, b: F.batch_norm(x, *running(), g, b, training=True, residual=r,
                                         relu=True),
         lambda: [t(4, 3, 3, 2), t(4, 3, 3, 2), t(3, low=1.2, high=2.0), t(3)], True),
        ("max_pool2d 3x3, stride 2, padding 1",
         lambda x: F.max_pool2d(x, 3, stride=2, padding=1), lambda: [t(2, 2, 7, 7)], True),
        ("avg_pool2d 2x2", lambda x: F.avg_pool2d(x, 2), lambda: [t(2, 2, 6, 6)], False),
        ("adaptive_avg_pool2d 1", lambda x: F.adaptive_avg_pool2d(x, 1),
         lambda: [t(2, 3, 4, 5)], False),
    ]


def run_case(fn, make_inputs):
    """Gradient-check one case: (status, seconds, detail). "ok"; "FAIL" with the check's
    report; or "ERROR" with what raised (a kernel that does not compile, a device error), so
    that one broken op never hides the cases after it."""
    start = time.perf_counter()
    try:
        inputs = [Tensor(i.data, requires_grad=True) for i in make_inputs()]  # float64 leaves
        gradcheck(fn, inputs)
        status, detail = "ok", ""
    except GradcheckError as error:
        status, detail = "FAIL", str(error)
    except Exception as error:
        traceback.print_exception(error, file=sys.stderr)   # the whole story, for the log
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = (str(error).strip().splitlines() or [""])[0]
        status = "ERROR"
        detail = f"{type(error).__name__}: {message} (at {where.filename}:{where.lineno})"
    return status, time.perf_counter() - start, detail


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nn.selfcheck",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--quick", action="store_true", help="check a smaller set of cases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    xp = numpy if args.backend == "numpy" else require_cupy()
    cases = [c for c in _cases(xp, numpy.random.default_rng(args.seed)) if c[3] or not args.quick]
    wrong = []
    for name, fn, make_inputs, _ in cases:
        status, seconds, detail = run_case(fn, make_inputs)
        shown = "\n" + detail if status == "FAIL" else "  " + detail
        print(f"{status:5} {name:40} {seconds:6.2f} s{shown.rstrip()}", flush=True)
        if status != "ok":
            wrong.append(f"{status} {name}: {detail.splitlines()[0]}")
    failed = sum(line.startswith("FAIL") for line in wrong)
    print(f"{len(cases)} cases: {len(cases) - len(wrong)} passed, {failed} failed, "
          f"{len(wrong) - failed} raised" + "".join("\n  " + line for line in wrong))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
