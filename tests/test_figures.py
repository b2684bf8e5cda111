"""python -m simclr.figures: each figure end to end on small synthetic data and a tiny
checkpoint; a mistake ends in one line naming the flag or the file, exit status 2."""
import os

import numpy
import pytest
from PIL import Image

from simclr import figures
from simclr.train import main as train_main

DATA = ["--dataset", "synthetic", "--synthetic-size", "64", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A two-step training run of a tiny ResNet-18 on 64 synthetic images."""
    out = tmp_path_factory.mktemp("figures") / "run"
    with open(os.devnull, "w") as quiet, pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stderr", quiet)
        status = train_main(DATA + ["--arch", "resnet18", "--width", "0.0625", "--batch-size",
                                    "16", "--epochs", "1", "--max-steps", "2", "--threads", "1",
                                    "--out", str(out)])
    assert status == 0
    return out


def drawn_png(path, min_size=(300, 200), min_ink=0.05):
    """The PNG at `path` opens, is at least min_size and is not blank: more than 20 colours,
    and at least min_ink of its pixels not white."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1], image.size
        pixels = numpy.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(numpy.unique(pixels, axis=0)) > 20  # images and text, not one flat colour
    assert (pixels != 255).any(axis=1).mean() > min_ink


def error_line(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("argv", [
    ["views", "--images", "3", "--views", "2", "--blur", "--seed", "1"],
    ["views", "--images", "2", "--views", "2", "--augmentations", "crop,jitter"],
    ["histograms", "--index", "5", "--crops", "3", "--color-strength", "0.5"],
], ids=["views", "views-of-some-steps", "histograms"])
def test_augmentation_figures(argv, tmp_path, capsys):
    out = tmp_path / "figure.png"
    assert figures.main(argv + DATA + ["--out", str(out)]) == 0
    drawn_png(out)
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("argv, min_ink", [(["neighbours", "--queries", "3", "--k", "4"], 0.05),
                                           (["embedding", "--max-points", "10"], 0.02)],
                         ids=["neighbours", "embedding"])
def test_checkpoint_figures(argv, min_ink, run_folder, tmp_path):
    out = tmp_path / "figure.png"
    assert figures.main(argv + DATA + ["--checkpoint", str(run_folder), "--threads", "1",
                                       "--out", str(out)]) == 0
    drawn_png(out, min_ink=min_ink)  # a scatter of points is mostly white


def test_training_figure(run_folder, tmp_path):
    out = tmp_path / "training.png"
    assert figures.main(["training", "--run", str(run_folder), "--out", str(out)]) == 0
    drawn_png(out, min_size=(700, 800), min_ink=0.01)  # three charts, stacked


def test_neighbours_frames_show_whether_a_neighbour_shares_the_query_class(run_folder, tmp_path):
    out = tmp_path / "neighbours.png"
    assert figures.main(["neighbours", "--queries", "2", "--k", "3", "--threads", "1",
                         "--checkpoint", str(run_folder), "--out", str(out)] + DATA) == 0
    pixels = numpy.asarray(Image.open(out).convert("RGB"))
    frames = sum(int((pixels == colour).all(axis=2).sum())
                 for colour in (figures.SAME_CLASS, figures.OTHER_CLASS))
    assert frames > 2 * 2 * 3 * 4 * 50  # two blocks of 2 x 3 frames, each >= 4 px x 50 px


@pytest.mark.parametrize("argv, fragments", [
    (["neighbours", "--checkpoint", "{tmp}/nowhere"] + DATA, ["--checkpoint", "nowhere"]),
    (["neighbours", "--checkpoint", "{run}", "--queries", "0"] + DATA, ["--queries", "got 0"]),
    (["neighbours", "--checkpoint", "{run}", "--k", "1000"] + DATA, ["--k 1000", "48"]),
    (["neighbours", "--checkpoint", "{run}", "--k", "0"] + DATA, ["--k", "got 0"]),
    (["embedding", "--checkpoint", "{run}", "--max-points", "-1"] + DATA, ["--max-points"]),
    (["views", "--images", "0"] + DATA, ["--images", "got 0"]),
    (["views", "--color-strength", "nan"] + DATA, ["--color-strength", "nan"]),
    (["views", "--augmentations", "crop,cut"] + DATA, ["--augmentations crop,cut", "none"]),
    (["histograms", "--index", "48"] + DATA, ["--index 48", "at most 47"]),
    (["histograms", "--crops", "0"] + DATA, ["--crops"]),
    (["training", "--run", "{tmp}"], ["--run", "metrics.jsonl"]),
    (["views", "--out", "{tmp}/figure.jpg"] + DATA, ["--out", ".png"]),
    (["views", "--out", "{tmp}/missing/figure.png"] + DATA, ["--out", "does not exist"]),
    (["views", "--synthetic-size", "64"], ["--synthetic-size", "--dataset synthetic"]),
    (["pictures"], ["pictures"]),
    ([], ["KIND"]),
])
def test_a_mistake_is_one_line_naming_the_flag(argv, fragments, run_folder, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_folder)) for a in argv]
    if argv and "--out" not in argv:
        argv += ["--out", str(tmp_path / "figure.png")]
    assert figures.main(argv) == 2
    line = error_line(capsys)
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "figure.png").exists()


def test_training_figure_draws_the_k_nn_records_of_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"arch": "resnet50", "width": 1, "batch_size": 512, '
                                     '"epochs": 100}')
    records = [f'{{"step": {s}, "loss": {6 - s / 100}, "lr": {s / 1000}}}' for s in range(1, 301)]
    records += [f'{{"step": {s}, "knn_accuracy": {s / 400}, "split": "val"}}'
                for s in (100, 200, 300)]
    (run / "metrics.jsonl").write_text("\n".join(records) + "\n")
    out = tmp_path / "training.png"
    assert figures.main(["training", "--run", str(run), "--out", str(out)]) == 0
    drawn_png(out, min_size=(700, 800), min_ink=0.01)
