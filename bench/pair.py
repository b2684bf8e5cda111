"""python -m bench.pair: one op at two revisions of the whole tree, timed in pairs.

    python -m bench.pair --op batch_norm --old HEAD          # the working tree against HEAD
    python -m bench.pair --op conv2d --old HEAD --new HEAD   # an A/A run: what noise reads as

For a change to one op, whole-step runs cannot resolve a few percent on a shared host (one
step varies by 1.5x from minute to minute), and timing all cases with the old code, then all
with the new, lets the drift in between read as a difference. Here each revision of the tree
(`git archive REV`, or the working tree for WORKTREE) runs in a worker process of its own that
stays alive; every repeat runs each case once on each side, back to back, in alternating
order (after one untimed call on each side), and the report is the median over repeats of
each case's new/old time ratio, then the ratio of the summed median times and the geometric
mean of the per-case ratios. Below 1, the new code is faster. An A/A run shows the noise floor
(0.98-1.01 on the machines of bench/RESULTS.md, where the unpaired comparison read 0.96-1.08).

The whole tree is swapped, so a change anywhere (the op's file, the kernels it calls in
nn/functional/cpu/ and nn/runtime/, the engine) is what is measured, and the two revisions may
be laid out differently: a worker calls only the public nn.functional.<op> and autograd.Tensor
(and sets up the engine's threaded gradient passes where the revision asks for a call). Both
workers get --threads through OMP_NUM_THREADS, and keep freed memory for reuse through
glibc's environment (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_), as simclr.train does with
nn.runtime.reuse_freed_memory(); only one worker runs at a time, the other waits.

A case is forward + backward at a ResNet-50 shape (CIFAR stem, N = --batch-size images;
batch norm with ReLU and with residual + ReLU, as the network calls it; the max-pool is the
ImageNet stem's, on N/2 images of 112x112), float32. `--op step` pairs whole SimCLR steps
(encoder and nonlinear head on 2N fixed views, NT-Xent, backward, LARS; CIFAR stem): ResNet-18
at N = --batch-size images and ResNet-50 at N/2, built by the public API of either revision.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
OPS = ("batch_norm", "conv2d", "max_pool2d", "step")
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
    parser.add_argument("--op", choices=OPS, required=True)
    parser.add_argument("--old", required=True, help="a git revision, or WORKTREE")
    parser.add_argument("--new", default="WORKTREE", help="a git revision, or WORKTREE")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64, help="images per case")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default: every core)")
    return parser.parse_args(argv)


def checkout(revision, into):
    """The tree at git `revision`, unpacked into the folder `into`; the working tree itself
    for WORKTREE. Returns the tree's folder."""
    if revision == "WORKTREE":
        return REPO_ROOT
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=REPO_ROOT,
                             capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"bench.pair: git archive {revision} failed: "
                         f"{archive.stderr.decode(errors='replace').strip()}")
    with tempfile.TemporaryFile() as file:
        file.write(archive.stdout)
        file.seek(0)
        with tarfile.open(fileobj=file) as tar:
            tar.extractall(into, filter="data")
    return into


