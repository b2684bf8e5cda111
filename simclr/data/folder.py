"""Image folders: any images Pillow reads, decoded once and cached as uint8 arrays.

Layouts, tried in this order:
    DIR/train/<class>/*  (and optionally DIR/test/<class>/*)   labelled train and test splits
    DIR/<image files>                                           one unlabelled split (pre-training)
    DIR/<class>/*                                               one labelled split
Classes are sorted by folder name and files by name within a class, so labels and order do not
depend on the file system. Decoding goes through a process pool for large folders, and the
result is cached in an .npz named by a hash of the folder's path, its files' names, sizes and
modification times, and image_size: change a file and the cache is rebuilt.
"""
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy
from PIL import Image

from simclr.data.cache import default_cache_dir, fingerprint, load_arrays, save_arrays
from simclr.data.dataset import ImageDataset, Splits
from simclr.data.errors import DataError, DataNotFound

CACHE_VERSION = 1
MIN_FILES_FOR_POOL = 2000  # below this a pool's start-up costs more than it saves
MAX_DEFAULT_WORKERS = 16  # past this, small images decode faster than workers start
WARN_NAMES = 5  # how many skipped files a warning names


def _image_size_pair(image_size):
    """None, an int S or a pair (H, W) -> None or (H, W)."""
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, (int, numpy.integer)) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(n, (int, numpy.integer)) and n > 0 for n in pair):
        raise DataError(f"--image-size (image_size) must be a positive int or a pair (height, width); "
                        f"got {image_size!r}")
    return int(pair[0]), int(pair[1])


def decode_image(path, size=None):
    """The image at `path` as uint8 (H, W, 3) RGB, resized (bicubic) to size=(H, W) if given.
    Grey, palette, CMYK and RGBA images are converted to RGB (alpha is dropped)."""
    with Image.open(path) as image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)  # Pillow sizes are (W, H)
        return numpy.asarray(image)


def _decode_chunk(paths, size):
    """[(array or None, None or the reason it failed)] for each path."""
    results = []
    for path in paths:
        try:
            results.append((decode_image(path, size), None))
        except Exception as error:  # any failure of any Pillow plugin means: skip this file
            results.append((None, f"{type(error).__name__}: {error}"))
    return results


def _decode_all(paths, size, workers):
    """Decode every path, in order; in `workers` processes when there are many."""
    if workers is None:  # the CPUs this process may run on, which can be fewer than the machine's
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(cpus, MAX_DEFAULT_WORKERS)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int or None; got {workers!r}")
    if workers <= 1 or len(paths) < MIN_FILES_FOR_POOL:
        return _decode_chunk(paths, size)
    chunk = -(-len(paths) // (4 * workers))  # a few chunks per worker balances uneven files
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    # forkserver/spawn rather than fork: forking a process that holds threads or a CUDA context
    # can deadlock. (Like any multiprocessing, a calling script needs `if __name__ == "__main__":`.)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        return [result for results in pool.map(_decode_chunk, chunks, [size] * len(chunks))
                for result in results]


def _list_images(root, folder=""):
    """The image files directly in root/folder (by extension, hidden files skipped), sorted by
    name, as (path relative to root, size in bytes, mtime in ns): what the cache key needs.
    Plain strings, not Path objects: for 50,000 files pathlib costs more than the listing."""
    extensions = Image.registered_extensions()
    with os.scandir(os.path.join(root, folder)) as entries:
        files = [(os.path.join(folder, entry.name), entry.stat().st_size, entry.stat().st_mtime_ns)
                 for entry in entries if entry.is_file() and not entry.name.startswith(".")
                 and os.path.splitext(entry.name)[1].lower() in extensions]
    return sorted(files)


def _list_classes(directory):
    """Sorted names of the (non-hidden) sub-folders of `directory`."""
    with os.scandir(directory) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))


def _labelled_files(root, split, classes):
    """(files, labels) of root/split/<class>/* for each class name in `classes` present there."""
    files, labels = [], []
    for label, name in enumerate(classes):
        if not (root / split / name).is_dir():
            continue
        members = _list_images(root, os.path.join(split, name))
        if not members:
            raise DataError(f"the class folder {root / split / name} holds no image files (by their "
                            f"names' extensions: .png, .jpg, ...); remove it or add images")
        files += members
        labels += [label] * len(members)
    return files, labels


def _scan(root):
    """The folder's layout: (classes, {split: (files, labels or None)})."""
    if (root / "train").is_dir():
        classes = _list_classes(root / "train")
        if not classes:
            raise DataError(f"{root / 'train'} has no class folders; expected "
                             f"{root / 'train'}/<class>/<images>")
        splits = {"train": _labelled_files(root, "train", classes)}
        if (root / "test").is_dir():
            unknown = sorted(set(_list_classes(root / "test")) - set(classes))
            if unknown:
                raise DataError(f"{root / 'test'} has class folders {unknown} that {root / 'train'} lacks; "
                                 f"train classes are {classes}")
            splits["test"] = _labelled_files(root, "test", classes)
            if not splits["test"][0]:
                raise DataError(f"{root / 'test'} has no class folders; expected "
                                f"{root / 'test'}/<class>/<images>, or no test folder")
        return classes, splits
    flat = _list_images(root)
    if flat:
        return [], {"train": (flat, None)}
    classes = _list_classes(root)
    if not classes:
        raise DataError(f"no images found in {root}: expected {root}/train/<class>/<images>, "
                         f"{root}/<class>/<images>, or images directly in {root}")
    return classes, {"train": _labelled_files(root, "", classes)}


