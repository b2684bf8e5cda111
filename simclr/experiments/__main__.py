"""python -m simclr.experiments NAME --out DIR: re-run one of the SimCLR paper's findings.

NAME is augmentations, head, batch-epochs or temperature (simclr/experiments/studies.py says
what each varies and which figure of the paper it re-runs). Every run of the grid pre-trains with
simclr.train on the same class-balanced subset of the training images, then is evaluated alike
on the held-out split: a linear probe (100 epochs) and k-NN (k = 200) on its frozen features.
The grid writes DIR/results.jsonl, DIR/table.md and its figures (PNG); run the same command
again after an interruption and it goes on where it stopped (simclr/experiments/grid.py).

--scale picks the budget: `cpu` (default) took 29 to 37 minutes for each experiment on one
core of a 2-core machine (docs/experiments.md), 69 for batch-epochs (18 runs, batches 64 to
2,048, those above 256 in micro-batches of 256): a ResNet-18 at width 1/8, 500 images of each
class, batch 128, 12 epochs (3 for the 20 runs of augmentations); `gpu` the whole training
split and a full-width ResNet-18 for 100 epochs (not yet run on a GPU); `tiny` a smoke test on
synthetic images. The model, data and budget flags below override the scale's values.
"""
import signal
import sys

from simclr import cli, plot
from simclr.atomic_files import atomic_write
from simclr.cli import given_flags
from simclr.data import add_data_arguments, check_data_flags
from simclr.experiments.grid import Grid
from simclr.experiments.studies import STUDIES
from simclr.model import ARCHITECTURES
from simclr.training.process import set_up_process

SCALES = {
    "cpu": {"shared": dict(arch="resnet18", width=0.125, train_per_class=500, batch_size=128,
                           epochs=12),
            "epochs": {"augmentations": 3},  # 20 runs: a quarter of the others' epochs each
            "micro_batch": {"batch-epochs": 256},
            "axes": {}},
    "gpu": {"shared": dict(arch="resnet18", width=1.0, batch_size=512, epochs=100,
                           backend="cupy"),
            "epochs": {},
            "micro_batch": {"batch-epochs": 512},
            "axes": {"batches": (256, 512, 1024, 2048, 4096), "epochs": (100, 200, 400)}},
    "tiny": {"shared": dict(dataset="synthetic", synthetic_size=48, val_fraction=0.25,
                            arch="resnet18", width=0.0625, batch_size=12, epochs=1),
             "epochs": {},
             "micro_batch": {"batch-epochs": 6},
             "axes": {"strengths": (0.0, 1.0), "dims": (8,), "batches": (6, 12),
                      "epochs": (1, 2), "temperatures": (0.1, 1.0)}},
}
SHARED_FLAGS = ("arch", "width", "batch_size", "micro_batch", "epochs", "lr", "lr_scaling",
                "backend", "seed")
# the data flags: where the images come from and how they split (a scale's are replaced as a
# whole when any is given), and the budget's subset (kept unless --train-per-class is given)
SOURCE_KEYS = ("dataset", "data_dir", "download", "val_fraction", "val_per_class", "image_size",
               "limit", "synthetic_size")
