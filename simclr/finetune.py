"""python -m simclr.finetune: semi-supervised fine-tuning with few labels, and its baseline.

    python -m simclr.finetune --checkpoint RUN --label-fraction 0.01 --val-per-class 1000 --out DIR
    python -m simclr.finetune --checkpoint RUN --from-scratch --label-fraction 0.01 ... --out DIR2

A class-balanced random subset of the TRAINING split's labels (--label-fraction, drawn with
--label-seed), or the images listed in --label-indices (a text file of indices into the training
split, one per line, as the official code ships its ImageNet 1% and 10% lists), is all the
labelled data. The pre-trained encoder of --checkpoint (with the head's first layer, with
--from-head-layer 1) and a new linear classifier are trained on it end to end; --from-scratch
trains the same network from random weights on the same images with the same recipe: the
supervised baseline that shows what pre-training is worth. The result is the top-1 and top-5
accuracy on the held-out split (--val-fraction / --val-per-class, else the test split).

The recipe (SimCLR paper, appendix B.5; the official --train_mode=finetune; docs/SIMCLR.md):
Nesterov momentum SGD (momentum 0.9) at lr 0.05 x B/256 (--lr is the 0.05), no warm-up, no
weight decay, cosine decay to 0 evaluated at every step (the official code's schedule);
augmentation: random resized crop and flip only; 60 epochs for 1% of the labels or fewer, 30
otherwise; batch 256, or a smaller power of two that gives an epoch at least MIN_STEPS steps
on a small subset (the official 1% of ImageNet, 12,811 images in batches of 4,096, takes 3
steps an epoch; 1% of CIFAR-10's 40,000 training images, 400, would take one step of 256 and
leave 144 unseen: here it takes six of 64). The last, incomplete batch of an epoch is dropped,
as in pre-training. Batch norm trains with batch statistics and updates its running averages;
evaluation uses the running averages. --micro-batch M takes each batch M images at a time, by
plain gradient accumulation: exact for cross-entropy, a mean over images (batch norm then
normalises each micro-batch by its own statistics). The network: simclr/model.py (FineTuneNet);
the step and its evaluation: simclr/finetuning.py.

The run's folder (--out) holds config.json, labels.txt (the labelled indices: give it back to
--label-indices to train on the same images), metrics.jsonl, checkpoint.npz (after every epoch,
and on Ctrl-C or SIGTERM, which let the step in progress finish; --resume DIR continues bit for
bit), loss.png and, at the end, finetune.json.
"""
import json
import os
import sys
import time

import numpy

from simclr import cli
from simclr.atomic_files import atomic_write
from simclr.cli import UsageError, flag_name, given_flags, refuse_changed
from simclr.data import DataError, add_data_arguments, balanced_subset, check_data_flags
from simclr.data import labelled_held_out, load_from_arguments
from simclr.finetuning import FineTuning, finetune
from simclr.model import ARCHITECTURES, STAGES, build_model, check_stem
from simclr.training.checkpoint import TrainingDiverged, checkpoint_path, load_checkpoint
from simclr.training.interrupts import Interrupted
from simclr.training.process import set_up_process

PROG = "python -m simclr.finetune"
PROGRAM = "simclr.finetune"  # config["program"]: what tells a fine-tuning checkpoint apart
BATCH_SIZE = 256
MIN_STEPS = 4  # the default batch gives an epoch at least this many steps
BASE_LR = 0.05
MODEL_KEYS = ("arch", "width", "cifar_stem", "head", "proj_dim")  # the architecture's settings
# what --resume may be given anew; everything else comes from the checkpoint
CHANGEABLE_ON_RESUME = {"backend", "threads", "out", "max_steps", "eval_every", "data_dir",
                        "download", "resume", "micro_batch"}