def _decode_splits(root, classes, splits, size, workers):
    """Decode every split: {split: ImageDataset}, plus ["file (reason)"] for skipped files."""
    names = list(splits)
    relative = [file[0] for name in names for file in splits[name][0]]
    decoded = _decode_all([os.path.join(root, path) for path in relative], size, workers)
    skipped = [f"{path} ({reason})" for path, (_, reason) in zip(relative, decoded) if reason]
    shapes = {}
    for path, (array, _) in zip(relative, decoded):
        if array is not None:
            shapes.setdefault(array.shape, path)
    if len(shapes) > 1:
        (first, a), (second, b) = list(shapes.items())[:2]
        raise DataError(
            f"images in {root} differ in size: {a} is {first[0]}x{first[1]} (HxW) but {b} is "
            f"{second[0]}x{second[1]}; pass --image-size S (image_size=S or (H, W)) to resize them "
            f"all to one size")
    datasets, start = {}, 0
    for name in names:
        files, labels = splits[name]
        part = decoded[start:start + len(files)]
        start += len(files)
        kept = [i for i, (array, _) in enumerate(part) if array is not None]
        if not kept:
            raise DataError(f"no readable images in the {name} split of {root}: all {len(files)} "
                             f"files failed to decode, e.g. {files[0][0]} ({part[0][1]})")
        images = numpy.stack([part[i][0] for i in kept])  # N x (H, W, 3) -> (N, H, W, 3)
        kept_labels = None if labels is None else numpy.asarray(labels, dtype=numpy.int64)[kept]
        datasets[name] = ImageDataset(images, kept_labels, classes)
    return datasets, skipped


def _cache_path(root, splits, size, cache_dir):
    """The cache file for this folder's current contents."""
    listing = [(name, files) for name, (files, _) in splits.items()]
    key = fingerprint(CACHE_VERSION, str(root), size, listing)
    return Path(cache_dir) / "image-folders" / f"{root.name or 'root'}-{key}.npz"


def _to_arrays(datasets, classes, skipped):
    arrays = {"classes": numpy.array(classes, dtype=str), "skipped": numpy.array(skipped, dtype=str)}
    for name, dataset in datasets.items():
        arrays[f"{name}_images"] = dataset.images
        if dataset.labels is not None:
            arrays[f"{name}_labels"] = dataset.labels
    return arrays


def _from_arrays(arrays, split_names):
    classes = arrays["classes"].tolist()
    datasets = {name: ImageDataset(arrays[f"{name}_images"], arrays.get(f"{name}_labels"), classes)
                for name in split_names}
    return datasets, arrays["skipped"].tolist()


def load_image_folder(root, *, image_size=None, cache_dir=None, use_cache=True, workers=None):
    """Decode an image folder (layouts in the module docstring) into Splits(train, test).

    image_size: None (all images must share one size), an int S (S x S) or (H, W): every image
                is resized to it.
    cache_dir:  where decoded arrays are cached, under image-folders/ (default: the user cache
                directory, ~/.cache/simclr-from-scratch); use_cache=False neither reads nor
                writes the cache.
    workers:    decoding processes for large folders (default: the usable CPUs, at most 16;
                1 decodes in this process).
    Unreadable files are skipped with one warning naming them (repeated on loads from the
    cache, since the files are still unreadable); a folder with no readable image is an error.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataNotFound(f"the image folder {root} (--data-dir) {what}")
    size = _image_size_pair(image_size)
    classes, splits = _scan(root)
    cache_path = _cache_path(root, splits, size, cache_dir or default_cache_dir()) if use_cache else None
    arrays = load_arrays(cache_path) if cache_path is not None else None
    if arrays is not None:
        datasets, skipped = _from_arrays(arrays, list(splits))
    else:
        datasets, skipped = _decode_splits(root, classes, splits, size, workers)
        if cache_path is not None:
            try:
                save_arrays(cache_path, _to_arrays(datasets, classes, skipped))
            except OSError as error:  # a read-only or full disk costs speed, not the data
                warnings.warn(f"could not write the image cache {cache_path} ({error}); the next "
                              f"load will decode the images again", stacklevel=2)
    if skipped:
        more = f", and {len(skipped) - WARN_NAMES} more" if len(skipped) > WARN_NAMES else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) in {root}: "
                      f"{', '.join(skipped[:WARN_NAMES])}{more}", stacklevel=2)
    return Splits(train=datasets["train"], test=datasets.get("test"))
