"""python -m bench.micro_batch: big batches on small memory, measured. For each architecture and
batch B, the step of simclr.train --micro-batch M beside the plain step of batch B (where it is
asked for: it may not fit) and the plain step of batch M, each in a process of its own
(python -m bench.step): images per second and peak memory.

    python -m bench.micro_batch --archs resnet18,resnet50 --batches 256,512,1024,2048,4096 \\
        --micro-batch 128 --plain-up-to 1024 --backend cupy

Peak memory is the GPU's (the most bytes in live arrays during a step, bench/common.py) with
--backend cupy, and the process's peak resident memory on the CPU (which includes the
interpreter and its libraries); the column's heading says which it holds (on the CPU's
rehearsal of a GPU, where CuPy's memory pool is not rehearsed, it is the RSS). The claims it
checks (docs/SIMCLR.md, "Big batches on small memory"): the memory of a micro-batched step of B
stays near that of a plain step of M (the encoder holds one micro-batch's graph and views, the
loss a block of its logits; the whole batch's embeddings are small), and its throughput is that
of the plain step less one forward pass of three, so "second pass" is its cost: plain images/s
over micro-batched images/s, less 1, in percent. Every step here augments its own images, as
training's does (bench.step --augment-in-step): the plain step the whole batch at once, the
micro-batched one M images at a time in each of its two passes (so twice).

Each measurement is printed as one line when it ends, and --json is rewritten after each row
(and after each plain step of M): a run stopped part way (bench.gpu_check's stage timeout)
keeps what it measured. The table comes last. Exit status 1 when a micro-batched step or a plain step of M failed (each named, with
its reason); a plain step of B that fails (out of memory: it may not fit) is shown as failed
and noted, and is not an error.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile

from bench.common import format_table, note, python_command
from simclr import cli

ARCHS = ("resnet18", "resnet34", "resnet50")


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog="python -m bench.micro_batch",
                                description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="resnet18,resnet50",
                        help=f"comma list of {', '.join(ARCHS)}")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--batches", default="256,512,1024,2048,4096", help="comma list of B")
    parser.add_argument("--micro-batch", type=int, default=128, metavar="M")
    parser.add_argument("--plain-up-to", type=int, default=1024, metavar="B",
                        help="time the plain step of batch B only up to this B (it may not fit)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write every measurement here")
    args = parser.parse_args(argv)
    args.archs = args.archs.split(",")
    unknown = [arch for arch in args.archs if arch not in ARCHS]
    if unknown:
        raise cli.UsageError(f"--archs {','.join(args.archs)}: no architecture named "
                             f"{', '.join(unknown)}; expected a comma list of {', '.join(ARCHS)}")
    try:
        args.batches = [int(batch) for batch in args.batches.split(",")]
    except ValueError:
        raise cli.UsageError(f"--batches {args.batches}: expected a comma list of whole "
                             f"numbers, such as 256,512") from None
    cli.positive_number("--width", args.width)
    for flag, value, low in (("--micro-batch", args.micro_batch, 2), ("--steps", args.steps, 1),
                             ("--warmup", args.warmup, 0), ("--threads", args.threads, 1)):
        if value is not None:   # --threads: bench.step's default, the cores
            cli.at_least(flag, value, low)
    bad = [b for b in args.batches if b < 2 or b % args.micro_batch]
    if bad:
        raise cli.UsageError(f"--micro-batch {args.micro_batch}: expected a divisor of every "
                             f"batch (at least 2) in --batches, not of "
                             f"{', '.join(map(str, bad))}")
    return args


def measure(args, arch, batch, micro_batch=None):
    """One bench.step process (through bench.rehearse on the rehearsal, as bench.common's
    children): {images_per_s, peak_mib, peak_of: "GPU" or "RSS", command}, or {failed: why,
    command}."""
    what = ["--arch", arch, "--width", str(args.width), "--batch-size", str(batch), "--steps",
            str(args.steps), "--warmup", str(args.warmup), "--backend", args.backend,
            "--augment-in-step"]
    what += ["--threads", str(args.threads)] if args.threads else []
    what += ["--micro-batch", str(micro_batch)] if micro_batch else []
    shown = shlex.join(["python", *python_command("bench.step", what)[1:]])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "step.json")
        done = subprocess.run(python_command("bench.step", what + [
            "--json", path, "--gemm-size", "256"]),   # the GEMM rate is not reported here
            capture_output=True, text=True)
        found = {}
        if os.path.exists(path):
            with open(path) as file:
                found = json.load(file)
    row = found.get("summary", {}).get("ours")
    if done.returncode or row is None:   # bench.step's reason, else its last line of its own
        said = [line for line in done.stderr.strip().splitlines()
                if not line.startswith("bench.rehearse:")]
        why = found.get("failed", {}).get("ours") or (
            said[-1] if said else f"exit status {done.returncode}")
        return {"failed": why, "command": shown}
    of = "GPU" if "device_peak_mib" in row else "RSS"
    return {"images_per_s": row["images_per_s"], "command": shown, "peak_of": of,
            "peak_mib": row["device_peak_mib" if of == "GPU" else "peak_rss_mib"]}


def main(argv=None):
    """Measure every architecture and batch (see the module's docstring); the exit status."""
    args = parse_args(argv)
    m, rows, smalls, failed = args.micro_batch, [], {}, []

    def measured(what, result, fatal=True):
        if "failed" in result:
            note(f"{what}: failed: {result['failed']}")
            if fatal:   # a plain step of B may not fit: that is a measurement, not an error
                failed.append(what)
        else:
            print(f"{what}: {result['images_per_s']:.1f} images/s, {result['peak_of']} peak "
                  f"{result['peak_mib']:.0f} MiB", flush=True)
        return result

    for arch in args.archs:
        small = smalls[arch] = measured(f"{arch} plain step of M = {m}", measure(args, arch, m))
        write_json(args, smalls, rows, finished=False)
        for batch in args.batches:
            micro = measured(f"{arch} B = {batch}, micro-batches of {m}",
                             measure(args, arch, batch, m if m < batch else None))
            plain = measured(f"{arch} B = {batch}, plain", measure(args, arch, batch),
                             fatal=False) if batch <= args.plain_up_to else {}
            rows.append({"arch": arch, "batch": batch, "micro_batch": m, "micro": micro,
                         "plain": plain, "plain_of_m": small})
            write_json(args, smalls, rows, finished=False)
    print(report(args, rows))
    write_json(args, smalls, rows, finished=True)
    return 1 if failed else 0


def write_json(args, smalls, rows, finished):
    """--json: the configuration, the plain step of M of each architecture and every row
    measured so far (finished: all of them)."""
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".partial", "w") as file:
            json.dump({"config": vars(args), "finished": finished, "plain_of_m": smalls,
                       "rows": rows}, file, indent=1)
        os.replace(args.json + ".partial", args.json)


