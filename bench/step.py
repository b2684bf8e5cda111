"""python -m bench.step: how fast is one SimCLR training step, ours against PyTorch's?

    python -m bench.step --arch resnet50 --cifar-stem --batch-size 32 --compare torch

A step is what simclr.pretraining.training_step does after augmentation: the 2N views of N images
through the encoder and the nonlinear head, NT-Xent, backward and a LARS update (the model and
optimiser are built by simclr.pretraining's own functions). Augmenting the two views is timed on
its own, outside the step. After --warmup untimed steps, --steps steps are timed; reported are
the median and min-max seconds per step, images per second (an image = its two views, so N
images per step), achieved GFLOP/s (3 forward passes of conv + linear FLOPs per step, see
bench/flops.py) and its share of the float32 GEMM rate measured in the same child, and the
peak resident memory of that child.

With --compare torch the identical model and step run in PyTorch (bench/torch_simclr.py), in
the default NCHW layout and in channels_last. Every side runs in its own process with the same
--threads; with --rounds R the processes alternate (ours, torch, torch channels_last, ours, ...)
so that each sees the same noise. The ratio ours/theirs is a throughput ratio: above 1, we
are faster.

--backend cupy runs ours on the GPU with CuPy and PyTorch on CUDA (--tf32 sets TensorFloat-32
matmuls for both). A GPU runs kernels asynchronously: every clock is read after the device has
finished its queued work, and the warm-up steps take the kernels' first-use compiles (NVRTC for
CuPy), which the timed steps never see. Neither side reads its loss on the host inside a step.
The table then adds, per side, the device memory of one extra untimed step: "GPU peak MiB", the
most bytes in live arrays at once (model and optimiser state included), and "GPU held MiB", what
the library's memory pool holds from the device (device_memory_mib in bench/common.py).
bench/gpu_check.sh runs this on a lent GPU.

--micro-batch M times our step as simclr.train --micro-batch M runs it (the encoder on M images
at a time: one more forward pass, whose FLOPs the GFLOP/s column leaves out, counting the work
of the plain step). --augment-in-step makes our step augment its images as simclr.train's does
(with --micro-batch: M images at a time, in each pass), so that its time and memory are the
training step's; bench/micro_batch.py tabulates both kinds of step so.

Each side fails alone: a side whose process fails, or runs past --side-timeout, is named in the
report's last lines and in the JSON ("failed": its exit status and the last lines of its
stderr), and the other sides are still measured; the exit status is then 1.
"""
import argparse
import json
import os
import statistics
import sys
from types import SimpleNamespace

from bench.common import (REHEARSAL_VARIABLE, SIDES, describe_machine, default_threads,
                          device_memory_mib, format_table, machine, note, peak_rss_mib,
                          repeat_timed, run_sides, summary, synchronizer, write_result)
from bench.rehearsal import NotRehearsed

LEARNING_RATE = 0.1  # any fixed value: the speed of an update does not depend on it
TEMPERATURE = 0.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.step",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50"], default="resnet50")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True,
                        help="3x3 stride-1 first conv, no max-pool (default on)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side in pixels (default 32 with the CIFAR stem, else 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="N images, 2N views per step")
    parser.add_argument("--micro-batch", type=int, default=None, metavar="M",
                        help="ours: the step of simclr.train --micro-batch M (the encoder on M "
                             "images at a time, one more forward pass; bench/micro_batch.py)")
    parser.add_argument("--augment-in-step", action="store_true",
                        help="ours: the step makes its own views, as simclr.train's does (not "
                             "timed apart; without it the views are made before timing)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="how many times each side's process runs, alternating")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="threads for every library on both sides (default: the cores)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--tf32", choices=["on", "off"], default="off",
                        help="TensorFloat-32 matmuls on the GPU, for both sides")
    parser.add_argument("--compare", choices=["none", "torch"], default="none")
    parser.add_argument("--gemm-size", type=int, default=2048,
                        help="side of the float32 matmul that measures the machine's GEMM rate")
    parser.add_argument("--side-timeout", type=float, metavar="SECONDS",
                        help="end a side still running after this long: it is recorded as "
                             "failed, and the other sides are still measured")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement here")
    parser.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, low in (("batch_size", 2), ("steps", 1), ("warmup", 0), ("rounds", 1),
                      ("threads", 1), ("gemm_size", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}, "
                         f"got {getattr(args, name)}")
    if args.width <= 0:
        parser.error(f"--width must be positive, got {args.width}")
    if args.micro_batch is not None and (args.micro_batch < 1
                                         or args.batch_size % args.micro_batch):
        parser.error(f"--micro-batch {args.micro_batch}: expected a divisor of --batch-size "
                     f"{args.batch_size}")
    if args.micro_batch is not None and args.compare != "none":
        parser.error(f"--micro-batch {args.micro_batch} times our step only: give --compare none")
    if args.image_size is None:
        args.image_size = 32 if args.cifar_stem else 224
    return args


