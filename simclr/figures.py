"""python -m simclr.figures KIND: pictures of what SimCLR does, as PNG files (simclr/plot/).

    views       one row per image: the image, then random views of SimCLR's augmentation (crop,
                flip, colour distortion, grayscale, blur if asked): the pairs the loss must
                tell apart from every other image's views.
    histograms  the reason colour distortion matters (SimCLR, section 3, figure 6). Random crops
                of one image (first row) have nearly the same R, G and B intensity histograms
                (under each crop): a network could match two views by their colours alone and
                learn nothing more. The same crops with colour distortion (third row) have
                histograms that no longer match (fourth row): the shortcut is gone.
    neighbours  for a few held-out images, their nearest training images by cosine similarity
                of the representation h of --checkpoint's encoder, then, for contrast, by
                cosine similarity of the raw pixels. A green frame is a neighbour of the
                query's class, a red one of another class; each row says how many of its
                neighbours share the query's class.
    embedding   the held-out representations h projected on their first two principal
                components (PCA), coloured by class: classes that form clusters are ones a
                linear classifier on h can separate.
    training    a run's loss, learning rate and k-NN accuracy (where the run measured it)
                against step, from its metrics.jsonl, under its configuration.

The data flags are those of simclr.train and simclr.linear_eval; a checkpoint is loaded as
simclr.linear_eval loads it. A mistake ends in one line that names the flag or the file
(exit status 2).
"""
import argparse
import json
import os

import numpy

from nn import runtime
from simclr import cli, plot
from simclr.augment import SimCLRAugment
from simclr.augment.color import color_jitter
from simclr.augment.crop import random_resized_crop, to_float_nchw
from simclr.cli import UsageError
from simclr.data import (add_data_arguments, check_data_flags, labelled_held_out,
                         load_from_arguments)
from simclr.evaluate import encode
from simclr.model import build_model, check_stem
from simclr.pretraining_settings import transformations
from simclr.training.checkpoint import checkpoint_path, load_checkpoint
from simclr.training.report import read_metrics

PROG = "python -m simclr.figures"
SAME_CLASS, OTHER_CLASS = (20, 170, 60), (225, 30, 30)  # the frames of neighbours
CELL = 96  # the side images are enlarged to, about, in pixels


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    views = kinds.add_parser("views", help="images and random views of SimCLR's augmentation")
    views.add_argument("--images", type=int, default=6, help="images, one row each")
    views.add_argument("--views", type=int, default=5, help="random views of each image")
    views.add_argument("--color-strength", type=float, default=0.5, help="colour jitter strength s")
    views.add_argument("--blur", action=argparse.BooleanOptionalAction, default=False)
    views.add_argument("--augmentations", default=None, metavar="LIST",
                       help="only these steps, as simclr.train's --augmentations "
                            "(e.g. crop,jitter)")
    views.add_argument("--seed", type=int, default=0)
    histograms = kinds.add_parser("histograms", help="crops share a colour histogram; colour "
                                                     "distortion breaks that")
    histograms.add_argument("--index", type=int, default=0, help="the training image to crop")
    histograms.add_argument("--crops", type=int, default=4)
    histograms.add_argument("--color-strength", type=float, default=1.0,
                            help="colour jitter strength s of the distorted crops")
    histograms.add_argument("--seed", type=int, default=0)
    neighbours = kinds.add_parser("neighbours", help="nearest training images of held-out ones")
    neighbours.add_argument("--queries", type=int, default=6, help="held-out images, one row each")
    neighbours.add_argument("--k", type=int, default=5, help="neighbours of each")
    embedding = kinds.add_parser("embedding", help="PCA of the held-out representations")
    embedding.add_argument("--max-points", type=int, default=2000)
    training = kinds.add_parser("training", help="loss, learning rate and k-NN accuracy of a run")
    training.add_argument("--run", required=True, help="the --out folder of a training run")
    for sub in (views, histograms, neighbours, embedding, training):
        sub.add_argument("--out", required=True, help="the PNG file to write")
    for sub in (neighbours, embedding):
        sub.add_argument("--checkpoint", required=True,
                         help="a checkpoint.npz of simclr.train, or its --out folder")
        sub.add_argument("--threads", type=int, default=None, help="CPU threads for the encoder")
    for sub in (views, histograms, neighbours, embedding):
        add_data_arguments(sub)
    args = parser.parse_args(argv)
    if args.kind != "training":
        check_data_flags(args)
    return args


