"""One entry point for every data set: load_dataset("cifar10" | "folder" | "synthetic", ...)."""
from dataclasses import replace

from simclr.data.cifar10 import load_cifar10
from simclr.data.dataset import split_validation
from simclr.data.errors import DataError
from simclr.data.folder import load_image_folder
from simclr.data.synthetic import load_synthetic

DATASETS = ("cifar10", "folder", "synthetic")


def load_dataset(name, data_dir=None, *, download=False, val_fraction=None, val_per_class=None,
                 seed=0, **options):
    """Load a data set as Splits(train, test, val).

    name:      "cifar10" (official archive or folder in `data_dir`, default the user cache
               directory), "folder" (an image folder at `data_dir`, see simclr.data.folder) or
               "synthetic" (procedural shapes, no files).
    download:  fetch CIFAR-10 from its official address when it is missing.
    val_fraction, val_per_class: carve a validation split from train (see split_validation);
               `seed` picks it (and the synthetic images).
    options:   passed to the loader: image_size, cache_dir, use_cache, workers for "folder";
               n, n_test, image_size, num_classes for "synthetic".
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (--dataset); expected one of "
                        f"{', '.join(map(repr, DATASETS))}")
    if download and name != "cifar10":
        raise DataError(f"--download (download=True) applies to --dataset cifar10 only; {name!r} "
                        f"has nothing to download")
    if name == "cifar10":
        splits = load_cifar10(data_dir, download=download, **options)
    elif name == "folder":
        if data_dir is None:
            raise DataError("--dataset folder needs --data-dir (data_dir), the folder that holds "
                            "the images")
        splits = load_image_folder(data_dir, **options)
    else:
        if data_dir is not None:
            raise DataError(f"--dataset synthetic is made, not read: it takes no --data-dir "
                            f"(data_dir), got {str(data_dir)!r}")
        splits = load_synthetic(seed=seed, **options)
    if val_fraction is None and val_per_class is None:
        return splits
    train, val = split_validation(splits.train, val_fraction, val_per_class, seed)
    return replace(splits, train=train, val=val)
