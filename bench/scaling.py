"""python -m bench.scaling: a data-parallel SimCLR step on 1 and 2 MPI ranks, and what more
ranks would cost.

    python -m bench.scaling --arch resnet50 --batch-size 32        # needs the mpi extra

For each number of ranks W (--ranks, default 1 2) it starts `mpiexec -n W` children that
share the machine's cores (--threads / W each) and take one step of the global batch
(--batch-size images, W shares): augmented views fixed in advance, encoder and head, NT-Xent
over the gathered keys, global batch norm, backward, the averaged gradients, LARS. After
--warmup steps it times --steps of them, and every collective inside them: seconds and bytes
by kind (the gradients' all-reduce, batch norm's and NT-Xent's collectives), as rank 0 sees
them. Then a projection: the measured step, with the standard cost of a ring all-reduce of
the gradients, 2 (W - 1) / W x bytes / bandwidth, for W = 8, 64, 512 on links of 100 Gbit/s
and NVLink class (300 GB/s), without and with the all-reduce overlapped with the backward
pass (which this code does not do yet). No number here was measured on a GPU.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import REPO_ROOT, default_threads, describe_machine, format_table, machine

LINKS = {"100 Gbit/s": 12.5e9, "NVLink class (300 GB/s)": 300e9}  # bytes per second
PROJECTED_RANKS = (8, 64, 512)
LATENCY = 10e-6  # seconds per collective, a typical small-message latency on a fast network


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.scaling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=["resnet18", "resnet50"], default="resnet50")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch, N images")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="cores shared by the ranks of one measurement")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", metavar="RESULT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class MeasuredComm:
    """A communicator that times its collectives and counts their bytes, by kind."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.seconds, self.bytes, self.calls, self.kind = {}, {}, {}, "other"

    def _timed(self, name, array, collective):
        key = f"{self.kind}: {name}"
        start = time.perf_counter()
        result = collective()
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        self.bytes[key] = self.bytes.get(key, 0) + array.nbytes
        self.calls[key] = self.calls.get(key, 0) + 1
        return result

    def allreduce(self, array):
        return self._timed("all-reduce", array, lambda: self.comm.allreduce(array))

    def allgather(self, array):
        return self._timed("all-gather", array, lambda: self.comm.allgather(array))

    def any(self, flag):
        return self.comm.any(flag)


def child(args):
    """One rank's measurement (under mpiexec)."""
    import numpy

    from autograd import Tensor
    from nn import runtime
    from nn.distributed import MPIComm, average_gradients
    from nn.distributed import collectives
    from nn.layers import synchronize_batch_norm
    from simclr.loss import nt_xent
    from simclr.model import build_model
    from simclr.pretraining import build_optimizer

    runtime.reuse_freed_memory()
    runtime.use_threaded_gradients()
    group = MeasuredComm(MPIComm())
    config = {"arch": args.arch, "width": 1, "cifar_stem": True, "seed": 0, "head": "nonlinear",
              "proj_dim": 128, "optimizer": "lars", "weight_decay": 1e-6}
    model = build_model(config, 32)
    if group.size > 1:
        synchronize_batch_norm(model, group)
    optimizer = build_optimizer(config, model)
    share = args.batch_size // group.size
    views = numpy.random.default_rng(0).random((2, args.batch_size, 3, 32, 32),
                                               dtype=numpy.float32)
    mine = numpy.concatenate(views[:, group.rank * share:(group.rank + 1) * share])

    def step():
        group.kind = "forward and backward"
        loss = nt_xent(model(Tensor(mine)), 0.5, group if group.size > 1 else None)
        optimizer.zero_grad()
        loss.backward()
        group.kind = "gradients"
        if group.size > 1:
            average_gradients(optimizer.params, group)
        optimizer.lr = 0.1
        optimizer.step()
    for _ in range(args.warmup):
        step()
    group.seconds, group.bytes, group.calls = {}, {}, {}
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    gradient_bytes = sum(p.data.nbytes for p in model.parameters())
    if group.rank == 0:
        with open(args.child, "w") as file:
            json.dump({"ranks": group.size, "step_times": times, "gradient_bytes": gradient_bytes,
                       "bucket_bytes": collectives.BUCKET_BYTES,
                       "collectives": {key: {"seconds": group.seconds[key] / args.steps,
                                             "bytes": group.bytes[key] / args.steps,
                                             "calls": group.calls[key] / args.steps}
                                       for key in group.seconds}}, file)