def validate(args):
    """Refuse a flag value no figure can use, naming the flag (one line, exit 2)."""
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out {args.out}: give a file name ending in .png")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {args.out}: the folder {folder} does not exist")
    for flag in ("images", "views", "crops", "queries", "k", "max_points", "threads"):
        if getattr(args, flag, None) is not None:
            cli.at_least("--" + flag.replace("_", "-"), getattr(args, flag), 1)
    for flag in ("seed", "index"):
        if getattr(args, flag, None) is not None:
            cli.at_least("--" + flag, getattr(args, flag), 0)
    if getattr(args, "color_strength", None) is not None:
        cli.non_negative_number("--color-strength", args.color_strength)


def main(argv=None):
    """The program: exit status 0 when done, 2 for a user's mistake (one line)."""
    return cli.run(_main, argv, prog=PROG)


def _main(argv):
    args = parse_args(argv)
    validate(args)
    if getattr(args, "threads", None) is not None:
        runtime.set_num_threads(args.threads)
    runtime.reuse_freed_memory()  # see nn/runtime/memory.py
    image = FIGURES[args.kind](args)
    plot.save_png(image, args.out)
    print(f"{args.kind}: written to {args.out} ({image.width}x{image.height})")
    return 0


# --- helpers -------------------------------------------------------------------------------

def load_splits(args):
    config = {key: value for key, value in vars(args).items() if key != "seed"}
    return load_from_arguments(config)  # the split of linear_eval's default --seed 0


def describe_data(args, splits):
    """The data in a few words, for titles: its kind and size, not the path it was read from
    ("cifar10: 50000 training images, 10000 test images")."""
    held_out = splits.held_out()
    return f"{args.dataset}: {len(splits.train)} training images" + \
        (f", {len(held_out[1])} {held_out[0]} images" if held_out else "")


def load_encoder(path, image_size):
    """The encoder of a checkpoint (or run folder) as simclr.linear_eval loads it, for images
    of `image_size` px; and the run's configuration."""
    path = checkpoint_path(path)
    model_state, _, meta = load_checkpoint(path, flag="--checkpoint")
    model = build_model(meta["config"], image_size)
    check_stem(model, model_state, meta["config"], image_size, path)
    model.load_state_dict(model_state)
    return model.encoder, meta["config"]


def pick_examples(dataset, count):
    """`count` image indices that go round the classes: the first image of each class, then
    the second of each, ... (the first `count` images when unlabelled)."""
    if dataset.labels is None:
        return list(range(min(count, len(dataset))))
    by_class = [numpy.flatnonzero(dataset.labels == k) for k in range(len(dataset.classes))]
    order = [members[i] for i in range(len(dataset)) for members in by_class if i < len(members)]
    return [int(index) for index in order[:count]]


