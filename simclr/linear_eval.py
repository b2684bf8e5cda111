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
import sys
import time

import numpy

from autograd.backend import require_cupy, to_numpy
from autograd.memory import reuse_freed_memory
from simclr import cli
from simclr.checkpoint import load_checkpoint
from simclr.data import add_data_arguments, load_from_arguments
from simclr.evaluate import encode, knn_accuracy, linear_probe
from simclr.train import build_model


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
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="default: 0.1 * batch size / 256")
    parser.add_argument("--knn-k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None,
                        help="JSON file for the results (default: linear_eval.json beside the checkpoint)")
    return parser.parse_args(argv)


def main(argv=None):
    """The program: exit status 0 when done, 2 for a user's mistake (one line, see
    simclr/cli.py)."""
    return cli.run(_main, argv, prog="python -m simclr.linear_eval")


def _main(argv):
    args = parse_args(argv)
    reuse_freed_memory()  # see autograd/memory.py
    xp = numpy if args.backend == "numpy" else require_cupy()
    data_config = dict(vars(args))
    meta_config = None
    if args.checkpoint:
        path = args.checkpoint
        if os.path.isdir(path):
            path = os.path.join(path, "checkpoint.npz")
        model_state, _, meta = load_checkpoint(path)
        meta_config = meta["config"]
    elif args.random_init:
        raise SystemExit("--random-init needs --checkpoint, whose architecture it copies")
    splits = load_from_arguments(data_config)
    held_out = splits.held_out()
    if held_out is None:
        raise SystemExit("the data set has no test split: carve one with --val-fraction or --val-per-class")
    if splits.train.labels is None:
        raise SystemExit("linear evaluation needs labelled training images")
    split_name, test = held_out

    start = time.perf_counter()
    if args.raw_pixels:
        train_features = xp.asarray(splits.train.images.reshape(len(splits.train), -1), dtype=xp.float32) / 255
        test_features = xp.asarray(test.images.reshape(len(test), -1), dtype=xp.float32) / 255
        what = "raw pixels"
    else:
        model = build_model(meta_config, splits.train.images.shape[1])
        if not args.random_init:
            model.load_state_dict(model_state)
        model.to(device="cpu" if xp is numpy else "cuda")
        before = {name: value.copy() for name, value in model.encoder.state_dict().items()}
        train_features = encode(model.encoder, splits.train.images)
        test_features = encode(model.encoder, test.images)
        changed = [name for name, value in model.encoder.state_dict().items()
                   if not numpy.array_equal(value, before[name])]
        if changed:
            raise RuntimeError(f"evaluation changed the frozen encoder's {changed}: a bug")
        what = "random-init encoder" if args.random_init else "pre-trained encoder"
    feature_seconds = time.perf_counter() - start

    num_classes = len(splits.train.classes)
    knn = knn_accuracy(train_features, splits.train.labels, test_features, test.labels,
                       k=args.knn_k, num_classes=num_classes)
    train_accuracy, test_accuracy = linear_probe(
        train_features, splits.train.labels, test_features, test.labels, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, num_classes=num_classes)
    result = {"what": what, "checkpoint": args.checkpoint, "dataset": args.dataset,
              "split": split_name, "train_images": len(splits.train), "test_images": len(test),
              "feature_dim": int(train_features.shape[1]), "knn_k": args.knn_k,
              "knn_accuracy": knn, "linear_train_accuracy": train_accuracy,
              "linear_accuracy": test_accuracy, "linear_epochs": args.epochs,
              "feature_seconds": feature_seconds, "seconds": time.perf_counter() - start}
    if meta_config is not None:
        result["pretrain_step"] = meta["step"]
        result["arch"] = meta_config["arch"]
        result["width"] = meta_config["width"]
    output = args.output
    if output is None:
        folder = os.path.dirname(os.path.abspath(path)) if args.checkpoint else "."
        output = os.path.join(folder, "linear_eval_random_init.json" if args.random_init
                              else "linear_eval.json")
    with open(output, "w") as file:
        json.dump(result, file, indent=2)
    print(f"{what}: linear top-1 {test_accuracy:.4f} (train {train_accuracy:.4f}), "
          f"k-NN top-1 {knn:.4f} on {split_name} ({len(test)} images); written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
