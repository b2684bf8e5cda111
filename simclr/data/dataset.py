"""The one shape every data set takes: uint8 images (N, H, W, 3), int64 labels, class names.

Images stay uint8 and channels-last (HWC, as files store them) until augmentation turns a
batch into float (N, 3, H, W); a 50,000-image CIFAR-10 is then 150 MB instead of 600 MB.
"""
from dataclasses import dataclass

import numpy

from simclr.data.errors import DataError


@dataclass
class ImageDataset:
    """Decoded images with optional labels.

    images:  uint8 (N, H, W, 3), RGB, channels last.
    labels:  int64 (N,) with values in [0, len(classes)), or None for an unlabelled set
             (pre-training only needs images).
    classes: class names; classes[labels[i]] names image i. Empty when unlabelled.
    """
    images: numpy.ndarray
    labels: numpy.ndarray | None
    classes: list

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not isinstance(images, numpy.ndarray) or images.dtype != numpy.uint8 \
                or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be a uint8 array of shape (N, H, W, 3); got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}")
        self.classes = [str(name) for name in self.classes]
        if labels is None:
            return
        if not isinstance(labels, numpy.ndarray) or labels.dtype != numpy.int64 \
                or labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must be an int64 array of shape ({len(images)},) or None; got "
                f"{type(labels).__name__} {getattr(labels, 'dtype', '')} {getattr(labels, 'shape', '')}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}) for classes {self.classes}; "
                f"got values from {labels.min()} to {labels.max()}")

    def __len__(self):
        return len(self.images)

    def subset(self, indices):
        """The images (and labels) at `indices`, in that order, as a new ImageDataset."""
        indices = numpy.asarray(indices, dtype=numpy.int64)
        labels = None if self.labels is None else self.labels[indices]
        return ImageDataset(self.images[indices], labels, list(self.classes))

    def __repr__(self):
        labels = "unlabelled" if self.labels is None else f"{len(self.classes)} classes"
        return f"ImageDataset({len(self)} images of {self.images.shape[1]}x{self.images.shape[2]}, {labels})"


@dataclass
class Splits:
    """A data set's splits. `test` is the data set's own test split (CIFAR-10's test_batch, a
    folder's test/), `val` a validation split carved from the training images; either may be
    None. Never train on either."""
    train: ImageDataset
    test: ImageDataset | None = None
    val: ImageDataset | None = None

    def held_out(self):
        """("val", val) when a validation split was carved, else ("test", test), else None:
        the split to evaluate on, with its name for reports."""
        if self.val is not None:
            return "val", self.val
        if self.test is not None:
            return "test", self.test
        return None


def split_validation(dataset, val_fraction=None, val_per_class=None, seed=0):
    """Carve a validation split from `dataset`: returns (train, val), both keeping file order.

    val_fraction:  a fraction in (0, 1) of each class, chosen at random with `seed`
                   (stratified, so every class keeps its share; an unlabelled set is split as one
                   group). The count per class is round(fraction * class size).
    val_per_class: a fixed number per class: the LAST `val_per_class` images of each class in
                   file order (e.g. 1,000 of CIFAR-10's 5,000 per class), no randomness.
    Exactly one of the two must be given.
    """
    if (val_fraction is None) == (val_per_class is None):
        raise DataError(
            f"give exactly one of --val-fraction and --val-per-class (val_fraction and "
            f"val_per_class); got val_fraction={val_fraction!r}, val_per_class={val_per_class!r}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction (val_fraction) must lie strictly between 0 and 1, got "
                        f"{val_fraction!r}")
    if val_per_class is not None:
        if isinstance(val_per_class, bool) or not isinstance(val_per_class, (int, numpy.integer)) \
                or val_per_class < 1:
            raise DataError(f"--val-per-class (val_per_class) must be a positive integer, got "
                            f"{val_per_class!r}")
        if dataset.labels is None:
            raise DataError(f"--val-per-class {val_per_class} needs a labelled data set; this one "
                            f"has no labels (use --val-fraction for an unlabelled folder)")

    if dataset.labels is None:
        groups = {"all images": numpy.arange(len(dataset))}
    else:
        groups = {name: numpy.flatnonzero(dataset.labels == k) for k, name in enumerate(dataset.classes)}
    rng = numpy.random.default_rng(seed)
    val_indices = []
    for name, members in groups.items():
        if val_per_class is not None:
            if val_per_class >= len(members):
                raise DataError(
                    f"--val-per-class {val_per_class} (val_per_class={val_per_class}) would leave "
                    f"no training images of class {name!r}, which has {len(members)}: it must be "
                    f"smaller than the smallest class")
            val_indices.append(members[len(members) - val_per_class:])
        else:
            count = int(round(val_fraction * len(members)))
            if count == len(members):
                raise DataError(
                    f"--val-fraction {val_fraction} (val_fraction={val_fraction}) would hold out all "
                    f"{len(members)} images of class {name!r} and leave none for training")
            val_indices.append(rng.permutation(members)[:count])
    is_val = numpy.zeros(len(dataset), dtype=bool)
    is_val[numpy.concatenate(val_indices)] = True
    if not is_val.any():
        raise DataError(f"--val-fraction {val_fraction} (val_fraction={val_fraction}) holds out no "
                        f"image: {val_fraction} of each class rounds to 0 of {len(dataset)} images")
    return dataset.subset(numpy.flatnonzero(~is_val)), dataset.subset(numpy.flatnonzero(is_val))


def balanced_subset(labels, fraction=None, per_class=None, seed=0):
    """Indices of a class-balanced random subset of a labelled set, sorted: `per_class` images
    of every class, or round(fraction * N / classes) of each (at least 1), drawn without
    replacement with `seed` (the same seed, labels and size give the same subset). A class
    smaller than its share is an error. Used for the label subsets of fine-tuning and the
    training subsets of the experiments; exactly one of fraction and per_class."""
    if (fraction is None) == (per_class is None):
        raise DataError(f"give exactly one of fraction and per_class; got fraction={fraction!r}, "
                        f"per_class={per_class!r}")
    labels = numpy.asarray(labels)
    classes = numpy.unique(labels)
    if per_class is None:
        if not 0 < fraction <= 1:
            raise DataError(f"the fraction of the labels must lie in (0, 1], got {fraction!r}")
        per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    rng = numpy.random.default_rng(seed)
    chosen = []
    for k in classes:
        members = numpy.flatnonzero(labels == k)
        if per_class > len(members):
            raise DataError(f"a subset of {per_class} images per class needs more than class "
                            f"{k}'s {len(members)} images")
        chosen.append(rng.choice(members, per_class, replace=False))
    return numpy.sort(numpy.concatenate(chosen))
