"""python -m bench.ops: forward + backward of each kind of layer in ResNet-50, ours against PyTorch.

    python -m bench.ops --batch-size 32

Each layer runs at a shape it has in ResNet-50 (CIFAR stem, except the max-pool, which only the
ImageNet stem has), on --batch-size images (the head's linear layer on --batch-size rows;
NT-Xent on 2N rows, as in a step). One repeat is a forward pass and a backward pass with a
fixed random upstream gradient, gradients of the input and of every parameter included.
Reported: the median (min-max) milliseconds over the repeats of all rounds, and the speed
ratio ours/theirs = their time / our time (above 1, we are faster), against PyTorch's default
NCHW layout and against channels_last. As in bench.step, each side runs in its own process
with the same --threads, alternating over --rounds.

Our image inputs are channels-last (N, C, H, W) views, as every conv output is inside our
network, so no layer pays a layout copy that it would not pay there; our batch norm runs
fused with the ReLU (and the residual add) as our ResNet calls it, PyTorch's as separate ops.
"""
import argparse
import json
import statistics
import sys

from bench.common import (SIDES, describe_machine, default_threads, format_table, machine,
                          repeat_timed, run_sides, summary,
                          synchronizer, write_result)

# name -> (kind, shape settings); C/F channels in/out, H the input side, k the kernel side
LAYERS = {
    "conv 3x3 64->64 at 32x32": ("conv", dict(C=64, F=64, H=32, k=3, stride=1, padding=1)),
    # stages 3 and 4: ours by Winograd's F(2x2, 3x3) (nn/functional/cpu/winograd.py)
    "conv 3x3 256->256 at 8x8": ("conv", dict(C=256, F=256, H=8, k=3, stride=1, padding=1)),
    "conv 3x3 512->512 at 4x4": ("conv", dict(C=512, F=512, H=4, k=3, stride=1, padding=1)),
    "conv 1x1 256->64 at 32x32": ("conv", dict(C=256, F=64, H=32, k=1, stride=1, padding=0)),
    "conv 1x1 64->256 at 32x32": ("conv", dict(C=64, F=256, H=32, k=1, stride=1, padding=0)),
    "conv 3x3/2 128->128 at 32x32": ("conv", dict(C=128, F=128, H=32, k=3, stride=2, padding=1)),
    "downsample 1x1/2 256->512 at 32x32": ("conv", dict(C=256, F=512, H=32, k=1, stride=2,
                                                        padding=0)),
    "BN + ReLU 64 at 32x32": ("bn_relu", dict(C=64, H=32)),
    "BN + add + ReLU 256 at 32x32": ("bn_add_relu", dict(C=256, H=32)),
    "max-pool 3x3/2 64 at 112x112": ("max_pool", dict(C=64, H=112)),
    "linear 2048->2048": ("linear", dict(C=2048, F=2048)),
    "NT-Xent (2N, 128)": ("nt_xent", dict(C=128)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="N images")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="how many times each side's process runs, alternating")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="threads for every library on both sides (default: the cores)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--tf32", choices=["on", "off"], default="off")
    parser.add_argument("--compare", choices=["none", "torch"], default="torch",
                        help="torch (default, when installed) or none: ours alone")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement here")
    parser.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, low in (("batch_size", 2), ("repeats", 1), ("warmup", 0), ("rounds", 1),
                      ("threads", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}, "
                         f"got {getattr(args, name)}")
    return args


def input_shapes(kind, s, N):
    """The shapes of the layer's differentiable inputs: (input, parameters...)."""
    if kind == "conv":
        return [(N, s["C"], s["H"], s["H"]), (s["F"], s["C"], s["k"], s["k"])]
    if kind == "bn_relu":
        return [(N, s["C"], s["H"], s["H"]), (s["C"],), (s["C"],)]
    if kind == "bn_add_relu":  # the end of a residual block: relu(bn(x) + shortcut)
        return [(N, s["C"], s["H"], s["H"]), (s["C"],), (s["C"],), (N, s["C"], s["H"], s["H"])]
    if kind == "max_pool":
        return [(N, s["C"], s["H"], s["H"])]
    if kind == "linear":
        return [(N, s["C"]), (s["F"], s["C"]), (s["F"],)]
    return [(2 * N, s["C"])]


def ours_layer(kind, s, inputs):
    """Our forward of the layer on Tensors `inputs`."""
    import numpy

    import nn.functional as F
    from simclr.loss import nt_xent

    if kind == "conv":
        return lambda: F.conv2d(*inputs, stride=s["stride"], padding=s["padding"])
    if kind in ("bn_relu", "bn_add_relu"):
        xp = inputs[0].xp
        running_mean, running_var = (xp.zeros(s["C"], numpy.float32),
                                     xp.ones(s["C"], numpy.float32))
        return lambda: F.batch_norm(inputs[0], running_mean, running_var, *inputs[1:3],
                                    training=True, residual=inputs[3] if len(inputs) > 3
                                    else None, relu=True)  # one fused op, as in our ResNet
    if kind == "max_pool":
        return lambda: F.max_pool2d(inputs[0], 3, 2, 1)
    if kind == "linear":
        return lambda: F.linear(*inputs)
    return lambda: nt_xent(inputs[0])