MICRO_BATCH_HELP = (
    "take each batch M images at a time, for big batches on small memory: plain gradient "
    "accumulation (each micro-batch's forward and backward of its share M/B of the batch's "
    "mean cross-entropy, the gradients added up, one update), exact for cross-entropy, a mean "
    "over images. Batch norm normalises each micro-batch by its own statistics (a batch of M, "
    "not of --batch-size, for its noise) and updates its running statistics once per "
    "micro-batch. Default: the whole batch at once. May be changed on --resume")


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="the pre-trained run: a checkpoint.npz of "
                                             "simclr.train, or its --out folder")
    parser.add_argument("--from-scratch", action="store_true",
                        help="the supervised baseline: the same network, randomly initialised "
                             "(the architecture of --checkpoint, else --arch and --width)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None,
                        help="with --from-scratch and no --checkpoint (default resnet50)")
    parser.add_argument("--width", type=float, default=None,
                        help="with --from-scratch and no --checkpoint (default 1)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--label-fraction", type=float, default=None,
                        help="the fraction in (0, 1] of the training split that is labelled, "
                             "class-balanced (1: every image)")
    labels.add_argument("--label-indices", dest="label_indices_file", metavar="FILE",
                        help="a text file of indices into the training split, one per line: "
                             "the labelled images")
    parser.add_argument("--label-seed", type=int, default=0,
                        help="draws the --label-fraction subset (default 0)")
    parser.add_argument("--freeze-until", choices=STAGES, default=None,
                        help="freeze this stage of the encoder and all below it (no gradient, "
                             "batch norm in evaluation mode); default: train everything")
    parser.add_argument("--from-head-layer", type=int, choices=[0, 1], default=0,
                        help="1: keep the nonlinear head's first layer (Linear, BN, ReLU) under "
                             "the classifier (SimCLRv2); 0 (default): the classifier on h")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, default=None,
                        help="default 60 for 1%% of the labels or fewer, else 30")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default {BATCH_SIZE}, or the largest power of two that makes "
                             f"{MIN_STEPS} steps of the labelled subset")
    parser.add_argument("--micro-batch", type=int, default=None, metavar="M",
                        help=MICRO_BATCH_HELP)
    parser.add_argument("--lr", type=float, default=BASE_LR,
                        help=f"base learning rate, times B/256 (default {BASE_LR})")
    parser.add_argument("--seed", type=int, default=0,
                        help="the classifier's (and --from-scratch's) weights, the order and "
                             "augmentation of the images, --val-fraction's split")
    parser.add_argument("--eval-every", type=int, default=0, metavar="N",
                        help="top-1/top-5 on the held-out split every N epochs too (default 0: "
                             "at the end only)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop (with a checkpoint) after this many steps in all; the "
                             "schedule still spans --epochs (for smoke runs and tests)")
    parser.add_argument("--out", default=None, help="the folder of the fine-tuning run")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the fine-tuning run saved in DIR (in DIR, or in --out); "
                             "only --max-steps, --eval-every, --micro-batch, --backend, --threads, "
                             "--data-dir, --download may be given anew")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: $OMP_NUM_THREADS, else every core)")
    args = parser.parse_args(argv)
    if not args.resume:
        check_data_flags(args)
    return args


def validate(args):
    """Refuse a flag value that no run can use, naming the flag (one line, exit 2)."""
    for flag, value, minimum in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 2),
                                 ("--max-steps", args.max_steps, 1), ("--seed", args.seed, 0),
                                 ("--label-seed", args.label_seed, 0),
                                 ("--eval-every", args.eval_every, 0),
                                 ("--micro-batch", args.micro_batch, 1)):
        if value is not None:
            cli.at_least(flag, value, minimum)
    cli.positive_number("--lr", args.lr)
    if args.resume:
        return
    if args.out is None:
        raise UsageError("--out DIR is needed: the folder for the fine-tuning run")
    if not args.checkpoint and not args.from_scratch:
        raise UsageError("give --checkpoint RUN (fine-tune a pre-trained encoder) or "
                         "--from-scratch (the supervised baseline)")
    for flag, value in (("--arch", args.arch), ("--width", args.width)):
        if value is not None and (args.checkpoint or not args.from_scratch):
            raise UsageError(f"{flag} {value}: the architecture comes from --checkpoint; "
                             f"{flag} is for --from-scratch without a checkpoint")
    if args.width is not None:
        cli.positive_number("--width", args.width)
    fraction = args.label_fraction
    if fraction is None and args.label_indices_file is None:
        raise UsageError("give --label-fraction F (a class-balanced subset of the training "
                         "split) or --label-indices FILE (the labelled images)")
    if fraction is not None and not 0 < fraction <= 1:
        raise UsageError(f"--label-fraction must lie in (0, 1], got {fraction}")


