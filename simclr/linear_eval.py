"""python -m simclr.linear_eval: how good is a pre-trained representation?

The encoder of --checkpoint is frozen: the representations h of every image are computed once,
under no_grad() and with batch norm in evaluation mode. Then, on h:
  - linear evaluation: a multinomial logistic regression trained with our own SGD;
  - k-NN: a cosine-similarity k-nearest-neighbour vote (k = 200).
Both report top-1 accuracy on the held-out split (the data set's test split, or the validation
split carved with --val-fraction / --val-per-class). Baselines: --random-init evaluates an
untrained encoder of the same architecture; --raw-pixels fits the classifiers on the pixels.
"""
import json
import os
import time

import numpy

from nn import runtime
from simclr import cli
from simclr.atomic_files import atomic_write
from simclr.cli import UsageError
from simclr.data import (add_data_arguments, check_data_flags, labelled_held_out,
                         load_from_arguments)
from simclr.evaluate import encode, knn_accuracy, linear_probe
from simclr.model import build_model, check_stem
from simclr.training.checkpoint import checkpoint_path, load_checkpoint

BATCH_SIZE = 256
KNN_K = 200


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog="python -m simclr.linear_eval", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint.npz of simclr.train, or its --out folder")
    source.add_argument("--raw-pixels", action="store_true", help="baseline: classifiers on raw pixels")
    parser.add_argument("--random-init", action="store_true",
                        help="baseline: the checkpoint's architecture with untrained weights")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the linear classifier")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"batch of the linear classifier (default {BATCH_SIZE}, or the whole "
                             f"training set when it is smaller)")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.1 * batch size / 256")
    parser.add_argument("--knn-k", type=int, default=None,
                        help=f"neighbours of the k-NN vote (default {KNN_K}, or the whole training "
                             f"set when it is smaller)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None,
                        help="JSON file for the results (default: linear_eval.json beside the checkpoint)")
    args = parser.parse_args(argv)
    check_data_flags(args)
    return args


def validate(args):
    """Refuse a flag value that no evaluation can use, naming the flag (one line, exit 2)."""
    cli.at_least("--epochs", args.epochs, 1)
    for flag, value in (("--batch-size", args.batch_size), ("--knn-k", args.knn_k)):
        if value is not None:
            cli.at_least(flag, value, 1)
    if args.lr is not None:
        cli.positive_number("--lr", args.lr)
    cli.at_least("--seed", args.seed, 0)
    if args.random_init and not args.checkpoint:
        raise UsageError("--random-init needs --checkpoint, whose architecture it copies")
    if args.output is not None:
        folder = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output):
            raise UsageError(f"--output {args.output} is a folder; give a file name, such as "
                             f"{os.path.join(args.output, 'linear_eval.json')}")
        if not os.path.isdir(folder):
            raise UsageError(f"--output {args.output}: the folder {folder} does not exist")


def check_fits_data(args, train):
    """Refuse a --batch-size or --knn-k larger than the training set."""
    for flag, value in (("--batch-size", args.batch_size), ("--knn-k", args.knn_k)):
        if value is not None and value > len(train):
            raise UsageError(f"{flag} {value} is more than the {len(train)} training images: "
                             f"give at most {len(train)}")


def main(argv=None):
    """The program: exit status 0 when done, 2 for a user's mistake (one line, see
    simclr/cli.py)."""
    return cli.run(_main, argv, prog="python -m simclr.linear_eval")


def _main(argv):
    args = parse_args(argv)
    validate(args)
    runtime.reuse_freed_memory()  # see nn/runtime/memory.py
    runtime.use_threaded_gradients()  # the probe's backward sums its gradients on every core
    xp = cli.require_backend(args.backend)
    data_config = dict(vars(args))
    checkpoint = None
    if args.checkpoint:
        checkpoint = load_checkpoint(checkpoint_path(args.checkpoint), flag="--checkpoint")
    splits = load_from_arguments(data_config)
    split_name, test = labelled_held_out(data_config, splits, "linear evaluation")
    check_fits_data(args, splits.train)
    start = time.perf_counter()
    what, train_features, test_features = features(args, xp, checkpoint, splits.train, test)
    feature_seconds = time.perf_counter() - start
    num_classes = len(splits.train.classes)
    knn_k = args.knn_k or min(KNN_K, len(splits.train))
    knn = knn_accuracy(train_features, splits.train.labels, test_features, test.labels,
                       k=knn_k, num_classes=num_classes)
    train_accuracy, test_accuracy = linear_probe(
        train_features, splits.train.labels, test_features, test.labels, epochs=args.epochs,
        batch_size=args.batch_size or BATCH_SIZE, lr=args.lr, seed=args.seed,
        num_classes=num_classes)
    result = {"what": what, "checkpoint": args.checkpoint, "dataset": args.dataset,
              "split": split_name, "train_images": len(splits.train), "test_images": len(test),
              "feature_dim": int(train_features.shape[1]), "knn_k": knn_k,
              "knn_accuracy": knn, "linear_train_accuracy": train_accuracy,
              "linear_accuracy": test_accuracy, "linear_epochs": args.epochs,
              "feature_seconds": feature_seconds, "seconds": time.perf_counter() - start}
    if checkpoint is not None:
        meta = checkpoint[2]
        result.update(pretrain_step=meta["step"], arch=meta["config"]["arch"],
                      width=meta["config"]["width"])
    output = write_result(args, result)
    print(f"{what}: linear top-1 {test_accuracy:.4f} (train {train_accuracy:.4f}), "
          f"k-NN top-1 {knn:.4f} on {split_name} ({len(test)} images); written to {output}")
    return 0


def features(args, xp, checkpoint, train, test):
    """(what was evaluated, the training images' features, the held-out images'): the raw
    pixels in [0, 1] (--raw-pixels), or the representations h of the frozen encoder of
    `checkpoint` (model state, optimiser state, meta), with untrained weights for
    --random-init."""
    if args.raw_pixels:
        return ("raw pixels",
                xp.asarray(train.images.reshape(len(train), -1), dtype=xp.float32) / 255,
                xp.asarray(test.images.reshape(len(test), -1), dtype=xp.float32) / 255)
    model_state, _, meta = checkpoint
    image_size = train.images.shape[1]
    model = build_model(meta["config"], image_size)
    if not args.random_init:
        check_stem(model, model_state, meta["config"], image_size,
                   checkpoint_path(args.checkpoint))
        model.load_state_dict(model_state)
    model.to(device="cpu" if xp is numpy else "cuda")
    before = {name: value.copy() for name, value in model.encoder.state_dict().items()}
    train_features = encode(model.encoder, train.images)
    test_features = encode(model.encoder, test.images)
    changed = [name for name, value in model.encoder.state_dict().items()
               if not numpy.array_equal(value, before[name])]
    if changed:
        raise RuntimeError(f"evaluation changed the frozen encoder's {changed}: a bug")
    what = "random-init encoder" if args.random_init else "pre-trained encoder"
    return what, train_features, test_features


def write_result(args, result):
    """Write the result's JSON, whole or not at all, to --output (default: linear_eval.json,
    or linear_eval_random_init.json, beside the checkpoint); returns its path."""
    output = args.output
    if output is None:
        folder = os.path.dirname(os.path.abspath(checkpoint_path(args.checkpoint))) \
            if args.checkpoint else "."
        output = os.path.join(folder, "linear_eval_random_init.json" if args.random_init
                              else "linear_eval.json")
    with atomic_write(output, "w") as file:
        json.dump(result, file, indent=2)
    return output


if __name__ == "__main__":
    cli.exit_program(main())
