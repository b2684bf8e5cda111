"""The data flags that the programs share (simclr.train, linear_eval, finetune, figures,
experiments): the flags themselves, the splits they load, and the held-out split to report on."""
import numpy

from simclr.data.dataset import balanced_subset
from simclr.data.errors import DataError
from simclr.data.load import DATASETS, load_dataset

SYNTHETIC_SIZE = 2000


def add_data_arguments(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, default="cifar10",
                       help="cifar10: the official release in --data-dir; folder: DIR/train/<class>/*; "
                            "synthetic: procedural shapes (offline demos)")
    group.add_argument("--data-dir", default=None,
                       help="cifar10: where cifar-10-python.tar.gz is (default: the user cache); "
                            "folder: the image folder")
    group.add_argument("--download", action="store_true",
                       help="download CIFAR-10 from its official address if it is missing")
    group.add_argument("--val-fraction", type=float, default=None,
                       help="hold out this fraction of each class of train as the evaluation split")
    group.add_argument("--val-per-class", type=int, default=None,
                       help="hold out the last N images of each class of train as the evaluation split")
    group.add_argument("--image-size", type=int, default=None,
                       help="folder: resize every image to this size (needed if sizes differ)")
    group.add_argument("--train-per-class", type=int, default=None, metavar="N",
                       help="use a class-balanced random N images of each class of the training "
                            "split (drawn with --seed; after the held-out split is carved)")
    group.add_argument("--limit", type=int, default=None,
                       help="use only the first N training images (smoke runs)")
    group.add_argument("--synthetic-size", type=int, default=None,
                       help=f"synthetic: number of training images (default {SYNTHETIC_SIZE})")


def check_data_flags(args):
    """Refuse a data flag given for a data set it does not apply to (it would be ignored).
    For the flags as given, not for a saved run's settings."""
    if args.image_size is not None and args.dataset != "folder":
        raise DataError(f"--image-size {args.image_size} applies to --dataset folder only; "
                        f"--dataset {args.dataset} has images of one size (32x32)")
    if args.synthetic_size is not None and args.dataset != "synthetic":
        raise DataError(f"--synthetic-size {args.synthetic_size} applies to --dataset synthetic "
                        f"only, not to --dataset {args.dataset}")


def check_data_values(config):
    """Refuse a data flag's value that no data set can satisfy; load_dataset checks the rest
    (--val-fraction, --val-per-class, --image-size, --data-dir), naming the flag too."""
    for flag, key in (("--limit", "limit"), ("--synthetic-size", "synthetic_size"),
                      ("--train-per-class", "train_per_class")):
        if config.get(key) is not None and config[key] < 1:
            raise DataError(f"{flag} must be at least 1, got {config[key]}")


def load_from_arguments(config):
    """Splits for a dict of the flags above (an argparse namespace's vars, or a saved config)."""
    check_data_values(config)
    options = {}
    if config["dataset"] == "folder" and config.get("image_size") is not None:
        options["image_size"] = config["image_size"]
    if config["dataset"] == "synthetic":
        options["n"] = config.get("synthetic_size") or SYNTHETIC_SIZE
    splits = load_dataset(config["dataset"], config.get("data_dir"), download=config.get("download", False),
                          val_fraction=config.get("val_fraction"),
                          val_per_class=config.get("val_per_class"), seed=config.get("seed", 0),
                          **options)
    if config.get("train_per_class") is not None:
        splits.train = splits.train.subset(train_subset(splits.train, config))
    if config.get("limit") is not None:
        limit = config["limit"]
        splits.train = splits.train.subset(range(min(limit, len(splits.train))))
    return splits


def train_subset(train, config):
    """The indices of --train-per-class's subset of the training split `train`."""
    per_class = config["train_per_class"]
    if train.labels is None:
        raise DataError(f"--train-per-class {per_class} needs labelled images; these have none "
                        f"(they lie directly in the folder)")
    smallest = numpy.bincount(train.labels, minlength=len(train.classes)).min()
    if per_class > smallest:
        raise DataError(f"--train-per-class {per_class} is more than the {smallest} training "
                        f"images of the smallest class: give at most {smallest}")
    return balanced_subset(train.labels, per_class=per_class, seed=config.get("seed", 0))


def labelled_held_out(config, splits, what):
    """(name, split) of the held-out split to report on, refusing data with none or with
    unlabelled images (one line naming the data flags). `what` says what needs them."""
    held_out = splits.held_out()
    where = f"--dataset {config['dataset']}" + \
        (f" --data-dir {config['data_dir']}" if config.get("data_dir") else "")
    if held_out is None:
        raise DataError(f"{where} has no test split: carve one from the training images with "
                        f"--val-fraction or --val-per-class")
    if splits.train.labels is None:
        raise DataError(f"{what} needs labelled images, and {where} has none (its "
                        f"images lie directly in the folder): put them in class folders, "
                        f"DIR/<class>/* or DIR/train/<class>/*")
    return held_out
