"""Data sets: CIFAR-10's official release (on a small fake in its exact format: there is no
network here), image folders and their cache, validation splits, synthetic shapes."""
import hashlib
import io
import os
import pickle
import shutil
import tarfile
from urllib.error import URLError

import numpy
import pytest
from PIL import Image

from simclr.data import (ChecksumError, DownloadError, ImageDataset, default_cache_dir, load_cifar10,
                         load_dataset, load_image_folder, split_validation, synthetic)
from simclr.data import cifar10, fetch, folder
from simclr.atomic_files import atomic_write

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- CIFAR-10, official format

def python2_pickle(value):
    """`value` (dicts, lists, bytes, small ints) pickled the way Python 2's cPickle wrote the
    official batches: str as SHORT_BINSTRING, which Python 3 reads only with encoding="bytes"."""
    if isinstance(value, dict):
        return b"}(" + b"".join(python2_pickle(k) + python2_pickle(v) for k, v in value.items()) + b"u"
    if isinstance(value, list):
        return b"](" + b"".join(python2_pickle(item) for item in value) + b"e"
    if isinstance(value, bytes):
        return b"U" + bytes([len(value)]) + value
    return b"M" + value.to_bytes(2, "little")


def official_pickle(value):
    """Protocol 2, with NumPy's globals named as the official files (NumPy 1) name them."""
    return pickle.dumps(value, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_fake_cifar10(root, per_batch=3):
    """cifar-10-python.tar.gz with `per_batch` random images per batch, built like the real one.
    Returns (archive path, expected train images, train labels, test images, test labels)."""
    rng = numpy.random.default_rng(0)
    folder_path = root / "cifar-10-batches-py"
    folder_path.mkdir(parents=True)
    expected = {}
    for name in cifar10.TRAIN_BATCHES + [cifar10.TEST_BATCH]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=numpy.uint8)
        labels = rng.integers(0, 10, per_batch)
        data = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # rows: red, green, blue planes
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [f"image_{i}.png".encode() for i in range(per_batch)]}
        (folder_path / name).write_bytes(official_pickle(batch))
        expected[name] = (images, labels)
    meta = {b"label_names": [name.encode() for name in CLASSES], b"num_cases_per_batch": per_batch,
            b"num_vis": 3072}
    (folder_path / "batches.meta").write_bytes(b"\x80\x02" + python2_pickle(meta) + b".")
    (folder_path / "readme.html").write_text("<html></html>")
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder_path, arcname="cifar-10-batches-py")
    train = [expected[name] for name in cifar10.TRAIN_BATCHES]
    return (archive, numpy.concatenate([i for i, _ in train]), numpy.concatenate([l for _, l in train]),
            *expected[cifar10.TEST_BATCH])


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_matches_fake(splits, train_images, train_labels, test_images, test_labels):
    assert splits.train.images.dtype == numpy.uint8 and splits.train.images.shape == (15, 32, 32, 3)
    assert splits.train.labels.dtype == numpy.int64 and splits.train.images.flags.c_contiguous
    numpy.testing.assert_array_equal(splits.train.images, train_images)
    numpy.testing.assert_array_equal(splits.train.labels, train_labels)
    numpy.testing.assert_array_equal(splits.test.images, test_images)
    numpy.testing.assert_array_equal(splits.test.labels, test_labels)
    assert splits.train.classes == CLASSES and splits.test.classes == CLASSES


def test_cifar10_archive_loads_as_hwc_uint8_with_class_names(tmp_path, monkeypatch):
    archive, *expected = write_fake_cifar10(tmp_path / "src")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.replace(archive, data_dir / archive.name)  # only the archive: no extracted folder beside it
    monkeypatch.setattr(cifar10, "MD5", md5_of(data_dir / archive.name))
    assert_matches_fake(load_dataset("cifar10", data_dir), *expected)


def test_cifar10_extracted_folder_loads_the_same_arrays(tmp_path):
    archive, *expected = write_fake_cifar10(tmp_path)
    archive.unlink()
    assert_matches_fake(load_cifar10(tmp_path), *expected)
    assert_matches_fake(load_cifar10(tmp_path / "cifar-10-batches-py"), *expected)


