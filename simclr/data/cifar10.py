"""CIFAR-10 in its official form (Krizhevsky, 2009): cifar-10-python.tar.gz, or the
cifar-10-batches-py/ folder it extracts to.

The archive holds six pickled batches (data_batch_1..5: 50,000 training images; test_batch:
10,000) and batches.meta (the ten class names). Each batch is a dict with b"data", a uint8
(10000, 3072) array whose rows are an image's red, green and blue 32x32 planes one after the
other, and b"labels", a list of ints. The pickles were written by Python 2, hence
encoding="bytes" and bytes keys.
"""
import pickle
import tarfile
from pathlib import Path

import numpy

from simclr.data import fetch
from simclr.data.cache import default_cache_dir
from simclr.data.dataset import ImageDataset, Splits
from simclr.data.errors import DataError, DataNotFound

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, bytes, numbers and NumPy
    arrays. A pickle can call any function it names, and an extracted folder has no checksum,
    so every other name is refused."""
    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only dicts, lists "
                f"and NumPy arrays")
        return super().find_class(module, name)


def _unpickle(file, source):
    try:
        return _BatchUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as error:
        raise DataError(f"{source} is not a readable CIFAR-10 batch: {error}") from error


def _parse_batch(batch, source):
    """A batch dict -> (uint8 images (N, 32, 32, 3), int64 labels (N,))."""
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{source} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data = numpy.asarray(batch[b"data"], dtype=numpy.uint8)
    labels = numpy.asarray(batch[b"labels"], dtype=numpy.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise DataError(f"{source}: expected data (N, 3072) and N labels; got data {data.shape} "
                         f"and labels {labels.shape}")
    planes = data.reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, 3, 32, 32)
    images = planes.transpose(0, 2, 3, 1)  # (N, 3, 32, 32) -> (N, 32, 32, 3)
    return numpy.ascontiguousarray(images), labels


def _read_members(names, archive=None, folder=None):
    """{name: unpickled dict} for each of `names`, from the archive or the extracted folder."""
    found = {}
    if folder is not None:
        for name in names:
            path = folder / name
            if path.is_file():
                with open(path, "rb") as file:
                    found[name] = _unpickle(file, path)
    else:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:  # one pass: a .tar.gz can only be read front to back quickly
                    name = Path(member.name).name
                    if name in names and member.isfile():
                        found[name] = _unpickle(tar.extractfile(member), f"{archive}:{member.name}")
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataError(f"{archive} is not a readable .tar.gz archive: {error}") from error
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(f"{archive or folder} lacks {', '.join(missing)}: it is not the official "
                         f"CIFAR-10 python release ({ARCHIVE_NAME} from {URL})")
    return found


def locate_cifar10(data_dir=None, download=False):
    """Find CIFAR-10 under `data_dir` (default: the user cache directory): returns
    ("folder", path) for an extracted cifar-10-batches-py/ (or `data_dir` itself when it holds
    the batches), ("archive", path) for cifar-10-python.tar.gz, downloading the archive there
    first when `download` is true and neither is present."""
    data_dir = Path(data_dir) if data_dir is not None else default_cache_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise DataNotFound(f"--data-dir {data_dir} is a file, not a folder: pass the folder that "
                           f"holds {ARCHIVE_NAME} or {FOLDER_NAME}")
    if (data_dir / TRAIN_BATCHES[0]).is_file():
        return "folder", data_dir
    if (data_dir / FOLDER_NAME).is_dir():
        return "folder", data_dir / FOLDER_NAME
    archive = data_dir / ARCHIVE_NAME
    if archive.is_file():
        return "archive", archive
    if download:
        fetch.download(URL, archive, MD5, manual_hint=f"or extract it there as {data_dir / FOLDER_NAME}")
        return "archive", archive
    raise DataNotFound(
        f"CIFAR-10 was not found in {data_dir}: expected {archive} or the extracted folder "
        f"{data_dir / FOLDER_NAME}. Pass download=True (--download) to fetch it from {URL}, or "
        f"download it by hand and place it at {archive}.")


def load_cifar10(data_dir=None, *, download=False):
    """CIFAR-10's 50,000 training and 10,000 test images, as Splits(train, test).

    data_dir: a folder holding cifar-10-python.tar.gz or cifar-10-batches-py/ (or the batches
    folder itself); default $XDG_CACHE_HOME/simclr-from-scratch or ~/.cache/simclr-from-scratch.
    download: fetch the archive from the official address when it is not there.
    The archive's MD5 is checked against the published one on every load (about a second).
    """
    kind, path = locate_cifar10(data_dir, download)
    if kind == "archive":
        actual = fetch.file_md5(path)
        if actual != MD5:
            raise fetch.ChecksumError(
                f"{path} has MD5 {actual}, but the official {ARCHIVE_NAME} has MD5 {MD5}: the file "
                f"is truncated, corrupt or not the official release. Delete it and download again "
                f"from {URL}.")
    batches = _read_members(TRAIN_BATCHES + [TEST_BATCH, META],
                            archive=path if kind == "archive" else None,
                            folder=path if kind == "folder" else None)
    if not isinstance(batches[META], dict) or b"label_names" not in batches[META]:
        raise DataError(f"{path}:{META} is not CIFAR-10's batches.meta: it has no b'label_names'")
    classes = [name.decode() for name in batches[META][b"label_names"]]
    train = [_parse_batch(batches[name], f"{path}:{name}") for name in TRAIN_BATCHES]
    test_images, test_labels = _parse_batch(batches[TEST_BATCH], f"{path}:{TEST_BATCH}")
    return Splits(
        train=ImageDataset(numpy.concatenate([images for images, _ in train]),
                           numpy.concatenate([labels for _, labels in train]), classes),
        test=ImageDataset(test_images, test_labels, classes),
    )
