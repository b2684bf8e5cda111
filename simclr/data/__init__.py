"""Data sets as uint8 image arrays: CIFAR-10 (official release), image folders, synthetic shapes.

Every loader returns Splits(train, test, val) of ImageDataset(images (N, H, W, 3) uint8,
labels (N,) int64 or None, classes). `load_dataset(name, ...)` picks the loader by name.
"""
from simclr.data.cache import default_cache_dir
from simclr.data.cifar10 import load_cifar10
from simclr.data.dataset import ImageDataset, Splits, balanced_subset, split_validation
from simclr.data.errors import DataError, DataNotFound
from simclr.data.fetch import ChecksumError, DownloadError, download
from simclr.data.folder import decode_image, load_image_folder
from simclr.data.load import DATASETS, load_dataset
from simclr.data.synthetic import load_synthetic, synthetic

__all__ = [
    "ImageDataset", "Splits", "balanced_subset", "split_validation", "load_dataset", "DATASETS",
    "load_cifar10", "load_image_folder", "decode_image", "synthetic", "load_synthetic",
    "download", "DownloadError", "ChecksumError", "DataError", "DataNotFound", "default_cache_dir",
]
from simclr.data.arguments import (add_data_arguments, check_data_flags,  # noqa: E402
                                   labelled_held_out, load_from_arguments)
