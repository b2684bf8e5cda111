"""The data flags shared by `python -m simclr.train` and `python -m simclr.linear_eval`."""
from simclr.data.load import DATASETS, load_dataset


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
    group.add_argument("--limit", type=int, default=None,
                       help="use only the first N training images (smoke runs)")
    group.add_argument("--synthetic-size", type=int, default=2000,
                       help="synthetic: number of training images")


def load_from_arguments(config):
    """Splits for a dict of the flags above (an argparse namespace's vars, or a saved config)."""
    options = {}
    if config["dataset"] == "folder" and config.get("image_size"):
        options["image_size"] = config["image_size"]
    if config["dataset"] == "synthetic":
        options["n"] = config["synthetic_size"]
    splits = load_dataset(config["dataset"], config.get("data_dir"), download=config.get("download", False),
                          val_fraction=config.get("val_fraction"),
                          val_per_class=config.get("val_per_class"), seed=config.get("seed", 0),
                          **options)
    if config.get("limit"):
        limit = config["limit"]
        splits.train = splits.train.subset(range(min(limit, len(splits.train))))
    return splits