class PrecomputedViews:
    """Stands in for the augmentation inside simclr.pretraining.training_step: hands back the two
    views made before timing, so that the timed step is the network, loss, backward and update."""

    def __init__(self, first, second):
        self.views = (first, second)

    def pair(self, images, rng, rows=None):
        return self.views

    def pair_on_demand(self, images, rng, rows=None):
        """Slices of the views made before timing (which this stand-in holds whole, as the
        training step does not: --augment-in-step for its memory)."""
        return lambda start, stop: tuple(view[start:stop] for view in self.views)


def build_ours(args):
    """Our side, ready to time: synthetic uint8 images, the augmentation, the model and LARS
    (built by simclr.pretraining's own functions) on the chosen device, and `step()`, one training
    step on two views augmented once. Returns a SimpleNamespace of these (and `sync`, `xp`)."""
    import numpy

    from autograd.backend import require_cupy
    from nn import runtime
    from simclr.augment import SimCLRAugment
    from simclr.model import build_model
    from simclr.pretraining import build_optimizer, training_step

    xp = numpy if args.backend == "numpy" else require_cupy()
    device = "cpu" if args.backend == "numpy" else "cuda"
    runtime.reuse_freed_memory()  # as simclr.train does
    runtime.use_threaded_gradients()
    N, size = args.batch_size, args.image_size
    rng = numpy.random.default_rng(0)
    images = xp.asarray(rng.integers(0, 256, (N, size, size, 3), dtype=numpy.uint8))
    augment = SimCLRAugment.preset("cifar" if args.cifar_stem else "imagenet", size=size)
    config = {"arch": args.arch, "width": args.width, "cifar_stem": args.cifar_stem, "seed": 0,
              "head": "nonlinear", "proj_dim": 128, "optimizer": "lars", "weight_decay": 1e-6}
    model = build_model(config, size).to(device=device)
    optimizer = build_optimizer(config, model)
    views = augment if args.augment_in_step else PrecomputedViews(*augment.pair(images, rng))
    losses = []

    def step():
        losses.append(training_step(model, optimizer, views, images, rng, LEARNING_RATE,
                                    TEMPERATURE, micro_batch=args.micro_batch))

    return SimpleNamespace(xp=xp, device=device, sync=synchronizer(args.backend), rng=rng,
                           images=images, augment=augment, model=model, optimizer=optimizer,
                           step=step, losses=losses)


def measure_ours(args):
    """Time our step (and, separately, the augmentation) in this process; a result dict."""
    from bench.common import gemm_gflops
    from bench.flops import TRAINING_STEP_FORWARDS, forward_flops

    ours = build_ours(args)
    augment_times = [] if args.augment_in_step else repeat_timed(   # else: inside the step
        lambda: ours.augment.pair(ours.images, ours.rng), args.warmup, args.steps, ours.sync)
    step_times = repeat_timed(ours.step, args.warmup, args.steps, ours.sync, label="ours step")
    result = {"side": "ours", "step_times": step_times, "augment_times": augment_times,
              "peak_rss_mib": peak_rss_mib(), "loss": float(ours.losses[-1]), "notes": []}
    if ours.device == "cuda":  # one more step, untimed (bench/common.py says why)
        try:
            memory = device_memory_mib(ours.step, "cupy")
            result["device_peak_mib"], result["device_held_mib"] = memory["peak"], memory["held"]
        except NotRehearsed as reason:   # CuPy's memory pool, on the CPU's rehearsal
            result["notes"].append(f"ours: device memory: not rehearsed: {reason}")
    size = args.image_size
    forward = forward_flops(ours.model, (1, 3, size, size), ours.device)
    result["flops_per_step"] = TRAINING_STEP_FORWARDS * 2 * args.batch_size * forward
    # after the step, never before it: BLAS threads still spinning would slow the step
    result["gemm_gflops"] = gemm_gflops(args.backend, args.gemm_size)
    return result


