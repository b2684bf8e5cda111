"""The settings of a pre-training run (python -m simclr.train): its flags, what a resumed run may
change, what no run can use.

parse_args reads the command line; validate refuses a value that no run can use, naming its
flag; resolve_config turns the flags into the run's settings (config.json), or, for --resume,
takes the saved settings and the few flags that may change a resumed run. The grid of
python -m simclr.experiments makes its runs' settings here too, from the same flags.
"""
import argparse
import math
import os

from simclr import cli
from simclr.augment import TRANSFORMATIONS
from simclr.cli import UsageError
from simclr.data import add_data_arguments, check_data_flags
from simclr.model import ARCHITECTURES, HEADS
from simclr.training.checkpoint import checkpoint_path, load_checkpoint

# Flags a resumed run may give anew (None: not given); every other setting comes from the
# checkpoint. --max-steps is not inherited: a resumed run goes to the end unless it is given again.
RESUMABLE_OVERRIDES = {"backend": "numpy", "knn_every": 0}
# What else a resumed run may be given anew (see resolve_config)
CHANGEABLE_ON_RESUME = {"backend", "knn_every", "out", "max_steps", "data_dir", "download", "epochs",
                        "micro_batch"}


MICRO_BATCH_HELP = (
    "run the encoder on M images (2M views) at a time, for big batches on small memory: NT-Xent, "
    "its negatives and the update stay those of the whole --batch-size, through cached embedding "
    "gradients (one more forward pass); with --distributed, M of each rank's share. Batch norm "
    "then normalises each micro-batch by its own statistics, as data-parallel training without "
    "global batch norm does (a batch of M, not of --batch-size, for its noise and its "
    "regularisation), and updates its running statistics once per micro-batch. Default: the "
    "whole batch at once. May be changed on --resume (it changes memory and batch norm's groups)")


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog="python -m simclr.train", description="SimCLR pre-training.")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default=None,
                        help="numpy (default): the CPU; cupy: an NVIDIA GPU (needs the cuda12/cuda13 extra)")
    add_data_arguments(parser)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="resnet50")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (SimCLR 1, 2, 4)")
    parser.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=None,
                        help="3x3 stride-1 first conv and no max-pool (default: on for images <= 32 px)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=None, metavar="M",
                        help=MICRO_BATCH_HELP)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--optimizer", choices=["lars", "sgd"], default="lars")
    parser.add_argument("--lr", type=float, default=1.0,
                        help="base learning rate, scaled by --lr-scaling (official CIFAR-10: 1.0 x B/256)")
    parser.add_argument("--lr-scaling", choices=["linear", "sqrt", "none"], default="linear")
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--warmup-epochs", type=float, default=None,
                        help="epochs of linear warm-up, fractions allowed (default: 10, or a tenth "
                             "of the run when it is shorter than 100 epochs)")
    parser.add_argument("--color-strength", type=float, default=0.5)
    parser.add_argument("--blur", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--augmentations", default=None, metavar="LIST",
                        help="for ablations: the steps of a view, a comma list of "
                             f"{','.join(TRANSFORMATIONS)} (default: all but blur, and blur "
                             "with --blur); 'none' for no augmentation at all")
    parser.add_argument("--head", choices=HEADS, default="nonlinear")
    parser.add_argument("--proj-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/simclr", help="folder for config, metrics, checkpoint")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run saved in DIR with its saved settings, in DIR or "
                             "in --out (a new folder); only --epochs (to extend it), --max-steps, "
                             "--knn-every, --backend, --threads, --data-dir, --micro-batch may be "
                             "given anew")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop (with a checkpoint) after this many steps in all, at least 1; "
                             "the schedule still spans --epochs (for smoke runs and tests)")
    parser.add_argument("--knn-every", type=int, default=None, metavar="N",
                        help="every N epochs, k-NN accuracy (cosine, k=200) on the held-out split "
                             "(default 0: never)")
    parser.add_argument("--distributed", action="store_true",
                        help="one rank of a data-parallel run started by mpiexec (needs the mpi "
                             "extra); --batch-size is then the global batch; not saved with the "
                             "run, which may resume on another number of ranks")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the array work (default: $OMP_NUM_THREADS, else "
                             "every core); not saved with the run. A run repeats bit for bit "
                             "with the same thread count")
    args = parser.parse_args(argv)
    if not args.resume:  # a resumed run's data flags are its saved ones (see resolve_config)
        check_data_flags(args)
    return args