DATA_KEYS = SOURCE_KEYS + ("train_per_class",)


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog="python -m simclr.experiments",
                                description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(STUDIES), metavar="NAME",
                        help=f"the experiment: {', '.join(sorted(STUDIES))}")
    parser.add_argument("--out", required=True, help="the experiment's folder (runs, results)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    add_data_arguments(parser)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None)
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="every run's batch (batch-epochs: see --batches)")
    parser.add_argument("--micro-batch", type=int, default=None, metavar="M",
                        help="runs of a batch larger than M pre-train M images at a time "
                             "(simclr.train --micro-batch: NT-Xent is still the whole batch's, "
                             "batch norm normalises each M); runs of M or fewer images take the "
                             "plain step (batch-epochs' default: 256 at --scale cpu)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="every run's epochs (batch-epochs: see --epoch-counts)")
    parser.add_argument("--lr", type=float, default=None, help="simclr.train's --lr")
    parser.add_argument("--lr-scaling", choices=["linear", "sqrt", "none"], default=None,
                        help="simclr.train's --lr-scaling (linear: lr x B/256; sqrt: lr x "
                             "sqrt(B), the paper's 0.075 x sqrt(B) with --lr 0.075)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help="run only these points of the grid, a comma list of their names "
                             "(e.g. crop,crop+jitter: to repeat a few with another --seed)")
    for flag, axis, what in (("--strengths", "strengths", "colour strengths (augmentations)"),
                             ("--dims", "dims", "head output dimensions (head)"),
                             ("--batches", "batches", "batch sizes (batch-epochs)"),
                             ("--epoch-counts", "epochs", "epoch counts (batch-epochs)"),
                             ("--temperatures", "temperatures", "temperatures (temperature)")):
        parser.add_argument(flag, dest="axis_" + axis, default=None, metavar="LIST",
                            help=f"comma list of the {what}")
    args = parser.parse_args(argv)
    check_data_flags(args)
    return args


def shared_settings(args, given):
    """simclr.train's settings that every run of the grid shares: the scale's, then those of
    the flags `given` on the command line. A data set given replaces the scale's data source
    (the tiny scale's synthetic images) but keeps its budget: --scale cpu with --dataset folder
    still trains on 500 images of each class."""
    scale = SCALES[args.scale]
    shared = dict(scale["shared"])
    if args.name in scale["epochs"]:
        shared["epochs"] = scale["epochs"][args.name]
    if args.name in scale["micro_batch"]:
        shared["micro_batch"] = scale["micro_batch"][args.name]
    if given & set(SOURCE_KEYS):
        shared = {key: value for key, value in shared.items() if key not in SOURCE_KEYS}
    for key in DATA_KEYS + SHARED_FLAGS:
        if key in given:
            shared[key] = getattr(args, key)
    shared.setdefault("dataset", args.dataset)  # the evaluation loads the data from these too
    return shared


def axes(args):
    """The grid's axes: the study's defaults, the scale's, then --strengths etc."""
    study = STUDIES[args.name]
    values = {**study.axes, **{k: v for k, v in SCALES[args.scale]["axes"].items()
                               if k in study.axes}}
    for axis in study.axes:
        given = getattr(args, "axis_" + axis)
        if given is not None:
            values[axis] = parse_list(given, "--" + ("epoch-counts" if axis == "epochs" else axis),
                                      float if axis in ("strengths", "temperatures") else int)
    return values


def parse_list(text, flag, kind):
    try:
        values = tuple(kind(item) for item in text.split(","))
    except ValueError:
        raise cli.UsageError(f"{flag} {text}: expected a comma list of "
                             f"{'numbers' if kind is float else 'whole numbers'}") from None
    if kind is int and min(values) < 1 or kind is float and min(values) < 0:
        raise cli.UsageError(f"{flag} {text}: every value must be positive")
    return values


def chosen(points, only):
    """The points that --only names (all when it is not given), in the grid's order."""
    if only is None:
        return points
    names = only.split(",")
    unknown = sorted(set(names) - {point.name for point in points})
    if unknown:
        raise cli.UsageError(f"--only {only}: no run named {', '.join(unknown)} in this grid; "
                             f"its runs are {', '.join(point.name for point in points)}")
    return [point for point in points if point.name in names]


def describe(shared, results):
    """One line of what every run was: the budget that the table and figures print."""
    data = shared.get("dataset", "cifar10")
    images = results[0]["train_images"] if results else "?"
    per_class = shared.get("train_per_class")
    subset = f"{images} images" + (f" ({per_class} per class)" if per_class else "")
    held_out = (f"{results[0]['test_images']} {results[0]['split']} images" if results
                else "the held-out split")
    rate = ""
    scaling = shared.get("lr_scaling")
    if scaling is not None or "lr" in shared:   # simclr.train's defaults: 1.0, linear
        rate = {"linear": " x B/256", "sqrt": " x sqrt(B)", "none": ""}[scaling or "linear"]
        rate = f", lr {shared.get('lr', 1.0):g}{rate}"
    micro = shared.get("micro_batch")
    micro = f"; batches above {micro} in micro-batches of {micro}" if micro else ""
    return (f"{data}: {subset}; {shared['arch']} width {shared['width']:g}{rate}, "
            f"batch {shared['batch_size']}, {shared['epochs']} epoch"
            f"{'s' if shared['epochs'] != 1 else ''} (unless varied){micro}; "
            f"evaluated on {held_out}")


def write_report(study, grid, results):
    """table.md and the figures, from the results so far."""
    title = describe(grid.shared, results)
    seconds = sum(result["seconds"] for result in results)
    text = (f"# {study.name}\n\n{title}. {len(results)} runs, "
            f"{seconds / 60:.1f} minutes of training and evaluation in all.\n\n"
            f"{study.table(results)}\n")
    with atomic_write(f"{grid.out}/table.md", "w") as file:
        file.write(text)
    for name, image in study.figures(results, title.replace("; evaluated", "\nevaluated")).items():
        plot.save_png(image, f"{grid.out}/{name}")
    return text


def main(argv=None):
    """Exit status 0 when every run is done, 2 for a user's mistake, 130 after Ctrl-C (the
    same command continues)."""
    return cli.run(_main, argv, prog="python -m simclr.experiments")


def _main(argv):
    args = parse_args(argv)
    set_up_process(args.threads)  # --threads, SIGTERM as Ctrl-C (as simclr.train)
    study = STUDIES[args.name]
    shared = shared_settings(args, given_flags(sys.argv[1:] if argv is None else argv))
    grid = Grid(study.name, args.out, shared, chosen(study.points(axes(args)), args.only))
    try:
        results = grid.run()
    except KeyboardInterrupt as interrupted:  # Ctrl-C, SIGTERM (Interrupted, during training)
        print(f"python -m simclr.experiments: stopped; the finished runs are kept: run the same "
              f"command again to continue", file=sys.stderr)
        return 128 + getattr(interrupted, "signum", signal.SIGINT)
    print(write_report(study, grid, results))
    return 0


if __name__ == "__main__":
    cli.exit_program(main())
