"""Every mistake a user can make with the flags or the data of python -m simclr.train and
python -m simclr.linear_eval ends in one line that names the flag or the file, the value and
what is expected, with exit status 2 and no traceback (simclr/cli.py)."""
import json
import os
import subprocess
import sys

import numpy
import pytest
from PIL import Image

from simclr import linear_eval, pretraining_settings, train
from test_data import write_fake_cifar10

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--arch", "resnet18", "--width", "0.0625", "--epochs", "2", "--seed", "3"]
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-size", "48"]
TRAIN = MODEL + ["--batch-size", "16", "--out", "{out}/run"]
EVAL = ["--checkpoint", "{checkpoint}", "--epochs", "1", "--output", "{out}/eval.json"]


def write_images(folder, count, size=8, start=0):
    """`count` noise PNGs of size x size in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = numpy.random.default_rng(start)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=numpy.uint8)
        Image.fromarray(pixels).save(folder / f"{start + i:02d}.png")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The data every case needs, made once: {placeholder: path}."""
    root = tmp_path_factory.mktemp("data")
    paths = {name: root / name for name in (
        "labelled", "no_test", "flat", "empty", "no_images", "mixed", "corrupt", "unknown_test",
        "empty_test", "big", "cifar_wrong", "cifar_missing", "missing")}
    for name in ("cat", "dog"):
        write_images(paths["labelled"] / "train" / name, 6)
        write_images(paths["labelled"] / "test" / name, 2, start=10)
        write_images(paths["no_test"] / name, 6)
        write_images(paths["big"] / "train" / name, 4, size=64)
        write_images(paths["big"] / "test" / name, 2, size=64, start=10)
        write_images(paths["empty_test"] / "train" / name, 3)
    write_images(paths["flat"], 12)
    paths["empty"].mkdir()
    write_images(paths["no_images"] / "train" / "cat", 3)
    (paths["no_images"] / "train" / "dog").mkdir()
    (paths["no_images"] / "train" / "dog" / "notes.txt").write_text("not an image")
    write_images(paths["mixed"], 2)
    write_images(paths["mixed"], 1, size=6, start=5)
    (paths["corrupt"] / "cat").mkdir(parents=True)
    for i in range(3):
        (paths["corrupt"] / "cat" / f"{i}.png").write_bytes(b"not a png")
    write_images(paths["unknown_test"] / "train" / "cat", 3)
    write_images(paths["unknown_test"] / "test" / "bird", 1)
    (paths["empty_test"] / "test").mkdir()
    write_fake_cifar10(paths["cifar_wrong"])  # its MD5 is not the official one
    for member in (paths["cifar_wrong"] / "cifar-10-batches-py").iterdir():
        member.unlink()
    (paths["cifar_wrong"] / "cifar-10-batches-py").rmdir()
    paths["cifar_missing"].mkdir()
    paths["file"] = root / "notes.txt"
    paths["file"].write_text("a file, not a folder")
    paths["checkpoint"] = root / "checkpoint"
    args = train.parse_args(TRAIN[:-1] + [str(paths["checkpoint"]), "--max-steps", "1"] + SYNTHETIC)
    train.train(*train.resolve_config(args), stream=open(os.devnull, "w"))
    return paths


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # image folders cache here


def expand(items, files, tmp_path):
    names = {name: str(path) for name, path in files.items()}
    return [item.format(out=tmp_path, **names) for item in items]