def report(args, rows):
    """The title line and the table: a row per architecture and batch."""
    results = [r for row in rows for r in (row["micro"], row["plain"], row["plain_of_m"])
               if "peak_of" in r]
    sources = {r["peak_of"] for r in results}
    memory = "GPU peak MiB" if sources == {"GPU"} else "peak RSS MiB" if sources == {"RSS"} \
        else "peak MiB (GPU, RSS where no GPU peak)"
    title = (f"SimCLR step, width {args.width:g}, CIFAR stem, 32 px, {args.backend}; "
             f"micro-batch M = {args.micro_batch}; {args.warmup} warm-up + {args.steps} timed "
             f"steps per process")
    return title + "\n" + format_table(
        ["arch", "B", "images/s (M)", "images/s plain", "images/s plain M", "second pass",
         f"{memory} (M)", f"{memory} plain B", f"{memory} plain M", "peak / plain M"],
        [_table_row(row) for row in rows])


def _table_row(row):
    """One row: images/s and peak memory of the micro-batched step, of the plain step of B and
    of the plain step of M; the second pass's cost; the peak over the plain step of M's."""
    micro, plain, small, m = row["micro"], row["plain"], row["plain_of_m"], row["micro_batch"]

    def number(result, key, form="{:.0f}"):
        return form.format(result[key]) if key in result else (
            "failed" if "failed" in result else "-")
    cost = ratio = "-"
    if "images_per_s" in micro and "images_per_s" in plain and m < row["batch"]:
        cost = f"{100 * (plain['images_per_s'] / micro['images_per_s'] - 1):.0f}%"
    if "peak_mib" in micro and "peak_mib" in small:
        ratio = f"{micro['peak_mib'] / small['peak_mib']:.2f}x"
    return [row["arch"], row["batch"], number(micro, "images_per_s", "{:.1f}"),
            number(plain, "images_per_s", "{:.1f}"), number(small, "images_per_s", "{:.1f}"),
            cost, number(micro, "peak_mib"), number(plain, "peak_mib"),
            number(small, "peak_mib"), ratio]


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m bench.micro_batch"))