def to_uint8(views):
    """float32 (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3), as stored images are."""
    return (numpy.clip(views, 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(numpy.uint8)


def class_name(dataset, index):
    return "" if dataset.labels is None else dataset.classes[dataset.labels[index]]


# --- the figures ----------------------------------------------------------------------------

def views_figure(args):
    splits = load_splits(args)
    train = splits.train
    chosen = pick_examples(train, args.images)
    images = train.images[chosen]
    steps = transformations(vars(args))
    augment = SimCLRAugment(images.shape[1:3], args.color_strength, args.blur, steps)
    rng = numpy.random.default_rng(args.seed)
    views = [to_uint8(augment(images, rng)) for _ in range(args.views)]
    rows = [[images[i]] + [view[i] for view in views] for i in range(len(chosen))]
    setting = (f"crop and resize, flip, colour jitter of strength s = {args.color_strength:g} "
               f"(p 0.8), grayscale (p 0.2), {'blur (p 0.5)' if args.blur else 'no blur'}"
               if steps is None else "only " + (", ".join(steps) or "no step") +
               (f"; colour strength s = {args.color_strength:g}" if "jitter" in steps else ""))
    title = (f"Random views of SimCLR's augmentation, {describe_data(args, splits)}\n"
             f"{setting}; seed {args.seed}")
    return plot.image_grid(rows, title=title, scale=max(1, CELL // images.shape[1]),
                           row_labels=[class_name(train, i) for i in chosen],
                           col_labels=["image"] + [f"view {v + 1}" for v in range(args.views)])


def histograms_figure(args):
    splits = load_splits(args)
    train = splits.train
    if args.index >= len(train):
        raise UsageError(f"--index {args.index}: there are {len(train)} training images, "
                         f"give at most {len(train) - 1}")
    image = train.images[args.index]
    rng = numpy.random.default_rng(args.seed)
    repeated = to_float_nchw(numpy.repeat(image[None], args.crops, axis=0))
    crops = random_resized_crop(repeated, rng, image.shape[:2])
    distorted = to_uint8(color_jitter(crops, rng, args.color_strength, p=1.0))
    crops = to_uint8(crops)
    scale = max(1, 160 // image.shape[1])
    width = image.shape[1] * scale
    pictures = [image] + list(crops) + list(distorted)
    # one scale for every panel, that of the undistorted ones (a taller bin of a distorted
    # crop, where saturated pixels pile up at 0 or 255, is cut at the top)
    y_max = max(plot.channel_histograms(picture).max() for picture in pictures[:args.crops + 1])
    panels = [plot.histogram_panel(picture, size=(width, 130), y_max=y_max)
              for picture in pictures]
    n = args.crops
    rows = [[image] + list(crops), panels[:n + 1],
            [None] + list(distorted), [None] + panels[n + 1:]]
    title = (f"Crops of one image share their colour histograms; colour distortion breaks that"
             f"\n{describe_data(args, splits)}, training image {args.index} "
             f"({class_name(train, args.index)}); distortion: colour jitter of strength "
             f"s = {args.color_strength:g}, on every crop")
    return plot.image_grid(rows, title=title, scale=scale,
                           row_labels=["crops", "R, G, B\nhistograms", "crops with\ncolour "
                                       "distortion", "R, G, B\nhistograms"],
                           col_labels=["whole image"] + [f"crop {c + 1}" for c in range(n)])


def neighbours_figure(args):
    splits = load_splits(args)
    split_name, test = labelled_held_out(vars(args), splits, "this figure")
    train = splits.train
    if args.k > len(train):
        raise UsageError(f"--k {args.k} is more than the {len(train)} training images")
    encoder, config = load_encoder(args.checkpoint, train.images.shape[1])
    queries = pick_examples(test, args.queries)
    sample = numpy.sort(numpy.random.default_rng(0).choice(len(test), min(SAMPLE, len(test)),
                                                           replace=False))
    blocks = []
    for what, features in (("the encoder's representation h", lambda x: encode(encoder, x)),
                           ("raw pixels", pixel_features)):
        train_unit = unit(features(train.images))
        similarity = unit(features(test.images[queries])) @ train_unit.T  # (queries, train)
        nearest = numpy.argsort(-similarity, axis=1)[:, :args.k]
        rows, borders, labels = [], [], []
        for q, neighbours in zip(queries, nearest):
            same = train.labels[neighbours] == test.labels[q]
            rows.append([test.images[q]] + list(train.images[neighbours]))
            borders.append([None] + [SAME_CLASS if s else OTHER_CLASS for s in same])
            labels.append(f"{test.classes[test.labels[q]]}\n{int(same.sum())}/{args.k} same class")
        share = same_class_share(train_unit, train.labels, unit(features(test.images[sample])),
                                 test.labels[sample], args.k)
        blocks.append(plot.image_grid(
            rows, title=f"by cosine similarity of {what}\nover {len(sample)} random "
                        f"{split_name} queries, {100 * share:.1f}% of the {args.k} nearest "
                        f"share the query's class",
            row_labels=labels, borders=borders, scale=max(1, CELL // train.images.shape[1]),
            col_labels=["query"] + [f"{n + 1}" for n in range(args.k)]))
    title = (f"Nearest of {len(train)} training images to {split_name} images "
             f"({describe_data(args, splits)})\n"
             f"{describe_run(config)}; green frame: the query's class, red: another class")
    return plot.combine(blocks, title=title, columns=2)


SAMPLE = 1000  # random held-out queries behind the share of same-class neighbours


def same_class_share(train_unit, train_labels, query_unit, query_labels, k, chunk=250):
    """The fraction of the k nearest training images (cosine) of each query that share its
    class, over all queries: how well the few rows drawn stand for the whole split."""
    hits = 0
    for start in range(0, len(query_unit), chunk):
        similarity = query_unit[start:start + chunk] @ train_unit.T
        nearest = numpy.argpartition(-similarity, k - 1, axis=1)[:, :k]
        hits += int((train_labels[nearest] == query_labels[start:start + chunk, None]).sum())
    return hits / (len(query_unit) * k)


def pixel_features(images):
    return images.reshape(len(images), -1).astype(numpy.float32) / 255


def unit(features):
    features = numpy.asarray(features, dtype=numpy.float32)
    return features / numpy.maximum(numpy.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def embedding_figure(args):
    splits = load_splits(args)
    split_name, test = labelled_held_out(vars(args), splits, "this figure")
    if len(test) > args.max_points:
        test = test.subset(numpy.sort(numpy.random.default_rng(0).choice(
            len(test), args.max_points, replace=False)))
    encoder, config = load_encoder(args.checkpoint, test.images.shape[1])
    features = numpy.asarray(encode(encoder, test.images), dtype=numpy.float64)
    centred = features - features.mean(axis=0)
    _, singular, directions = numpy.linalg.svd(centred, full_matrices=False)
    points = centred @ directions[:2].T
    share = singular ** 2 / max(float((singular ** 2).sum()), 1e-300)
    return plot.scatter(points, test.labels, test.classes,
                        title=f"PCA of the representation h of {len(test)} {split_name} images "
                              f"({describe_data(args, splits)})\n{describe_run(config)}",
                        x_label=f"PCA component 1 ({share[0]:.0%} of the variance)",
                        y_label=f"PCA component 2 ({share[1]:.0%} of the variance)")


def describe_run(config):
    """A run's configuration in a few words, for titles."""
    return ", ".join(f"{name} {config.get(key)}" for name, key in (
        ("arch", "arch"), ("width", "width"), ("batch", "batch_size"), ("epochs", "epochs")))


def training_figure(args):
    metrics, config_path = (os.path.join(args.run, name) for name in ("metrics.jsonl",
                                                                       "config.json"))
    if not os.path.isfile(metrics):
        raise UsageError(f"--run {args.run} holds no metrics.jsonl: expected the --out folder "
                         f"of a training run")
    records = read_metrics(metrics)
    try:
        with open(config_path) as file:
            config = json.load(file)
    except (OSError, ValueError):
        config = {}
    steps = [(r["step"], r) for r in records if "step" in r]
    options = dict(x_label="step", size=(760, 300), markers=False)
    panels = [plot.line_chart(plot.loss_series(records), title="NT-Xent loss", y_label="loss",
                              **options),
              plot.line_chart([("lr", [s for s, r in steps if "lr" in r],
                                [r["lr"] for _, r in steps if "lr" in r])],
                              title="learning rate", y_label="learning rate", **options)]
    knn = [(s, r["knn_accuracy"]) for s, r in steps if "knn_accuracy" in r]
    ends = [s for s, _ in steps[:1] + steps[-1:]]  # its step axis as the other two's
    panels.append(plot.line_chart([("k-NN", *zip(*knn))] if knn else [("k-NN", [], [])],
                                  title="k-NN top-1 accuracy" if knn else "no k-NN records",
                                  y_label="top-1", x_cover=ends, **dict(options, markers=True)))
    name = os.path.basename(os.path.normpath(args.run))  # the run's name, not where it lies
    return plot.combine(panels, title=f"Training of {name}\n{describe_run(config)}")


FIGURES = {"views": views_figure, "histograms": histograms_figure,
           "neighbours": neighbours_figure, "embedding": embedding_figure,
           "training": training_figure}


if __name__ == "__main__":
    cli.exit_program(main())