def assert_one_line(status, err, fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


TRAIN_CASES = [
    # flags with a value no run can use
    (["--lr", "nan"], ["--lr", "nan", "positive finite"]),
    (["--lr", "inf"], ["--lr", "inf"]),
    (["--lr", "-1"], ["--lr", "-1.0"]),
    (["--width", "0"], ["--width", "0.0", "positive"]),
    (["--width", "-1"], ["--width", "-1.0"]),
    (["--weight-decay", "-0.5"], ["--weight-decay", "-0.5", "at least 0"]),
    (["--weight-decay", "nan"], ["--weight-decay", "nan"]),
    (["--weight-decay", "-1e-4"], ["--weight-decay", "-0.0001", "at least 0"]),  # not a flag
    (["--temperature", "0"], ["--temperature", "0.0", "positive"]),
    (["--temperature", "nan"], ["--temperature", "nan"]),
    (["--color-strength", "-1"], ["--color-strength", "-1.0", "at least 0"]),
    (["--color-strength", "nan"], ["--color-strength", "nan"]),
    (["--proj-dim", "0"], ["--proj-dim", "at least 1", "got 0"]),
    (["--seed", "-1"], ["--seed", "at least 0", "got -1"]),
    (["--epochs", "0"], ["--epochs", "at least 1", "got 0"]),
    (["--epochs", "-99999999999"], ["--epochs", "-99999999999"]),
    (["--batch-size", "1"], ["--batch-size", "at least 2", "got 1"]),
    (["--batch-size", "100"], ["--batch-size 100", "48 training images"]),
    (["--limit", "8"], ["--batch-size 16", "8 training images"]),
    (["--warmup-epochs", "5"], ["--warmup-epochs", "--epochs 2", "5.0"]),
    (["--warmup-epochs", "-1"], ["--warmup-epochs", "-1.0"]),
    (["--warmup-epochs", "nan"], ["--warmup-epochs", "nan"]),
    (["--max-steps", "0"], ["--max-steps", "at least 1", "got 0"]),
    (["--max-steps", "-5"], ["--max-steps", "got -5"]),
    (["--knn-every", "-1"], ["--knn-every", "at least 0", "got -1"]),
    (["--knn-every", "3"], ["--knn-every 3", "--epochs 2", "never"]),
    (["--threads", "0"], ["--threads", "at least 1", "got 0"]),
    (["--limit", "0"], ["--limit", "at least 1", "got 0"]),
    (["--synthetic-size", "0"], ["--synthetic-size", "at least 1", "got 0"]),
    (["--epochs", "two"], ["--epochs", "invalid int value", "'two'"]),
    (["--arch", "resnet99"], ["--arch", "invalid choice", "'resnet99'"]),
    # data flags that do not fit the data set
    (["--image-size", "64"], ["--image-size 64", "--dataset folder only"]),
    (["--data-dir", "{empty}"], ["--data-dir", "{empty}", "synthetic"]),
    (["--download"], ["--download", "cifar10 only", "'synthetic'"]),
    (["--val-fraction", "1.5"], ["--val-fraction", "1.5", "between 0 and 1"]),
    (["--val-fraction", "0"], ["--val-fraction", "0.0"]),
    (["--val-fraction", "nan"], ["--val-fraction", "nan"]),
    (["--val-fraction", "0.001"], ["--val-fraction 0.001", "holds out no image"]),
    (["--val-fraction", "0.99"], ["--val-fraction 0.99", "leave none for training"]),
    (["--val-per-class", "0"], ["--val-per-class", "positive integer", "got 0"]),
    (["--val-per-class", "100"], ["--val-per-class 100", "class 'circle', which has 12"]),
    (["--val-per-class", "2", "--val-fraction", "0.5"], ["--val-fraction", "--val-per-class",
                                                        "exactly one"]),
]
# (argv after TRAIN, expected fragments) with data other than synthetic
TRAIN_DATA_CASES = [
    (["--dataset", "folder"], ["--dataset folder needs --data-dir"]),
    (["--dataset", "folder", "--data-dir", "{missing}"], ["{missing}", "--data-dir", "does not exist"]),
    (["--dataset", "folder", "--data-dir", "{file}"], ["{file}", "is a file, not a folder"]),
    (["--dataset", "folder", "--data-dir", "{empty}"], ["no images found in {empty}"]),
    (["--dataset", "folder", "--data-dir", "{no_images}"], ["{no_images}/train/dog",
                                                            "holds no image files"]),
    (["--dataset", "folder", "--data-dir", "{mixed}"], ["{mixed} differ in size", "--image-size S"]),
    (["--dataset", "folder", "--data-dir", "{corrupt}"], ["no readable images", "{corrupt}",
                                                          "0.png"]),
    (["--dataset", "folder", "--data-dir", "{unknown_test}"], ["{unknown_test}/test",
                                                               "['bird']"]),
    (["--dataset", "folder", "--data-dir", "{empty_test}"], ["{empty_test}/test",
                                                             "no class folders"]),
    (["--dataset", "folder", "--data-dir", "{labelled}", "--image-size", "0"],
     ["--image-size", "got 0"]),
    (["--dataset", "folder", "--data-dir", "{flat}", "--val-per-class", "2"],
     ["--val-per-class 2", "no labels", "--val-fraction"]),
    (["--dataset", "folder", "--data-dir", "{no_test}", "--knn-every", "1", "--batch-size", "4"],
     ["--knn-every 1", "no test split", "--val-fraction"]),
    (["--dataset", "folder", "--data-dir", "{flat}", "--knn-every", "1", "--val-fraction", "0.25",
      "--batch-size", "4"], ["--knn-every 1", "labelled", "{flat}"]),
    (["--dataset", "folder", "--data-dir", "{labelled}", "--synthetic-size", "5"],
     ["--synthetic-size 5", "--dataset folder"]),
    (["--dataset", "folder", "--data-dir", "{labelled}", "--download"], ["--download", "'folder'"]),
    (["--dataset", "cifar10", "--data-dir", "{cifar_missing}"], ["CIFAR-10 was not found in "
                                                                 "{cifar_missing}", "--download"]),
    (["--dataset", "cifar10", "--data-dir", "{cifar_wrong}"], ["{cifar_wrong}/cifar-10-python.tar.gz",
                                                               "MD5", "c58f30108f718f92721af3b95e74349a"]),
    (["--dataset", "cifar10", "--data-dir", "{file}"], ["--data-dir {file}", "is a file"]),
    (["--dataset", "cifar10", "--image-size", "64"], ["--image-size 64", "--dataset cifar10"]),
]


@pytest.mark.parametrize("argv, fragments", TRAIN_CASES + TRAIN_DATA_CASES,
                         ids=[" ".join(argv) for argv, _ in TRAIN_CASES + TRAIN_DATA_CASES])
def test_train_mistake_is_one_line_naming_the_flag(argv, fragments, files, tmp_path, capsys):
    data = [] if "--dataset" in argv else SYNTHETIC
    status = train.main(expand(TRAIN + data + argv, files, tmp_path))
    assert_one_line(status, capsys.readouterr().err, expand(fragments, files, tmp_path))
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")


EVAL_CASES = [
    (["--epochs", "0"], ["--epochs", "at least 1", "got 0"]),
    (["--batch-size", "0"], ["--batch-size", "at least 1", "got 0"]),
    (["--batch-size", "100"], ["--batch-size 100", "48 training images"]),
    (["--knn-k", "-5"], ["--knn-k", "at least 1", "got -5"]),
    (["--knn-k", "0"], ["--knn-k", "got 0"]),
    (["--knn-k", "1000"], ["--knn-k 1000", "48 training images"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "-0.1"], ["--lr", "-0.1"]),
    (["--seed", "-1"], ["--seed", "got -1"]),
    (["--output", "{out}"], ["--output {out}", "is a folder"]),
    (["--output", "{missing}/eval.json"], ["--output {missing}/eval.json", "does not exist"]),
    (["--image-size", "64"], ["--image-size 64", "--dataset synthetic"]),
    (["--synthetic-size", "0"], ["--synthetic-size", "got 0"]),
]
EVAL_DATA_CASES = [
    (["--dataset", "folder", "--data-dir", "{big}"],
     ["--checkpoint {checkpoint}", "32x32 images", "CIFAR stem", "64x64", "ImageNet stem",
      "--image-size 32"]),
    (["--dataset", "folder", "--data-dir", "{no_test}"], ["--data-dir {no_test}", "no test split",
                                                          "--val-fraction"]),
    (["--dataset", "folder", "--data-dir", "{flat}", "--val-fraction", "0.25"],
     ["--data-dir {flat}", "labelled"]),
    (["--dataset", "folder", "--data-dir", "{mixed}"], ["{mixed} differ in size", "--image-size S"]),
    (["--dataset", "folder", "--data-dir", "{missing}"], ["{missing}", "does not exist"]),
]


@pytest.mark.parametrize("argv, fragments", EVAL_CASES + EVAL_DATA_CASES,
                         ids=[" ".join(argv) for argv, _ in EVAL_CASES + EVAL_DATA_CASES])
def test_linear_eval_mistake_is_one_line_naming_the_flag(argv, fragments, files, tmp_path, capsys):
    data = [] if "--dataset" in argv else SYNTHETIC
    status = linear_eval.main(expand(EVAL + data + argv, files, tmp_path))
    assert_one_line(status, capsys.readouterr().err, expand(fragments, files, tmp_path))


def test_random_init_without_checkpoint_is_one_line(capsys):
    status = linear_eval.main(["--raw-pixels", "--random-init"] + SYNTHETIC)
    assert_one_line(status, capsys.readouterr().err, ["--random-init needs --checkpoint"])


def test_cupy_backend_without_cupy_is_one_line_saying_how_to_install(files, tmp_path, capsys,
                                                                      monkeypatch):
    from autograd import backend
    monkeypatch.setattr(backend, "_cupy", False)
    status = train.main(expand(TRAIN + SYNTHETIC + ["--backend", "cupy"], files, tmp_path))
    assert_one_line(status, capsys.readouterr().err, ["--backend cupy", "cuda12"])
    status = linear_eval.main(expand(EVAL + SYNTHETIC + ["--backend", "cupy"], files, tmp_path))
    assert_one_line(status, capsys.readouterr().err, ["--backend cupy", "cuda12"])


def test_download_without_network_is_one_line_saying_where_to_put_the_file(files, tmp_path, capsys,
                                                                           monkeypatch):
    from urllib.error import URLError
    from simclr.data import fetch

    def offline(url, timeout):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(fetch, "urlopen", offline)
    data = ["--dataset", "cifar10", "--download", "--data-dir", str(tmp_path / "cifar")]
    status = train.main(expand(TRAIN, files, tmp_path) + data)
    assert_one_line(status, capsys.readouterr().err, [
        "could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "offline",
        str(tmp_path / "cifar" / "cifar-10-python.tar.gz")])


@pytest.mark.parametrize("program, argv, fragments", [
    ("simclr.train", TRAIN + SYNTHETIC + ["--lr", "nan"], ["--lr", "nan"]),
    ("simclr.train", TRAIN + ["--dataset", "folder", "--data-dir", "{mixed}"],
     ["{mixed} differ in size", "--image-size S"]),
    ("simclr.linear_eval", EVAL + SYNTHETIC + ["--knn-k", "0"], ["--knn-k", "got 0"]),
])
def test_the_program_prints_one_line_and_exits_2(program, argv, fragments, files, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", program] + expand(argv, files, tmp_path),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout == ""
    assert done.stderr.startswith(f"python -m {program}: error: ")
    assert_one_line(done.returncode, done.stderr, expand(fragments, files, tmp_path))


# ---------------------------------------------------------------- what now just works

def test_warmup_defaults_to_a_tenth_of_a_short_run_and_takes_fractions():
    def warmup(*argv):
        config, _ = train.resolve_config(train.parse_args(SYNTHETIC + list(argv)))
        pretraining_settings.validate(config)
        return config["warmup_epochs"]
    assert warmup("--epochs", "2") == 0.2
    assert (warmup("--epochs", "50"), warmup("--epochs", "100"), warmup()) == (5, 10, 10)
    assert warmup("--epochs", "2", "--warmup-epochs", "0.5") == 0.5


def test_short_run_without_warmup_flag_trains_and_schedules_whole_steps(files, tmp_path):
    out = tmp_path / "run"
    assert train.main(MODEL + SYNTHETIC + ["--batch-size", "16", "--max-steps", "2",
                                           "--out", str(out)]) == 0
    assert json.load(open(out / "config.json"))["warmup_epochs"] == 0.2
    lrs = [json.loads(line)["lr"] for line in open(out / "metrics.jsonl")]
    assert lrs[0] == 0 and lrs[1] > 0  # round(0.2 * 3 steps per epoch) = 1 warm-up step


def test_run_saved_with_integer_warmup_epochs_resumes(tmp_path):
    """Runs saved before --warmup-epochs took fractions hold an int."""
    args = train.parse_args(TRAIN[:-1] + [str(tmp_path / "old"), "--max-steps", "2",
                                          "--warmup-epochs", "1"] + SYNTHETIC)
    config, _ = train.resolve_config(args)
    config["warmup_epochs"] = 1
    train.train(config, stream=open(os.devnull, "w"))
    assert train.main(["--resume", str(tmp_path / "old")]) == 0
    steps = [json.loads(line)["step"] for line in open(tmp_path / "old" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