def read_label_indices(path, count):
    """The sorted indices of a --label-indices file (one integer in [0, count) per line, blank
    lines ignored, no index twice); a UsageError naming the flag, the file and the line."""
    flag = f"--label-indices {path}"
    if not os.path.isfile(path):
        raise UsageError(f"{flag}: " + ("a folder, not a file" if os.path.isdir(path) else
                                        "no such file"))
    seen = {}
    with open(path, errors="replace") as file:
        for number, line in enumerate(file, 1):
            text = line.strip()
            if not text:
                continue
            try:
                index = int(text)
            except ValueError:
                raise UsageError(f"{flag}: line {number} is {text[:40]!r}, not an image index "
                                 f"(one integer per line)") from None
            if not 0 <= index < count:
                raise UsageError(f"{flag}: index {index} (line {number}) is outside the training "
                                 f"split's 0..{count - 1} (the data flags decide the split)")
            if index in seen:
                raise UsageError(f"{flag}: index {index} appears twice (lines {seen[index]} "
                                 f"and {number})")
            seen[index] = number
    if not seen:
        raise UsageError(f"{flag}: the file lists no image")
    return numpy.sort(numpy.fromiter(seen, dtype=numpy.int64))


def choose_labels(config, train):
    """The labelled images' indices into the training split `train`, sorted."""
    count, classes = len(train), len(train.classes)
    fraction, path = config["label_fraction"], config["label_indices_file"]
    if path is not None:
        indices, flag = read_label_indices(path, count), f"--label-indices {path}"
    elif fraction == 1:
        indices, flag = numpy.arange(count), "--label-fraction 1"
    else:
        flag = f"--label-fraction {fraction}"
        if round(fraction * count) < classes:
            raise UsageError(f"{flag}: {fraction} of the {count} training images is fewer "
                             f"than one per class ({classes} classes); give a larger fraction")
        try:
            indices = balanced_subset(train.labels, fraction=fraction, seed=config["label_seed"])
        except DataError as error:
            raise UsageError(f"{flag}: {error}") from None
    if len(indices) < classes:
        raise UsageError(f"{flag}: {len(indices)} labelled images are fewer than the {classes} "
                         f"classes: the classifier would never see some of them")
    return indices


def new_run(args):
    """(config, the pre-trained model state and where it came from, or None) of a new run,
    before its labels are chosen (label_settings)."""
    config = {key: value for key, value in vars(args).items()
              if key not in ("resume", "threads", "arch", "width")}
    config["program"], config["pretrain_step"] = PROGRAM, None
    pretrained = None
    if args.checkpoint:
        path = checkpoint_path(args.checkpoint)
        model_state, _, meta = load_checkpoint(path, flag="--checkpoint")   # whole and finite
        if meta["config"].get("program") == PROGRAM:
            raise UsageError(f"--checkpoint {args.checkpoint} is a fine-tuning run, not a "
                             f"pre-trained one; continue it with --resume {args.checkpoint}")
        config.update({key: meta["config"].get(key) for key in MODEL_KEYS})
        config["pretrain_step"] = meta["step"]
        if not args.from_scratch:
            pretrained = (model_state, meta["config"], path)
    else:
        config.update(arch=args.arch or "resnet50", width=args.width or 1.0, cifar_stem=None,
                      head="nonlinear", proj_dim=128)
    if config["from_head_layer"] == 1 and config["head"] != "nonlinear":
        raise UsageError(f"--from-head-layer 1: the checkpoint's head is {config['head']!r}, "
                         f"which has no hidden layer (only the nonlinear head has one); "
                         f"fine-tune from h with --from-head-layer 0")
    return config, pretrained


def default_batch(labelled):
    """256, or the largest power of two (at least 2) that gives MIN_STEPS batches of
    `labelled` images, when that is smaller."""
    batch = BATCH_SIZE
    while batch > 2 and batch * MIN_STEPS > labelled:
        batch //= 2
    return min(batch, labelled)


def label_settings(config, train):
    """Choose the labelled images (choose_labels) and the settings that follow from their
    number: the default epochs (60 for 1% or fewer, else 30) and batch size (default_batch)."""
    indices = choose_labels(config, train)
    config["label_indices"], config["labels"] = indices.tolist(), len(indices)
    config["train_images"] = len(train)
    fraction = config["label_fraction"] or len(indices) / len(train)   # as asked, else as given
    config["epochs"] = config["epochs"] or (60 if fraction <= 0.01 else 30)
    config["batch_size"] = config["batch_size"] or default_batch(len(indices))
    if config["batch_size"] > len(indices):
        raise UsageError(f"--batch-size {config['batch_size']} is more than the {len(indices)} "
                         f"labelled images: give at most {len(indices)}")