def test_cifar10_archive_with_wrong_md5_is_refused(tmp_path):
    archive, *_ = write_fake_cifar10(tmp_path)
    shutil.rmtree(tmp_path / "cifar-10-batches-py")  # so the archive is what gets read
    with pytest.raises(ChecksumError, match=f"MD5 {md5_of(archive)}.*{cifar10.MD5}"):
        load_cifar10(tmp_path)


def test_cifar10_batch_pickle_cannot_run_code(tmp_path):
    write_fake_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as file:
        file.write(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that calls os.system
    with pytest.raises(ValueError, match="refusing to unpickle os.system"):
        load_cifar10(tmp_path)


class FakeResponse(io.BytesIO):
    """What urlopen returns, serving `payload`."""

    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download_checks_md5_and_never_leaves_a_partial_file(tmp_path, monkeypatch, capsys):
    archive, *expected = write_fake_cifar10(tmp_path / "src")
    payload = archive.read_bytes()
    monkeypatch.setattr(fetch, "urlopen", lambda url, timeout: FakeResponse(payload))
    data_dir = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="published MD5 is c58f30108f718f92721af3b95e74349a"):
        load_cifar10(data_dir, download=True)
    assert list(data_dir.iterdir()) == []  # neither the archive nor its temporary file

    monkeypatch.setattr(cifar10, "MD5", md5_of(archive))
    assert_matches_fake(load_cifar10(data_dir, download=True), *expected)
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz"]
    assert "cifar-10-python.tar.gz: 100.0%" in capsys.readouterr().err


