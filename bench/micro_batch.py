"""python -m bench.micro_batch: big batches on small memory, measured. For each architecture and
batch B, the step of simclr.train --micro-batch M beside the plain step of batch B (where it is
asked for: it may not fit) and the plain step of batch M, each in a process of its own
(python -m bench.step): images per second and peak memory.

    python -m bench.micro_batch --archs resnet18,resnet50 --batches 256,512,1024,2048,4096 \\
        --micro-batch 128 --plain-up-to 1024 --backend cupy

Peak memory is the GPU's (the most bytes in live arrays during a step, bench/common.py) with
--backend cupy, and the process's peak resident memory on the CPU (which includes the
interpreter and its libraries). The claims it checks (docs/SIMCLR.md, "Big batches on small
memory"): the memory of a micro-batched step of B stays near that of a plain step of M (the
encoder holds one micro-batch's graph; the views and embeddings of the whole batch are small),
and its throughput is that of the plain step less one forward pass of three, so "second pass"
is its cost: plain images/s over micro-batched images/s, less 1, in percent.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench.common import format_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.micro_batch",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="resnet18,resnet50", help="comma list")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batches", default="256,512,1024,2048,4096", help="comma list of B")
    parser.add_argument("--micro-batch", type=int, default=128, metavar="M")
    parser.add_argument("--plain-up-to", type=int, default=1024, metavar="B",
                        help="time the plain step of batch B only up to this B (it may not fit)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write every measurement here")
    args = parser.parse_args(argv)
    args.archs = args.archs.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    bad = [b for b in args.batches if b % args.micro_batch]
    if args.micro_batch < 1 or bad:
        parser.error(f"--micro-batch {args.micro_batch}: expected a divisor of every batch in "
                     f"--batches, not of {', '.join(map(str, bad))}")
    return args


def measure(args, arch, batch, micro_batch=None):
    """One bench.step process: {images_per_s, peak_mib}, or {failed: its last lines}."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "step.json")
        command = [sys.executable, "-m", "bench.step", "--arch", arch, "--width",
                   str(args.width), "--batch-size", str(batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--backend", args.backend, "--json", path,
                   "--gemm-size", "256"]         # the machine's GEMM rate is not reported here
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--micro-batch", str(micro_batch)] if micro_batch else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode or not os.path.exists(path):
            return {"failed": done.stderr.strip().splitlines()[-1:]}
        row = json.load(open(path))["summary"]["ours"]
    peak = row.get("device_peak_mib", row["peak_rss_mib"])
    return {"images_per_s": row["images_per_s"], "peak_mib": peak}


def main(argv=None):
    args = parse_args(argv)
    m, rows, table = args.micro_batch, [], []
    for arch in args.archs:
        small = measure(args, arch, m)                                  # plain step of M
        for batch in args.batches:
            micro = measure(args, arch, batch, m if m < batch else None)
            plain = measure(args, arch, batch) if batch <= args.plain_up_to else {}
            rows.append({"arch": arch, "batch": batch, "micro_batch": m, "micro": micro,
                         "plain": plain, "plain_of_m": small})
            table.append(_table_row(arch, batch, m, micro, plain, small))
    memory = "GPU peak MiB" if args.backend == "cupy" else "peak RSS MiB"
    print(f"SimCLR step, width {args.width:g}, CIFAR stem, 32 px, {args.backend}; micro-batch "
          f"M = {m}; {args.warmup} warm-up + {args.steps} timed steps per process")
    print(format_table(["arch", "B", "images/s (M)", "images/s plain", "second pass",
                        f"{memory} (M)", f"{memory} plain B", f"{memory} plain M",
                        "peak / plain M"], table))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"config": vars(args), "rows": rows}, file, indent=1)
    return 0


def _table_row(arch, batch, m, micro, plain, small):
    def number(result, key, form="{:.0f}"):
        return form.format(result[key]) if key in result else (
            "failed" if "failed" in result else "-")
    cost = ratio = "-"
    if "images_per_s" in micro and "images_per_s" in plain and m < batch:
        cost = f"{100 * (plain['images_per_s'] / micro['images_per_s'] - 1):.0f}%"
    if "peak_mib" in micro and "peak_mib" in small:
        ratio = f"{micro['peak_mib'] / small['peak_mib']:.2f}x"
    return [arch, batch, number(micro, "images_per_s", "{:.1f}"),
            number(plain, "images_per_s", "{:.1f}"), cost, number(micro, "peak_mib"),
            number(plain, "peak_mib"), number(small, "peak_mib"), ratio]


if __name__ == "__main__":
    sys.exit(main())
