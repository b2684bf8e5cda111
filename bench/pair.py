"""python -m bench.pair: one op's code at two revisions, timed in pairs in one process.

    python -m bench.pair --op batch_norm --old HEAD          # the working tree against HEAD
    python -m bench.pair --op conv2d --old HEAD --new HEAD   # an A/A run: what noise reads as

For a change to one op's file, whole-step runs cannot resolve a few percent on a shared host
(one step varies by 1.5x from minute to minute), and timing all cases with the old code, then
all with the new, lets the drift in between read as a difference. Here both versions of the
file (`git show REV:path`, or the working tree for --new WORKTREE) are loaded side by side as
modules; every repeat runs each case once with each version, back to back, in alternating
order, and the report is the median over repeats of each case's new/old time ratio, then the
ratio of the summed median times and the geometric mean of the per-case ratios. Below 1, the
new code is faster. An A/A run shows the noise floor (0.98-1.01 on the machine of
bench/RESULTS.md, where the unpaired comparison read 0.96-1.08).

Only the op's one file is swapped: what it imports from the package (batch norm's
batch_norm_blocks.py, conv2d's scratch.py and winograd.py) is the working tree's on both sides,
so a change to those files alone reads as no change here: time it with bench.step, or swap
them by hand.

A case is forward + backward at a ResNet-50 shape (CIFAR stem, N = --batch-size images;
batch norm with ReLU and with residual + ReLU, as the network calls it; the max-pool is the
ImageNet stem's, on N/2 images of 112x112), float32, with autograd.memory.reuse_freed_memory()
as in training.
"""
import argparse
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import REPO_ROOT, default_threads

FILES = {"batch_norm": "nn/functional/normalization.py", "conv2d": "nn/functional/conv.py",
         "max_pool2d": "nn/functional/pooling.py"}
# (C, F, H, kernel, stride): every 3x3 and a 1x1 of each stage, and the strided ones
CONVS = [(3, 64, 32, 3, 1), (64, 64, 32, 3, 1), (128, 128, 16, 3, 1), (256, 256, 8, 3, 1),
         (512, 512, 4, 3, 1), (128, 128, 32, 3, 2), (256, 256, 16, 3, 2), (512, 512, 8, 3, 2),
         (256, 64, 32, 1, 1), (64, 256, 32, 1, 1), (1024, 256, 8, 1, 1), (512, 2048, 4, 1, 1),
         (1024, 2048, 8, 1, 2)]
# (C, H): batch norm's inputs, after the stem and in each stage
NORMS = [(64, 32), (256, 32), (128, 16), (512, 16), (256, 8), (1024, 8), (2048, 4)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.pair",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--op", choices=sorted(FILES), required=True)
    parser.add_argument("--old", required=True, help="a git revision, or WORKTREE")
    parser.add_argument("--new", default="WORKTREE", help="a git revision, or WORKTREE")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64, help="images per case")
    parser.add_argument("--threads", type=int, default=default_threads())
    return parser.parse_args(argv)


def load_version(path, revision, name):
    """The module in file `path` (relative to the repository) as it is at git `revision`
    (or in the working tree for "WORKTREE"), imported as nn.functional.<name> so that its
    relative imports find the package."""
    if revision == "WORKTREE":
        source = os.path.join(REPO_ROOT, path)
    else:
        shown = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO_ROOT,
                               capture_output=True, text=True)
        if shown.returncode != 0:
            raise SystemExit(f"bench.pair: git show {revision}:{path} failed: "
                             f"{shown.stderr.strip()}")
        handle, source = tempfile.mkstemp(suffix=".py", prefix=f"pair-{name}-")
        with os.fdopen(handle, "w") as file:
            file.write(shown.stdout)
    spec = importlib.util.spec_from_file_location(f"nn.functional.{name}", source)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        if revision != "WORKTREE":
            os.remove(source)
    return module