def measure_torch(args, channels_last):
    """Time PyTorch's step on the same model in this process; a result dict."""
    if args.backend == "cupy" and os.environ.get(REHEARSAL_VARIABLE):
        raise NotRehearsed("PyTorch on CUDA")
    import torch

    from bench.common import gemm_gflops
    from bench.flops import TRAINING_STEP_FORWARDS, torch_forward_flops
    from bench.torch_simclr import TorchLARS, TorchSimCLR, nt_xent

    torch.set_num_threads(args.threads)
    device = "cpu" if args.backend == "numpy" else "cuda"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    sync = synchronizer("torch-cuda" if device == "cuda" else "cpu")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    N, size = args.batch_size, args.image_size
    model = TorchSimCLR(args.arch, args.cifar_stem, args.width).to(device, memory_format=layout)
    optimizer = TorchLARS(model.parameters(), LEARNING_RATE)
    # the pixel values do not change the speed of float32 arithmetic: uniform [0, 1) as views
    views = torch.rand(2 * N, 3, size, size, device=device).contiguous(memory_format=layout)
    losses = []

    def step():
        loss = nt_xent(model(views), TEMPERATURE)
        # kept on the device, as ours is: loss.item() would wait for the GPU inside every step
        losses.append(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    label = "torch channels_last step" if channels_last else "torch NCHW step"
    step_times = repeat_timed(step, args.warmup, args.steps, sync, label=label)
    result = {"side": "torch-channels-last" if channels_last else "torch-nchw",
              "step_times": step_times, "peak_rss_mib": peak_rss_mib(),
              "loss": losses[-1].item()}
    if device == "cuda":  # one more step, untimed, as for ours
        memory = device_memory_mib(step, "torch-cuda")
        result["device_peak_mib"], result["device_held_mib"] = memory["peak"], memory["held"]
    result["flops_per_step"] = TRAINING_STEP_FORWARDS * 2 * N * torch_forward_flops(model,
                                                                                     views[:1])
    result["gemm_gflops"] = gemm_gflops("numpy" if device == "cpu" else "torch-cuda",
                                        args.gemm_size)
    return result


def summarize(args, results):
    """Per side: pooled step times over the rounds, throughput, GFLOP/s, memory, and for PyTorch
    the throughput ratio ours/theirs (median over all steps, and the range over rounds)."""
    N = args.batch_size
    rows = {}
    for side, runs in results.items():
        times = [t for run in runs for t in run["step_times"]]
        seconds = summary(times)
        gflops = runs[0]["flops_per_step"] / seconds["median"] / 1e9
        gemm = statistics.median(run["gemm_gflops"] for run in runs)
        rows[side] = {"seconds_per_step": seconds, "images_per_s": N / seconds["median"],
                      "gflops": gflops, "gemm_gflops": gemm, "fraction_of_gemm": gflops / gemm,
                      "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
                      "flops_per_step": runs[0]["flops_per_step"]}
        for key in ("device_peak_mib", "device_held_mib"):
            if key in runs[0]:
                rows[side][key] = max(run[key] for run in runs)
        if runs[0].get("augment_times"):              # not with --augment-in-step
            rows[side]["augment_seconds"] = summary(
                [t for run in runs for t in run["augment_times"]])
    ours = rows["ours"]["seconds_per_step"]["median"] if "ours" in rows else None
    for side in rows:
        if side != "ours" and ours is not None:
            per_round = [statistics.median(theirs["step_times"])
                         / statistics.median(mine["step_times"])
                         for mine, theirs in zip(results["ours"], results[side])]
            rows[side]["ratio_ours_over_theirs"] = rows[side]["seconds_per_step"]["median"] / ours
            rows[side]["ratio_per_round"] = per_round
    return rows


def report(args, rows, facts, failures):
    """The printed table, then a line for each side that failed or was not rehearsed."""
    device = "GPU (CuPy / CUDA)" if args.backend == "cupy" else f"CPU, {args.threads} threads"
    if os.environ.get(REHEARSAL_VARIABLE):
        device += " rehearsed on the CPU (the numbers are NumPy's, not a GPU's)"
    lines = [f"SimCLR training step: {args.arch} width {args.width:g}, "
             f"{'CIFAR' if args.cifar_stem else 'ImageNet'} stem, N={args.batch_size} images "
             f"(2N={2 * args.batch_size} views) at {args.image_size}x{args.image_size}, "
             f"NT-Xent + LARS, {device}; {args.warmup} warm-up + {args.steps} timed steps "
             f"x {args.rounds} round(s)", describe_machine(facts)]
    table = []
    for side, row in rows.items():
        seconds = row["seconds_per_step"]
        ratio = row.get("ratio_ours_over_theirs")
        if ratio is not None:
            ratio = (f"{ratio:.2f}" + (f" ({min(row['ratio_per_round']):.2f}-"
                                       f"{max(row['ratio_per_round']):.2f})"
                                       if args.rounds > 1 else ""))
        table.append([SIDES[side], f"{seconds['median']:.3f} ({seconds['min']:.3f}-"
                      f"{seconds['max']:.3f})", f"{row['images_per_s']:.1f}",
                      f"{row['gflops']:.1f}", f"{100 * row['fraction_of_gemm']:.0f}%",
                      f"{row['gemm_gflops']:.0f}", f"{row['peak_rss_mib']:.0f}"]
                     + ([f"{row[key]:.0f}" if key in row else "-"
                         for key in ("device_peak_mib", "device_held_mib")]
                        if args.backend == "cupy" else [])
                     + ["-" if ratio is None else ratio])
    lines.append(format_table(["side", "s/step median (min-max)", "images/s", "GFLOP/s",
                               "of GEMM", "GEMM GFLOP/s", "peak RSS MiB"]
                              + (["GPU peak MiB", "GPU held MiB"]
                                 if args.backend == "cupy" else [])
                              + ["ours/theirs throughput"], table))
    ours = rows.get("ours")
    if ours:
        augment = ours.get("augment_seconds")
        where = ("augmentation of the 2N views, outside the step: "
                 f"{augment['median']:.3f} s ({augment['min']:.3f}-{augment['max']:.3f}), "
                 f"{args.batch_size / augment['median']:.0f} images/s" if augment
                 else "the augmentation inside the step (--augment-in-step)")
        lines.append(f"step = {ours['flops_per_step'] / 1e9:.3g} GFLOP (3 x forward, conv + "
                     f"linear); {where}")
        mismatched = [SIDES[side] for side, row in rows.items()
                      if row["flops_per_step"] != ours["flops_per_step"]]
        if mismatched:
            lines.append(f"WARNING: the FLOP count differs for {', '.join(mismatched)}: "
                         f"the two models are not the same network")
    lines += [f"{SIDES[side]}: {why}" for side, why in failures.items()]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        result = (measure_ours(args) if args.child == "ours"
                  else measure_torch(args, args.child == "torch-channels-last"))
        write_result(args.result, result)
        return 0
    failures = {}   # each side fails alone (run_sides): the others are still measured
    results, child_argv = run_sides("bench.step", args, argv, failures)
    for line in [line for runs in results.values() for line in runs[0].get("notes", [])]:
        note(line)
    facts = machine("bench.step", child_argv)
    rows = summarize(args, results)
    print(report(args, rows, facts, failures))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as file:
            json.dump({"config": vars(args), "machine": facts, "summary": rows,
                       "runs": results, "failed": failures}, file, indent=1)
    return 1 if any(why.startswith("failed") for why in failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