def resolve_config(args, given=None):
    """The run's settings, and what it resumes from: (config, None) for a new run, or
    (config, (model_state, optimizer_state, meta, source folder)) for --resume.

    A resumed run keeps its saved settings. `given`, the settings the command line names
    (cli.given_flags; default: those that differ from the defaults), may change only what does
    not make it another run: where it runs (--backend, --threads), where it writes (--out: the
    run continues there, its history copied, the resumed folder left as it was), where its data
    lies (--data-dir, --download), how far it goes (--epochs, to extend it; --max-steps) and
    what it monitors (--knn-every), and how much of the batch the encoder takes at a time
    (--micro-batch: memory, and the groups batch norm normalises over). Any other setting given with a value other than the saved
    one is refused, naming it: it would silently be ignored, or make a different run."""
    values = vars(args)
    if given is None:
        defaults = vars(parse_args([]))
        given = {key for key, value in values.items() if value != defaults.get(key)}
    if not args.resume:
        config = {key: value for key, value in values.items()
                  if key not in ("resume", "threads", "distributed")}
        for key, default in RESUMABLE_OVERRIDES.items():
            config[key] = default if config[key] is None else config[key]
        return config, None
    path = checkpoint_path(args.resume)
    model_state, optimizer_state, meta = load_checkpoint(path, flag="--resume")
    source = os.path.dirname(os.path.abspath(path))
    config = dict(meta["config"])
    cli.refuse_changed(args.resume, values, config,
                       given - CHANGEABLE_ON_RESUME - {"resume", "threads", "distributed"})
    config["out"] = values["out"] if "out" in given else source
    config["max_steps"] = values["max_steps"]
    config.setdefault("micro_batch", None)  # saved before --micro-batch existed
    for key in ("data_dir", "download", "epochs", "micro_batch"):
        if key in given:
            config[key] = values[key]
    for key in RESUMABLE_OVERRIDES:
        if values[key] is not None:
            config[key] = values[key]
    return config, (model_state, optimizer_state, meta, source)


def validate(config):
    """Refuse a setting that no run can use, naming its flag (a UsageError: one line, exit 2),
    and fill in the default warm-up, min(10, epochs / 10) epochs. The data flags are checked
    as the data loads."""
    cli.at_least("--epochs", config["epochs"], 1)
    if config["batch_size"] < 2:
        raise UsageError(f"--batch-size must be at least 2 (NT-Xent needs other images as "
                         f"negatives), got {config['batch_size']}")
    for key in ("lr", "width", "temperature"):
        cli.positive_number("--" + key, config[key])
    for key in ("weight_decay", "color_strength"):
        cli.non_negative_number("--" + key.replace("_", "-"), config[key])
    check_micro_batch(config.get("micro_batch"), config["batch_size"])
    cli.at_least("--proj-dim", config["proj_dim"], 1)
    cli.at_least("--seed", config["seed"], 0)
    if config["max_steps"] is not None:
        cli.at_least("--max-steps", config["max_steps"], 1)
    cli.at_least("--knn-every", config["knn_every"], 0)
    if config["knn_every"] > config["epochs"]:
        raise UsageError(f"--knn-every {config['knn_every']} is more than --epochs "
                         f"{config['epochs']}: the k-NN accuracy would never be measured")
    if config["warmup_epochs"] is None:
        config["warmup_epochs"] = min(10, config["epochs"] / 10)
    warmup = config["warmup_epochs"]
    if not (math.isfinite(warmup) and 0 <= warmup <= config["epochs"]):
        raise UsageError(f"--warmup-epochs must lie in [0, --epochs {config['epochs']}], got {warmup}")
    transformations(config)
    cli.require_backend(config["backend"])


def check_micro_batch(micro_batch, batch, ranks=1):
    """Refuse a --micro-batch that does not split each rank's share of the batch (`batch`
    images over `ranks`) into whole micro-batches; None (the plain step) passes."""
    if micro_batch is None:
        return
    cli.at_least("--micro-batch", micro_batch, 1)
    share = batch // ranks
    if share % micro_batch:
        where = (f"--batch-size {batch}" if ranks == 1 else
                 f"the {share} images of each of the {ranks} ranks (--batch-size {batch})")
        raise UsageError(f"--micro-batch {micro_batch} does not divide {where}: give a "
                         f"divisor of {share}")


def transformations(config):
    """The steps of a view that the run's --augmentations names (None: the default steps, as
    --blur says), checked: a tuple of names from simclr.augment.TRANSFORMATIONS."""
    given = config.get("augmentations")
    if given is None:
        return None
    names = () if given.strip() == "none" else tuple(n.strip() for n in given.split(","))
    unknown = [n for n in names if n not in TRANSFORMATIONS]
    if unknown or len(set(names)) != len(names):
        raise UsageError(f"--augmentations {given}: expected 'none' or a comma list of distinct "
                         f"names from {', '.join(TRANSFORMATIONS)}")
    if config["blur"] and "blur" not in names:
        raise UsageError(f"--blur with --augmentations {given}, which has no blur: add blur to "
                         f"the list, or leave out --blur")
    return names