def torch_layer(kind, s, inputs):
    """PyTorch's forward of the layer on tensors `inputs`."""
    import torch
    import torch.nn.functional as F

    from bench.torch_simclr import nt_xent

    if kind == "conv":
        return lambda: F.conv2d(*inputs, stride=s["stride"], padding=s["padding"])
    if kind in ("bn_relu", "bn_add_relu"):
        running_mean = torch.zeros(s["C"], device=inputs[0].device)
        running_var = torch.ones(s["C"], device=inputs[0].device)
        if kind == "bn_add_relu":
            return lambda: F.relu(F.batch_norm(inputs[0], running_mean, running_var,
                                               *inputs[1:3], training=True) + inputs[3])
        return lambda: F.relu(F.batch_norm(inputs[0], running_mean, running_var, *inputs[1:],
                                           training=True))
    if kind == "max_pool":
        return lambda: F.max_pool2d(inputs[0], 3, 2, 1)
    if kind == "linear":
        return lambda: F.linear(*inputs)
    return lambda: nt_xent(inputs[0])


def measure(args):
    """Time every layer in this process (the side named by --child): {layer: [seconds]}."""
    import numpy

    side = args.child
    rng = numpy.random.default_rng(0)
    if side == "ours":
        from autograd import Tensor
        from autograd.backend import require_cupy
        from nn import runtime
        runtime.reuse_freed_memory()  # as in training
        runtime.use_threaded_gradients()
        xp = numpy if args.backend == "numpy" else require_cupy()
        sync = synchronizer(args.backend)

        def make(array, requires_grad):  # images channels-last, as our convs output them
            array = xp.asarray(array)
            if array.ndim == 4:
                array = xp.moveaxis(xp.ascontiguousarray(xp.moveaxis(array, 1, -1)), -1, 1)
            return Tensor(array, requires_grad=requires_grad)
    else:
        import torch
        torch.set_num_threads(args.threads)
        device = "cpu" if args.backend == "numpy" else "cuda"
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
            torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
        sync = synchronizer("torch-cuda" if device == "cuda" else "cpu")
        layout = torch.channels_last if side == "torch-channels-last" else torch.contiguous_format

        def make(array, requires_grad):
            tensor = torch.from_numpy(array).to(device)
            if tensor.ndim == 4:
                tensor = tensor.contiguous(memory_format=layout)
            return tensor.requires_grad_(requires_grad)

    times = {}
    for name, (kind, settings) in LAYERS.items():
        shapes = input_shapes(kind, settings, args.batch_size)
        inputs = [make(0.1 * rng.standard_normal(shape, dtype=numpy.float32), True)
                  for shape in shapes]
        forward = (ours_layer if side == "ours" else torch_layer)(kind, settings, inputs)
        out = forward()
        upstream = None if out.ndim == 0 else make(
            rng.standard_normal(tuple(out.shape), dtype=numpy.float32), False)

        def forward_backward():
            for tensor in inputs:
                tensor.grad = None
            forward().backward(upstream)

        times[name] = repeat_timed(forward_backward, args.warmup, args.repeats, sync)
        print(f"  {SIDES[side]}: {name} {1e3 * statistics.median(times[name]):.1f} ms",
              file=sys.stderr, flush=True)
    return times


def report(args, results, facts):
    """The printed table: milliseconds per side and the speed ratios."""
    device = "GPU (CuPy / CUDA)" if args.backend == "cupy" else f"CPU, {args.threads} threads"
    lines = [f"One layer, forward + backward, float32, N={args.batch_size}, {device}; "
             f"{args.warmup} warm-up + {args.repeats} timed repeats x {args.rounds} round(s); "
             f"speed = their time / our time (>1: ours faster)", describe_machine(facts)]
    sides = list(results)
    header = ["layer"] + [f"{SIDES[side]} ms" for side in sides]
    header += [f"speed vs {SIDES[side]}" for side in sides if side != "ours"]
    table = []
    for name in LAYERS:
        medians = {}
        row = [name]
        for side in sides:
            seconds = summary([t for run in results[side] for t in run[name]])
            medians[side] = seconds["median"]
            row.append(f"{1e3 * seconds['median']:.2f} ({1e3 * seconds['min']:.2f}-"
                       f"{1e3 * seconds['max']:.2f})")
        row += [f"{medians[side] / medians['ours']:.2f}" for side in sides if side != "ours"]
        table.append(row)
    lines.append(format_table(header, table))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        write_result(args.result, measure(args))
        return 0
    results, child_argv = run_sides("bench.ops", args, argv)
    facts = machine("bench.ops", child_argv)
    print(report(args, results, facts))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"config": vars(args), "machine": facts, "runs": results}, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