def measure(args, ranks):
    """Rank 0's result of `ranks` ranks, each with threads / ranks threads."""
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    threads = str(max(1, args.threads // ranks))
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as folder:
        result = os.path.join(folder, "result.json")
        command = [mpiexec, "--oversubscribe", "-n", str(ranks), sys.executable, "-m",
                   "bench.scaling", "--child", result, "--arch", args.arch, "--batch-size",
                   str(args.batch_size), "--warmup", str(args.warmup), "--steps",
                   str(args.steps)]
        finished = subprocess.run(command, cwd=REPO_ROOT, env=env)
        if finished.returncode != 0:
            raise SystemExit(f"bench.scaling: {' '.join(command)} failed "
                             f"(exit status {finished.returncode})")
        with open(result) as file:
            return json.load(file)


ASSUMED_STEPS = (0.2, 0.05)  # seconds of compute per step that the projection also assumes


def projection(step_seconds, gradient_bytes, collectives_per_step):
    """Rows of (ranks, link, communication ms, efficiency without overlap, with overlap): the
    gradients' ring all-reduce, 2 (W - 1) / W x bytes / bandwidth, plus the small collectives
    (batch norm's, NT-Xent's) at a latency each per level of a tree, 2 log2(W) x LATENCY;
    efficiency = compute / (compute + communication), or with the all-reduce hidden under the
    backward pass (two thirds of the step), compute / (compute + max(0, communication -
    backward))."""
    import math
    rows = []
    for ranks in PROJECTED_RANKS:
        for link, bandwidth in LINKS.items():
            ring = 2 * (ranks - 1) / ranks * gradient_bytes / bandwidth
            communication = ring + collectives_per_step * 2 * math.log2(ranks) * LATENCY
            row = [str(ranks), link, f"{1e3 * communication:.1f}"]
            for compute in (step_seconds,) + ASSUMED_STEPS:
                plain = compute / (compute + communication)
                hidden = compute / (compute + max(0.0, communication - 2 * compute / 3))
                row.append(f"{100 * plain:.0f}% / {100 * hidden:.0f}%")
            rows.append(row)
    return rows


def report(args, results):
    lines = [describe_machine(machine("bench.scaling", sys.argv[1:])), ""]
    base = None
    table = []
    for result in results:
        ranks, median = result["ranks"], statistics.median(result["step_times"])
        base = base or median * ranks
        communication = sum(c["seconds"] for c in result["collectives"].values())
        moved = sum(c["bytes"] for c in result["collectives"].values())
        table.append([str(ranks), str(max(1, args.threads // ranks)), f"{median:.3f}",
                      f"{args.batch_size / median:.1f}", f"{1e3 * communication:.1f}",
                      f"{moved / 2**20:.1f}",
                      f"{sum(c['calls'] for c in result['collectives'].values()):.0f}"])
    lines.append(format_table(["ranks", "threads each", "s/step median", "images/s",
                               "collectives ms/step", "MiB moved/step (rank 0)",
                               "collectives/step"], table))
    for result in results[1:]:
        lines += ["", f"Collectives of {result['ranks']} ranks, per step (rank 0):"]
        lines.append(format_table(["kind", "calls", "ms", "MiB"], [
            [key, f"{c['calls']:.0f}", f"{1e3 * c['seconds']:.2f}", f"{c['bytes'] / 2**20:.2f}"]
            for key, c in sorted(result["collectives"].items())]))
    first = results[0]
    step = statistics.median(first["step_times"])
    collectives = max((sum(c["calls"] for c in r["collectives"].values()) for r in results),
                      default=0)
    lines += ["", f"Projection ({args.arch}, {first['gradient_bytes'] / 2**20:.0f} MiB of float32 "
              f"gradients, {collectives:.0f} small collectives a step at {1e6 * LATENCY:.0f} us "
              f"a tree level): scaling efficiency without / with the all-reduce overlapped "
              f"with the backward pass, for the step measured here on one rank ({step:.2f} s, "
              f"this CPU, each rank keeping its share of {args.batch_size} images) and for "
              f"steps of " + " and ".join(f"{s:g} s" for s in ASSUMED_STEPS) + " (assumed, "
              "not measured: what a GPU's step might take)",
              format_table(["ranks", "link", "communication ms/step", f"at {step:.2f} s"]
                           + [f"at {s:g} s (assumed)" for s in ASSUMED_STEPS],
                           projection(step, first["gradient_bytes"], collectives))]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args) or 0
    for ranks in args.ranks:
        if args.batch_size % ranks:
            raise SystemExit(f"bench.scaling: --batch-size {args.batch_size} is not a multiple "
                             f"of {ranks} ranks")
    results = [measure(args, ranks) for ranks in args.ranks]
    text = report(args, results)
    print(text)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"results": results, "report": text}, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