class Worker:
    """A process that imports autograd and nn from `tree` and times cases on request: one
    line in (a case's index), one line out (its seconds)."""

    def __init__(self, tree, args):
        env = dict(os.environ, PYTHONPATH=tree, MALLOC_MMAP_MAX_="0",
                   MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
        threads = str(args.threads or default_threads())
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = threads
        command = [sys.executable, os.path.join(BENCH_DIR, "pair.py"), "--worker", tree,
                   args.op, str(args.batch_size)]
        self.process = subprocess.Popen(command, env=env, cwd=tree, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline()
        if not ready:
            raise SystemExit(f"bench.pair: the worker for {tree} did not start")
        self.labels = json.loads(ready)

    def time(self, index):
        self.process.stdin.write(f"{index}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def serve(tree, op, batch_size):
    """The worker's side of Worker: make the cases, say their labels, time them on request."""
    import numpy
    import nn
    if not os.path.abspath(nn.__file__).startswith(os.path.abspath(tree) + os.sep):
        raise SystemExit(f"bench.pair: the worker imported nn from {nn.__file__}, not {tree}")
    try:  # the engine's gradient passes on every core, as a training program sets them up
        from nn.runtime import use_threaded_gradients
    except ImportError:  # a revision from before nn.runtime: importing nn set them up
        pass
    else:
        use_threaded_gradients()
    made = cases(op, batch_size, numpy.random.default_rng(0))
    print(json.dumps([label for label, _ in made]), flush=True)
    for line in sys.stdin:
        print(made[int(line)][1](), flush=True)


def default_threads():
    """The number of cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cases(op, batch_size, rng):
    """[(label, run() -> seconds)]: forward + backward of nn.functional.<op> at each shape."""
    import numpy

    from autograd import Tensor

    import nn.functional as F

    def channels_last(N, C, H, W):  # as conv2d's outputs are
        return rng.standard_normal((N, H, W, C), dtype=numpy.float32).transpose(0, 3, 1, 2)

    def timed(forward, inputs, upstream):
        tensors = [Tensor(array, requires_grad=True) for array in inputs]
        start = time.perf_counter()
        forward(*tensors).backward(upstream)
        return time.perf_counter() - start

    N, made = batch_size, []
    if op == "conv2d":
        for C, F_, H, k, s in CONVS:
            x, upstream = channels_last(N, C, H, H), channels_last(N, F_, H // s, H // s)
            weight = rng.standard_normal((F_, C, k, k), dtype=numpy.float32) * 0.05
            made.append((f"{k}x{k}/{s} {C}->{F_} at {H}x{H}", lambda x=x, w=weight, g=upstream,
                         s=s, p=k // 2: timed(lambda x, w: F.conv2d(x, w, stride=s, padding=p),
                                              [x, w], g)))
    elif op == "batch_norm":
        for C, H in NORMS:
            x, residual, upstream = (channels_last(N, C, H, H) for _ in range(3))
            gamma, beta = numpy.ones(C, numpy.float32), numpy.zeros(C, numpy.float32)
            for with_residual in (False, True):
                def run(x=x, r=residual, g=upstream, gamma=gamma, beta=beta,
                        with_residual=with_residual):
                    def forward(x, gamma, beta, *r):
                        return F.batch_norm(x, None, None, gamma, beta, training=True,
                                            residual=r[0] if r else None, relu=True)
                    inputs = [x, gamma, beta] + ([r] if with_residual else [])
                    return timed(forward, inputs, g)
                made.append((f"BN {C} at {H}x{H}" + (" + residual" if with_residual else ""),
                             run))
    elif op == "step":
        for depth, images in ((18, N), (50, max(2, N // 2))):
            made.append((f"ResNet-{depth} step, N={images}", _step_case(depth, images, rng)))
    else:
        images = max(1, N // 2)
        x, upstream = channels_last(images, 64, 112, 112), channels_last(images, 64, 56, 56)
        made.append(("max-pool 3x3/2 64 at 112x112",
                     lambda: timed(lambda x: F.max_pool2d(x, 3, 2, 1), [x], upstream)))
    return made


def _step_case(depth, images, rng):
    """run() -> seconds of one SimCLR training step of a ResNet-`depth` (CIFAR stem) on 2N
    fixed random views, through the API both revisions share."""
    import numpy

    import nn
    from autograd import Tensor
    from nn.optim import LARS
    from simclr.loss import nt_xent
    from simclr.model import SimCLR

    encoder = {18: nn.resnet18, 50: nn.resnet50}[depth](cifar_stem=True,
                                                        zero_init_residual=True, rng=0)
    model = SimCLR(encoder, rng=numpy.random.default_rng(1))
    optimizer = LARS(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    views = rng.random((2 * images, 3, 32, 32), dtype=numpy.float32)

    def run():
        start = time.perf_counter()
        loss = nt_xent(model(Tensor(views)), 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start
    return run


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
    scratch = tempfile.mkdtemp(prefix="bench-pair-")
    workers = {}
    try:
        for side in ("old", "new"):
            tree = checkout(getattr(args, side), os.path.join(scratch, side))
            workers[side] = Worker(tree, args)
        labels = workers["old"].labels
        results = {}
        for index, label in enumerate(labels):
            for worker in workers.values():  # a first call allocates what later ones reuse
                worker.time(index)
            results[label] = paired_ratios(lambda side: workers[side].time(index), args.repeats)
            r = results[label]
            print(f"{label:34s} new/old {statistics.median(r['ratios']):.3f}  (old "
                  f"{1e3 * statistics.median(r['old']):.1f} ms, new "
                  f"{1e3 * statistics.median(r['new']):.1f} ms)", flush=True)
    finally:
        for worker in workers.values():
            worker.close()
        shutil.rmtree(scratch, ignore_errors=True)
    total, geometric = summarize(results)
    print(f"{args.op}, the tree at {args.new} against {args.old}, "
          f"{args.threads or default_threads()} threads, N={args.batch_size}, {args.repeats} "
          f"paired repeats: summed medians new/old {total:.3f}, geometric mean of the per-case "
          f"ratios {geometric:.3f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.path.insert(0, sys.argv[2])
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main())