def cases(op, batch_size, rng):
    """[(label, run(module) -> seconds)]: forward + backward of `op` at each shape."""
    import numpy

    from autograd import Tensor

    def channels_last(N, C, H, W):  # as conv2d's outputs are
        return rng.standard_normal((N, H, W, C), dtype=numpy.float32).transpose(0, 3, 1, 2)

    def timed(forward, inputs, upstream):
        tensors = [Tensor(array, requires_grad=True) for array in inputs]
        start = time.perf_counter()
        forward(*tensors).backward(upstream)
        return time.perf_counter() - start

    N, made = batch_size, []
    if op == "conv2d":
        for C, F, H, k, s in CONVS:
            x, upstream = channels_last(N, C, H, H), channels_last(N, F, H // s, H // s)
            weight = rng.standard_normal((F, C, k, k), dtype=numpy.float32) * 0.05
            made.append((f"{k}x{k}/{s} {C}->{F} at {H}x{H}", lambda m, x=x, w=weight, g=upstream,
                         s=s, p=k // 2: timed(lambda x, w: m.conv2d(x, w, stride=s, padding=p),
                                              [x, w], g)))
    elif op == "batch_norm":
        for C, H in NORMS:
            x, residual, upstream = (channels_last(N, C, H, H) for _ in range(3))
            gamma, beta = numpy.ones(C, numpy.float32), numpy.zeros(C, numpy.float32)
            for with_residual in (False, True):
                def run(m, x=x, r=residual, g=upstream, gamma=gamma, beta=beta,
                        with_residual=with_residual):
                    def forward(x, gamma, beta, *r):
                        return m.batch_norm(x, None, None, gamma, beta, training=True,
                                            residual=r[0] if r else None, relu=True)
                    inputs = [x, gamma, beta] + ([r] if with_residual else [])
                    return timed(forward, inputs, g)
                made.append((f"BN {C} at {H}x{H}" + (" + residual" if with_residual else ""),
                             run))
    else:
        images = max(1, N // 2)
        x, upstream = channels_last(images, 64, 112, 112), channels_last(images, 64, 56, 56)
        made.append(("max-pool 3x3/2 64 at 112x112",
                     lambda m: timed(lambda x: m.max_pool2d(x, 3, 2, 1), [x], upstream)))
    return made


def paired_ratios(run_case, repeats):
    """{"old": [seconds], "new": [seconds], "ratios": [new/old]} of one case: each repeat
    runs both versions back to back, the old one first in even repeats."""
    times = {"old": [], "new": []}
    for repeat in range(repeats):
        for side in (("old", "new") if repeat % 2 == 0 else ("new", "old")):
            times[side].append(run_case(side))
    times["ratios"] = [new / old for old, new in zip(times["old"], times["new"])]
    return times


def summarize(results):
    """(sum of the new medians / sum of the old medians, geometric mean of the per-case median
    ratios) for {label: paired_ratios(...)}."""
    old = sum(statistics.median(r["old"]) for r in results.values())
    new = sum(statistics.median(r["new"]) for r in results.values())
    logs = [math.log(statistics.median(r["ratios"])) for r in results.values()]
    return new / old, math.exp(statistics.fmean(logs))


def main(argv=None):
    args = parse_args(argv)
    import numpy

    from autograd import parallel
    from autograd.memory import reuse_freed_memory

    reuse_freed_memory()
    parallel.set_num_threads(args.threads)
    path = FILES[args.op]
    versions = {"old": load_version(path, args.old, "pair_old"),
                "new": load_version(path, args.new, "pair_new")}
    results = {}
    for label, run in cases(args.op, args.batch_size, numpy.random.default_rng(0)):
        results[label] = paired_ratios(lambda side: run(versions[side]), args.repeats)
        r = results[label]
        print(f"{label:34s} new/old {statistics.median(r['ratios']):.3f}  (old "
              f"{1e3 * statistics.median(r['old']):.1f} ms, new "
              f"{1e3 * statistics.median(r['new']):.1f} ms)", flush=True)
    total, geometric = summarize(results)
    print(f"{args.op}, {path} at {args.new} against {args.old}, {args.threads} threads, "
          f"N={args.batch_size}, {args.repeats} paired repeats: summed medians new/old "
          f"{total:.3f}, geometric mean of the per-case ratios {geometric:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