def test_offline_download_says_so_and_where_to_place_the_file(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(fetch, "urlopen", offline)
    with pytest.raises(DownloadError) as error:
        load_cifar10(tmp_path, download=True)
    message = str(error.value)
    assert "offline" in message and cifar10.URL in message and cifar10.MD5 in message
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert list(tmp_path.iterdir()) == []


def test_missing_cifar10_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True.*place it at .*cifar-10-python.tar.gz"):
        load_cifar10(tmp_path)


def test_default_cache_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "simclr-from-scratch"


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "cache.npz") as file:
            file.write(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- image folders

def write_image(path, colour, size=(8, 6), mode="RGB"):
    """A solid image of `colour` (an RGB triple), `size` (W, H), saved losslessly in `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


def write_class_folder(root, per_class=(4, 3)):
    """root/cat/NN.png and root/dog/NN.png, written out of order; the red value of image i is
    i for a cat and 10 + i for a dog."""
    for name, count in reversed(list(zip(["cat", "dog"], per_class))):
        for i in reversed(range(count)):
            write_image(root / name / f"{i:02d}.png", (10 * (name == "dog") + i, 0, 0))


def folder_options(tmp_path):
    return {"cache_dir": tmp_path / "cache"}


def test_folder_reads_train_and_test_classes_sorted_by_name(tmp_path):
    write_class_folder(tmp_path / "d" / "train")
    write_image(tmp_path / "d" / "test" / "dog" / "a.png", (7, 7, 7), mode="L")  # grey -> RGB
    write_image(tmp_path / "d" / "test" / "dog" / "b.png", (1, 2, 3), mode="RGBA")
    splits = load_image_folder(tmp_path / "d", **folder_options(tmp_path))
    assert splits.train.classes == ["cat", "dog"]
    numpy.testing.assert_array_equal(splits.train.labels, [0, 0, 0, 0, 1, 1, 1])
    numpy.testing.assert_array_equal(splits.train.images[:, 0, 0, 0], [0, 1, 2, 3, 10, 11, 12])
    assert splits.train.images.shape == (7, 6, 8, 3) and splits.train.images.dtype == numpy.uint8
    numpy.testing.assert_array_equal(splits.test.labels, [1, 1])
    numpy.testing.assert_array_equal(splits.test.images[:, 0, 0], [[7, 7, 7], [1, 2, 3]])
    assert splits.val is None


def test_flat_folder_is_one_unlabelled_split(tmp_path):
    for i in range(3):
        write_image(tmp_path / "d" / f"{i}.png", (i, i, i))
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    splits = load_image_folder(tmp_path / "d", **folder_options(tmp_path))
    assert splits.train.labels is None and splits.train.classes == [] and splits.test is None
    numpy.testing.assert_array_equal(splits.train.images[:, 0, 0, 0], [0, 1, 2])
    carved = load_dataset("folder", tmp_path / "d", val_fraction=1 / 3, **folder_options(tmp_path))
    assert (len(carved.train), len(carved.val), carved.val.labels) == (2, 1, None)


def test_val_fraction_is_stratified_and_fixed_by_seed(tmp_path):
    write_class_folder(tmp_path / "d", per_class=(10, 20))
    def load(seed):
        return load_dataset("folder", tmp_path / "d", val_fraction=0.2, seed=seed, **folder_options(tmp_path))
    first, again, other = load(0), load(0), load(1)
    assert numpy.bincount(first.val.labels).tolist() == [2, 4]
    assert numpy.bincount(first.train.labels).tolist() == [8, 16]
    numpy.testing.assert_array_equal(first.val.images, again.val.images)
    assert not numpy.array_equal(first.val.images, other.val.images)
    assert first.held_out()[0] == "val"


def test_val_per_class_holds_out_the_last_images_of_each_class(tmp_path):
    write_class_folder(tmp_path / "d", per_class=(4, 3))
    splits = load_dataset("folder", tmp_path / "d", val_per_class=2, **folder_options(tmp_path))
    numpy.testing.assert_array_equal(splits.val.images[:, 0, 0, 0], [2, 3, 11, 12])
    numpy.testing.assert_array_equal(splits.train.images[:, 0, 0, 0], [0, 1, 10])
    numpy.testing.assert_array_equal(splits.val.labels, [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"--val-per-class 3 \(val_per_class=3\) would leave no training images of class 'dog'"):
        load_dataset("folder", tmp_path / "d", val_per_class=3, **folder_options(tmp_path))


def test_corrupt_file_is_skipped_with_one_warning_naming_it(tmp_path):
    write_class_folder(tmp_path / "d")
    (tmp_path / "d" / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning) as record:
        splits = load_image_folder(tmp_path / "d", **folder_options(tmp_path))
    assert len(record) == 1
    assert "skipped 1 unreadable image file" in str(record[0].message)
    assert os.path.join("dog", "broken.jpg") in str(record[0].message)
    assert len(splits.train) == 7


def test_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"no images found in {tmp_path / 'empty'}"):
        load_dataset("folder", tmp_path / "empty", **folder_options(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("folder", tmp_path / "missing", **folder_options(tmp_path))


def test_images_of_different_sizes_need_image_size(tmp_path):
    write_image(tmp_path / "d" / "a.png", (1, 1, 1), size=(8, 6))
    write_image(tmp_path / "d" / "b.png", (2, 2, 2), size=(5, 4))
    with pytest.raises(ValueError, match=r"a.png is 6x8 \(HxW\) but b.png is 4x5; pass --image-size S \(image_size=S"):
        load_image_folder(tmp_path / "d", **folder_options(tmp_path))
    splits = load_image_folder(tmp_path / "d", image_size=(4, 6), **folder_options(tmp_path))
    assert splits.train.images.shape == (2, 4, 6, 3)


def test_second_load_reads_the_cache_and_a_changed_file_invalidates_it(tmp_path, monkeypatch):
    write_class_folder(tmp_path / "d")
    first = load_image_folder(tmp_path / "d", **folder_options(tmp_path))

    def must_not_decode(path, size=None):
        raise AssertionError(f"decoded {path} although it is cached")
    monkeypatch.setattr(folder, "decode_image", must_not_decode)
    second = load_image_folder(tmp_path / "d", **folder_options(tmp_path))
    numpy.testing.assert_array_equal(first.train.images, second.train.images)
    numpy.testing.assert_array_equal(first.train.labels, second.train.labels)

    monkeypatch.undo()
    write_image(tmp_path / "d" / "cat" / "00.png", (99, 0, 0))
    os.utime(tmp_path / "d" / "cat" / "00.png", ns=(1, 1))  # a new mtime even on coarse clocks
    third = load_image_folder(tmp_path / "d", **folder_options(tmp_path))
    assert third.train.images[0, 0, 0, 0] == 99


def test_process_pool_decodes_like_the_single_process(tmp_path, monkeypatch):
    write_class_folder(tmp_path / "d", per_class=(5, 5))
    alone = load_image_folder(tmp_path / "d", use_cache=False, workers=1)
    monkeypatch.setattr(folder, "MIN_FILES_FOR_POOL", 0)
    pooled = load_image_folder(tmp_path / "d", use_cache=False, workers=2)
    numpy.testing.assert_array_equal(alone.train.images, pooled.train.images)


# ---------------------------------------------------------------- synthetic, API

def test_synthetic_is_fixed_by_seed_and_balanced():
    a, b, c = synthetic(50, seed=3), synthetic(50, seed=3), synthetic(50, seed=4)
    numpy.testing.assert_array_equal(a.images, b.images)
    numpy.testing.assert_array_equal(a.labels, b.labels)
    assert not numpy.array_equal(a.images, c.images)
    assert a.images.shape == (50, 32, 32, 3) and a.images.dtype == numpy.uint8
    assert numpy.bincount(a.labels).tolist() == [13, 13, 12, 12]
    assert a.classes == ["circle", "square", "triangle", "cross"]


def test_synthetic_shape_stands_out_in_every_image():
    data = synthetic(400, image_size=16, num_classes=8, seed=0)
    contrast = (data.images.max((1, 2)).astype(int) - data.images.min((1, 2))).max(-1)  # (N,)
    assert contrast.min() > 50  # shape and background differ by >= 80, noise is +-12


def test_load_dataset_rejects_bad_names_and_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet' \(--dataset\); expected one of 'cifar10'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"needs --data-dir \(data_dir\)"):
        load_dataset("folder")
    with pytest.raises(ValueError, match=r"--download \(download=True\) applies to --dataset cifar10 only"):
        load_dataset("synthetic", download=True)
    with pytest.raises(ValueError, match=r"exactly one of --val-fraction and --val-per-class \(val_fraction and val_per_class\)"):
        load_dataset("synthetic", n=8, n_test=4, val_fraction=0.5, val_per_class=1)
    splits = load_dataset("synthetic", n=40, n_test=8, num_classes=4, val_per_class=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 8, 8)


def test_image_dataset_checks_dtypes_and_shapes():
    with pytest.raises(ValueError, match=r"uint8 array of shape \(N, H, W, 3\)"):
        ImageDataset(numpy.zeros((2, 4, 4, 3), numpy.float32), None, [])
    with pytest.raises(ValueError, match="int64 array of shape"):
        ImageDataset(numpy.zeros((2, 4, 4, 3), numpy.uint8), numpy.zeros(2, numpy.int32), ["a"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        ImageDataset(numpy.zeros((2, 4, 4, 3), numpy.uint8), numpy.array([0, 1]), ["a"])
    train, val = split_validation(synthetic(12, num_classes=3), val_fraction=0.25)
    assert numpy.bincount(val.labels).tolist() == [1, 1, 1] and len(train) == 9


def test_unwritable_cache_warns_and_still_returns_the_images(tmp_path):
    write_class_folder(tmp_path / "d")
    (tmp_path / "not-a-folder").write_text("")
    with pytest.warns(UserWarning, match="could not write the image cache"):
        splits = load_image_folder(tmp_path / "d", cache_dir=tmp_path / "not-a-folder")
    assert len(splits.train) == 7


def test_data_a_user_gets_wrong_is_a_value_error_and_a_usage_error(tmp_path):
    """The library raises ValueError / FileNotFoundError; the programs print them as one line."""
    from simclr.cli import UsageError
    from simclr.data import DataError, DataNotFound
    assert issubclass(DataError, ValueError) and issubclass(DataError, UsageError)
    assert issubclass(DataNotFound, FileNotFoundError) and issubclass(DataNotFound, UsageError)
    assert issubclass(ChecksumError, DataError) and issubclass(DownloadError, UsageError)
    data = synthetic(12, num_classes=3)
    with pytest.raises(DataError, match="would hold out all 4 images of class 'circle'"):
        split_validation(data, val_fraction=0.9)
    with pytest.raises(DataError, match="holds out no image"):
        split_validation(data, val_fraction=0.01)
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(DataNotFound, match="is a file, not a folder"):
        load_dataset("folder", tmp_path / "file.txt")