def resumed_run(args, given):
    """(config, (model state, optimiser state, meta, source folder)) of --resume DIR: the saved
    settings, with the few that CHANGEABLE_ON_RESUME allows given anew."""
    path = checkpoint_path(args.resume)
    model_state, optimizer_state, meta = load_checkpoint(path, flag="--resume")
    config = dict(meta["config"])
    if config.get("program") != PROGRAM:
        raise UsageError(f"--resume {args.resume} holds a pre-training run (simclr.train), not "
                         f"a fine-tuning run; fine-tune it with --checkpoint {args.resume}")
    values = vars(args)
    given = {"label_indices_file" if key == "label_indices" else key for key in given}
    refuse_changed(args.resume, values, config, given - CHANGEABLE_ON_RESUME, flag_of)
    if args.max_steps is not None and args.max_steps < meta["step"]:
        raise UsageError(f"--max-steps {args.max_steps}: the run in {args.resume} is at step "
                         f"{meta['step']} already; give at least --max-steps {meta['step']}")
    source = os.path.dirname(os.path.abspath(path))
    config["out"] = args.out if args.out is not None else source
    config["max_steps"], config["backend"] = args.max_steps, args.backend
    config.setdefault("micro_batch", None)  # saved before --micro-batch existed
    for key in ("eval_every", "data_dir", "download", "micro_batch"):
        if key in given:
            config[key] = values[key]
    return config, (model_state, optimizer_state, meta, source)


def flag_of(key):
    """The flag that sets a config key."""
    return "--label-indices" if key == "label_indices_file" else flag_name(key)


def main(argv=None):
    """The program: exit status 0 when done, 2 for a user's mistake (one line, see
    simclr/cli.py), 130 after Ctrl-C (143 after SIGTERM), 1 when training diverged."""
    return cli.run(_main, argv, prog=PROG)


def _main(argv, stream=sys.stderr):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    validate(args)
    set_up_process(args.threads)  # --threads, SIGTERM as Ctrl-C (as simclr.train)
    xp = cli.require_backend(args.backend)
    pretrained = resumed = None
    if args.resume:
        config, resumed = resumed_run(args, given_flags(argv))
    else:
        config, pretrained = new_run(args)
    splits = load_from_arguments(config)
    split_name, held_out = labelled_held_out(config, splits, "fine-tuning")
    if resumed is None:
        label_settings(config, splits.train)
    elif config["train_images"] != len(splits.train):
        raise UsageError(f"--resume {args.resume}: the data holds {len(splits.train)} training "
                         f"images, the run was started on {config['train_images']}: its label "
                         f"indices would name other images; give the data it was started with")
    image_size = splits.train.images.shape[1]
    state = None
    if pretrained is not None:
        state, meta_config, path = pretrained
        check_stem(build_model(config, image_size), state, meta_config, image_size, path)
    start = time.perf_counter()
    run = FineTuning(config, xp, splits, state, resumed)
    try:
        evaluation = finetune(run, stream)
    except Interrupted as interrupted:
        return 128 + interrupted.signum
    except TrainingDiverged as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    what = "from scratch (supervised baseline)" if config["from_scratch"] else \
        "fine-tuned pre-trained encoder"
    result = {"what": what, "checkpoint": config["checkpoint"], "dataset": config["dataset"],
              "arch": config["arch"], "width": config["width"],
              "pretrain_step": config["pretrain_step"],
              "label_fraction": config["label_fraction"],
              "label_indices_file": config["label_indices_file"],
              "label_seed": config["label_seed"], "labels": config["labels"],
              "fraction": config["labels"] / config["train_images"],
              "train_images": config["train_images"], "split": split_name,
              "test_images": len(held_out), "freeze_until": config["freeze_until"],
              "from_head_layer": config["from_head_layer"], "epochs": config["epochs"],
              "batch_size": config["batch_size"], "micro_batch": config["micro_batch"],
              "base_lr": config["lr"], "lr": run.lr, "steps": run.step,
              "total_steps": run.total_steps, "top1": evaluation["top1"],
              "top5": evaluation["top5"], "seconds": time.perf_counter() - start}
    output = os.path.join(config["out"], "finetune.json")
    with atomic_write(output, "w") as file:  # whole or not at all
        json.dump(result, file, indent=2)
    print(f"{what}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} on {split_name} "
          f"({len(held_out)} images), {config['labels']} labels; written to {output}")
    return 0


if __name__ == "__main__":
    cli.exit_program(main())
