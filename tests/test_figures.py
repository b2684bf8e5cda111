"""python -m simclr.figures: each figure end to end on small synthetic data and a tiny
checkpoint, and what it draws (read from the calls to simclr.plot, against the data computed
here): the images and their views, the histograms under their pictures, the nearest neighbours
by cosine similarity, the principal components, the k-NN curve of a run that has one. A
mistake ends in one line naming the flag or the file, exit status 2."""
import json
import os

import numpy
import pytest
from PIL import Image

from helpers import recording
from simclr import figures, plot
from simclr.evaluate import encode
from simclr.model import build_model
from simclr.plot.drawing import PAD, PALETTE
from simclr.train import main as train_main
from simclr.training.checkpoint import load_checkpoint

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


@pytest.fixture
def drawn(monkeypatch):
    """What a figure asks simclr.plot to draw: {function name: [(args, options, image)]}."""
    calls = {}
    for name in ("line_chart", "image_grid", "scatter", "histogram_panel"):
        calls[name] = []
        monkeypatch.setattr(plot, name, recording(calls[name], getattr(plot, name)))
    return calls


def splits():
    return figures.load_splits(figures.parse_args(["views", "--out", "unused.png"] + DATA))


def encoder_of(run_folder, image_size=32):
    model_state, _, meta = load_checkpoint(os.path.join(run_folder, "checkpoint.npz"))
    model = build_model(meta["config"], image_size)
    model.load_state_dict(model_state)
    return model.encoder


def unit_rows(features):
    features = numpy.asarray(features, dtype="float64")
    return features / numpy.linalg.norm(features, axis=1, keepdims=True)


def the_figure(path):
    with Image.open(path) as image:
        return numpy.asarray(image.convert("RGB"))


def error_line(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("argv", [
    ["views", "--images", "3", "--views", "2", "--blur", "--seed", "1"],
    ["views", "--images", "2", "--views", "2", "--augmentations", "crop,jitter"],
    ["histograms", "--index", "5", "--crops", "3", "--color-strength", "0.5"],
], ids=["views", "views-of-some-steps", "histograms"])
def test_augmentation_figures(argv, tmp_path, capsys, drawn):
    out = tmp_path / "figure.png"
    assert figures.main(argv + DATA + ["--out", str(out)]) == 0
    drawn_png(out)
    assert str(out) in capsys.readouterr().out
    (rows,), _, grid = drawn["image_grid"][-1]
    numpy.testing.assert_array_equal(the_figure(out), numpy.asarray(grid))  # the grid is saved
    flag = {name: int(value) for name, value in zip(argv, argv[1:]) if name.startswith("--")
            and value.isdigit()}
    if argv[0] == "views":
        assert_views(rows, flag["--images"], flag["--views"])
    else:
        assert_histograms(rows, drawn["histogram_panel"], flag["--index"], flag["--crops"])


def assert_views(rows, images, views):
    """One row per training image (the first of each class in turn): the image, then `views`
    views of it, each unlike the image and unlike the others."""
    train = splits().train
    chosen = figures.pick_examples(train, images)
    assert train.labels[chosen].tolist() == list(range(images))
    assert len(rows) == images and all(len(row) == 1 + views for row in rows)
    for row, index in zip(rows, chosen):
        numpy.testing.assert_array_equal(row[0], train.images[index])
        assert all(view.shape == (32, 32, 3) and not numpy.array_equal(view, row[0])
                   for view in row[1:])
        assert len({view.tobytes() for view in row[1:]}) == views


def assert_histograms(rows, panels_drawn, index, crops):
    """Rows: the training image and its crops; under them the histogram of each; the crops
    colour-distorted; under them the histogram of each: every panel drawn from the picture
    above it, every distorted crop unlike its crop."""
    image = splits().train.images[index]
    assert [len(row) for row in rows] == [crops + 1] * 4 and rows[2][0] is rows[3][0] is None
    numpy.testing.assert_array_equal(rows[0][0], image)
    pictures = rows[0] + rows[2][1:]
    assert len(panels_drawn) == len(pictures)
    for (args, _, panel), picture, shown in zip(panels_drawn, pictures, rows[1] + rows[3][1:]):
        assert numpy.array_equal(args[0], picture) and shown is panel
    assert not any(numpy.array_equal(a, b) for a, b in zip(rows[0][1:], rows[2][1:]))


@pytest.mark.parametrize("argv, min_ink", [(["neighbours", "--queries", "3", "--k", "4"], 0.05),
                                           (["embedding", "--max-points", "10"], 0.02)],
                         ids=["neighbours", "embedding"])
def test_checkpoint_figures(argv, min_ink, run_folder, tmp_path, drawn, monkeypatch):
    encoded = []
    monkeypatch.setattr(figures, "encode", recording(encoded, encode))
    out = tmp_path / "figure.png"
    assert figures.main(argv + DATA + ["--checkpoint", str(run_folder), "--threads", "1",
                                       "--out", str(out)]) == 0
    drawn_png(out, min_ink=min_ink)  # a scatter of points is mostly white
    if argv[0] == "neighbours":
        assert_neighbours(drawn["image_grid"], encoder_of(run_folder), queries=3, k=4)
    else:
        assert_embedding(drawn["scatter"], encoded)


def assert_neighbours(grids, encoder, queries, k):
    """Two blocks, by the representation h and by raw pixels: each row a held-out query (the
    first of each class in turn), then its k most similar training images by cosine
    similarity, most similar first, framed green where they share the query's class."""
    data = splits()
    train, (_, test) = data.train, data.held_out()
    chosen = figures.pick_examples(test, queries)
    assert len(grids) == 2
    for (args, options, _), features in zip(grids, (lambda x: encode(encoder, x),
                                                    lambda x: x.reshape(len(x), -1))):
        similarity = unit_rows(features(test.images[chosen])) @ unit_rows(
            features(train.images)).T
        nearest = numpy.argsort(-similarity, axis=1, kind="stable")[:, :k]
        for row, frames, query, neighbours in zip(args[0], options["borders"], chosen, nearest):
            numpy.testing.assert_array_equal(row[0], test.images[query])
            numpy.testing.assert_array_equal(numpy.stack(row[1:]), train.images[neighbours])
            same = train.labels[neighbours] == test.labels[query]
            assert frames == [None] + [figures.SAME_CLASS if s else figures.OTHER_CLASS
                                       for s in same]


def assert_embedding(scatters, encoded):
    """The points are the encoded held-out images projected on the first two principal
    components of their representations (by an eigendecomposition of their covariance,
    here), each coloured by its image's class."""
    (points, classes, names), _, _ = scatters[0]
    (_, images), _, features = encoded[0]
    _, test = splits().held_out()
    index = [next(i for i, image in enumerate(test.images) if numpy.array_equal(image, picture))
             for picture in images]
    assert list(classes) == test.labels[index].tolist() and list(names) == test.classes
    centred = numpy.asarray(features, dtype="float64") - numpy.mean(features, axis=0)
    _, directions = numpy.linalg.eigh(centred.T @ centred)         # ascending eigenvalues
    projected = centred @ directions[:, [-1, -2]]                   # (N, 2)
    signs = numpy.sign((projected * points).sum(axis=0))            # a direction's sign is free
    numpy.testing.assert_allclose(points * signs, projected, atol=1e-4 * numpy.abs(points).max())


def test_training_figure(run_folder, tmp_path, drawn):
    out = tmp_path / "training.png"
    assert figures.main(["training", "--run", str(run_folder), "--out", str(out)]) == 0
    drawn_png(out, min_size=(700, 800), min_ink=0.01)  # three charts, stacked
    records = [json.loads(line) for line in open(run_folder / "metrics.jsonl")]
    knn_chart = assert_training_charts(drawn["line_chart"], records, the_figure(out))
    assert knn_chart["title"] == "no k-NN records" and not curve_pixels(knn_chart["image"]).size


def test_titles_name_the_data_and_the_run_not_where_they_lie(run_folder, tmp_path, drawn,
                                                              monkeypatch):
    """A figure is shown on other machines: its titles say what the data are (their kind and
    size) and which run it was, never a path of the machine that drew it."""
    from test_cli_errors import write_images
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "where-the-images-lie"
    for name in ("cat", "dog"):
        write_images(data / "train" / name, 6, size=32)
        write_images(data / "test" / name, 2, size=32, start=10)
    assert figures.main(["views", "--images", "2", "--views", "1", "--dataset", "folder",
                         "--data-dir", str(data), "--out", str(tmp_path / "views.png")]) == 0
    title = drawn["image_grid"][-1][1]["title"]
    assert "folder: 12 training images, 4 test images" in title and str(data) not in title
    combined = []
    monkeypatch.setattr(plot, "combine", recording(combined, plot.combine))
    assert figures.main(["training", "--run", str(run_folder), "--out",
                         str(tmp_path / "training.png")]) == 0
    title = combined[0][1]["title"]
    assert title.startswith(f"Training of {run_folder.name}\n")
    assert str(run_folder.parent) not in title


def curve_pixels(chart):
    """(row, column) of the pixels of a chart's first curve (its colour, used by nothing else
    in a chart of one series)."""
    return numpy.argwhere((numpy.asarray(chart) == PALETTE[0]).all(axis=2))


def assert_training_charts(charts, records, figure):
    """Three charts: the loss per step and the learning rate per step of the run's records, then
    the k-NN chart, each pasted whole into the figure. Returns the k-NN chart's title, series
    and image."""
    assert len(charts) == 3
    (loss_series, *_), (lr_series,) = charts[0][0][0], charts[1][0][0]
    steps = [r["step"] for r in records if "loss" in r]
    assert list(loss_series[1]) == steps and list(loss_series[2]) == [r["loss"] for r in records
                                                                      if "loss" in r]
    assert list(lr_series[1]) == steps and list(lr_series[2]) == [r["lr"] for r in records
                                                                  if "lr" in r]
    for _, _, chart in charts:
        assert shows(figure, numpy.asarray(chart))
    ((series,),), options, image = charts[2]
    return {"title": options["title"], "series": series, "image": image}


def shows(figure, part):
    """Whether the image `part` (H, W, 3) is pasted whole into `figure` at its left margin,
    where plot.combine stacks charts."""
    height, width = part.shape[:2]
    left = PAD
    rows = numpy.flatnonzero((figure[:, left:left + width] == part[0]).all(axis=(1, 2)))
    return any(numpy.array_equal(figure[top:top + height, left:left + width], part)
               for top in rows if top + height <= len(figure))


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


def test_training_figure_draws_the_k_nn_records_of_a_run(tmp_path, drawn):
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
    records = [json.loads(line) for line in records]
    knn_chart = assert_training_charts(drawn["line_chart"], records, the_figure(out))
    label, steps, accuracies = knn_chart["series"]
    assert knn_chart["title"] == "k-NN top-1 accuracy"
    assert (list(steps), list(accuracies)) == ([100, 200, 300], [0.25, 0.5, 0.75])
    curve = curve_pixels(knn_chart["image"])                      # (row, column) of each pixel
    assert len(curve) > 200                                       # a line across the chart
    first, last = (curve[curve[:, 1] == column, 0].mean()
                   for column in (curve[:, 1].min(), curve[:, 1].max()))
    assert first > last + 100    # it rises (rows count down) from 0.25 to 0.75
