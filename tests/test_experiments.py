"""python -m simclr.experiments: every study's tiny grid writes its results, table and figures;
an interrupted grid continues where it stopped and ends as an uninterrupted one; mistakes are one
line. Also the pieces it stands on: SimCLRAugment's switched-off steps, --augmentations,
balanced_subset and --train-per-class."""
import json
import os

import numpy
import pytest
from PIL import Image

from helpers import knn_vote, recording
from simclr import train
from simclr.augment import TRANSFORMATIONS, SimCLRAugment
from simclr.augment.crop import to_float_nchw
from simclr.data import balanced_subset, load_from_arguments
from simclr.data.errors import DataError
from simclr.experiments import __main__ as experiments
from simclr.experiments import grid as grid_module
from simclr.experiments.studies import STUDIES
from simclr.training.checkpoint import load_checkpoint
from simclr.training.interrupts import Interrupted

TINY = ["--scale", "tiny", "--threads", "1"]


def run(name, out, *extra):
    return experiments.main([name, "--out", str(out), *TINY, *extra])


def lines(path):
    with open(path) as file:
        return [json.loads(line) for line in file]


def assert_figure(path, min_size=(300, 200)):
    """A PNG of a sensible size that is not blank: many colours, much that is not white."""
    image = Image.open(path).convert("RGB")
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    pixels = numpy.asarray(image).reshape(-1, 3)
    assert (pixels != 255).any(axis=1).mean() > 0.02
    assert len(numpy.unique(pixels, axis=0)) > 20


def assert_measured(result, prefix, knn_call, probe_call):
    """The result's accuracies (of h, or of z with prefix "z_") are what the evaluation
    measured on the 12 held-out images: the k-NN vote (against one written out in
    tests/helpers.py) and the probe's held-out top-1 (the second of its (train, test) pair)."""
    (train_features, train_labels, test_features, test_labels), options, knn = knn_call
    args, _, (_, test_top1) = probe_call
    assert len(test_labels) == 12 and all(a is b for a, b in zip(args, knn_call[0]))
    winners, clear = knn_vote(train_features, train_labels, test_features, options["k"], 0.1,
                              options["num_classes"])
    assert abs(knn - (winners == test_labels).mean()) <= (~clear).mean()
    assert result[prefix + "knn_accuracy"] == knn
    assert result[prefix + "linear_accuracy"] == test_top1


@pytest.mark.parametrize("name, runs, figures", [
    ("augmentations", 15 + 2, ["augmentations.png", "color-strength.png"]),
    ("head", 3, ["head.png"]),
    ("batch-epochs", 4, ["batch-epochs.png", "batch-size.png"]),
    ("temperature", 2, ["temperature.png"])])
def test_each_tiny_grid_writes_one_line_per_run_a_table_and_its_figures(
        tmp_path, capsys, monkeypatch, name, runs, figures):
    knn_calls, probe_calls = [], []
    monkeypatch.setattr(grid_module, "knn_accuracy",
                        recording(knn_calls, grid_module.knn_accuracy))
    monkeypatch.setattr(grid_module, "linear_probe",
                        recording(probe_calls, grid_module.linear_probe))
    assert run(name, tmp_path / name) == 0
    results = lines(tmp_path / name / "results.jsonl")
    assert len(results) == runs == len(os.listdir(tmp_path / name / "runs"))
    for result in results:
        for prefix in ("", "z_") if "z_linear_accuracy" in result else ("",):
            assert_measured(result, prefix, knn_calls.pop(0), probe_calls.pop(0))
        assert result["split"] == "val" and result["test_images"] == 12
        folder = tmp_path / name / "runs" / result["name"]
        assert {"checkpoint.npz", "config.json", "metrics.jsonl", "result.json"} <= set(
            os.listdir(folder))
    assert knn_calls == probe_calls == []  # one evaluation for each result, no other
    table = (tmp_path / name / "table.md").read_text()
    assert table.startswith(f"# {name}\n") and "synthetic: 36 images" in table
    assert table in capsys.readouterr().out
    for figure in figures:
        assert_figure(tmp_path / name / figure)


def test_batch_epochs_takes_micro_batches_only_for_batches_above_m(tmp_path):
    """The tiny scale's batch-epochs: batches 6 and 12 with micro-batches of 6, so the runs of
    batch 12 take two micro-batches a step and those of 6 the plain step (no --micro-batch)."""
    assert run("batch-epochs", tmp_path / "be") == 0
    for result in lines(tmp_path / "be" / "results.jsonl"):
        with open(tmp_path / "be" / "runs" / result["name"] / "config.json") as file:
            config = json.load(file)
        assert config["batch_size"] == result["batch_size"]
        assert config["micro_batch"] == (6 if result["batch_size"] == 12 else None)
    assert "batches above 6 in micro-batches of 6" in (tmp_path / "be" / "table.md").read_text()


def test_each_run_trains_with_the_settings_its_point_names(tmp_path):
    assert run("head", tmp_path / "head") == 0
    for result in lines(tmp_path / "head" / "results.jsonl"):
        with open(tmp_path / "head" / "runs" / result["name"] / "config.json") as file:
            config = json.load(file)
        assert config["head"] == result["head"] and config["width"] == 0.0625
        assert "z_linear_accuracy" in result
        if result["head"] == "none":
            assert result["feature_dim"] == result["z_feature_dim"]
        else:
            assert result["z_feature_dim"] == result["proj_dim"] == config["proj_dim"]


def test_an_interrupted_grid_continues_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """The grid stops in its second run (after that run's first step was saved, as Ctrl-C
    would leave it); the same command again skips the first run, continues the second from
    its checkpoint and runs the third: every checkpoint equals an uninterrupted grid's."""
    assert run("temperature", tmp_path / "whole", "--temperatures", "0.1,0.5,1") == 0
    real_train, calls = grid_module.train, []

    def stop_in_second_run(config, resumed=None, stream=None):
        calls.append(config["out"])
        if len(calls) == 2:
            real_train(dict(config, max_steps=1), resumed, stream=stream)
            raise Interrupted(2, saved=True)
        return real_train(config, resumed, stream=stream)

    monkeypatch.setattr(grid_module, "train", stop_in_second_run)
    out = tmp_path / "stopped"
    assert run("temperature", out, "--temperatures", "0.1,0.5,1") == 130
    assert len(lines(out / "results.jsonl")) == 1
    first_result = (out / "runs" / "tau-0.1" / "result.json").read_text()
    monkeypatch.setattr(grid_module, "train", real_train)
    calls.clear()
    assert run("temperature", out, "--temperatures", "0.1,0.5,1") == 0
    assert (out / "runs" / "tau-0.1" / "result.json").read_text() == first_result
    assert [r["name"] for r in lines(out / "results.jsonl")] == ["tau-0.1", "tau-0.5", "tau-1"]
    for name in ("tau-0.1", "tau-0.5", "tau-1"):
        ours, _, meta = load_checkpoint(str(out / "runs" / name / "checkpoint.npz"))
        whole, _, whole_meta = load_checkpoint(str(tmp_path / "whole" / "runs" / name /
                                                   "checkpoint.npz"))
        assert meta["step"] == whole_meta["step"]
        for key in whole:
            numpy.testing.assert_array_equal(ours[key], whole[key], err_msg=f"{name} {key}")
    assert lines(out / "results.jsonl") == [
        dict(r, seconds=s["seconds"]) for r, s in zip(lines(tmp_path / "whole" / "results.jsonl"),
                                                      lines(out / "results.jsonl"))]


def test_a_run_stopped_before_its_first_checkpoint_starts_anew(tmp_path):
    out = tmp_path / "grid"
    assert run("temperature", out) == 0
    folder = out / "runs" / "tau-1"
    for name in ("checkpoint.npz", "result.json"):
        os.remove(folder / name)           # as if killed during its first epoch
    assert run("temperature", out) == 0
    assert (folder / "result.json").exists() and len(lines(out / "results.jsonl")) == 2


@pytest.mark.parametrize("extra, says", [
    (["--temperatures", "a,b"], "--temperatures a,b: expected a comma list of numbers"),
    (["--dims", "0"], "--dims 0: every value must be positive"),
    (["--batches", "2.5"], "--batches 2.5: expected a comma list of whole numbers")])
def test_a_bad_axis_is_one_line_naming_its_flag(tmp_path, capsys, extra, says):
    name = {"--temperatures": "temperature", "--dims": "head", "--batches": "batch-epochs"}
    assert run(name[extra[0]], tmp_path / "x", *extra) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_a_folder_of_another_grid_or_of_other_files_is_refused(tmp_path, capsys):
    assert run("temperature", tmp_path / "grid") == 0
    capsys.readouterr()
    assert run("head", tmp_path / "grid") == 2
    assert "holds 'temperature'" in capsys.readouterr().err
    assert run("temperature", tmp_path / "grid", "--width", "0.125") == 2
    assert "width 0.0625 there, 0.125 here" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert run("temperature", tmp_path / "other") == 2
    err = capsys.readouterr().err
    assert "not empty and holds no experiment" in err and err.count("\n") == 1


def test_the_scale_and_the_flags_make_the_shared_settings():
    args = experiments.parse_args(["augmentations", "--out", "x"])
    shared = experiments.shared_settings(args, set())
    assert shared["epochs"] == experiments.SCALES["cpu"]["epochs"]["augmentations"]
    assert shared["train_per_class"] == 500 and shared["dataset"] == "cifar10"
    argv = ["head", "--out", "x", "--scale", "tiny", "--dataset", "folder", "--data-dir", "d",
            "--val-per-class", "3", "--width", "0.5"]
    shared = experiments.shared_settings(experiments.parse_args(argv),
                                         experiments.given_flags(argv))
    assert shared["dataset"] == "folder" and shared["val_per_class"] == 3
    assert "val_fraction" not in shared and "synthetic_size" not in shared
    assert shared["width"] == 0.5
    # a data set given keeps the scale's budget: the cpu scale's 500 images of each class
    argv = ["batch-epochs", "--out", "x", "--dataset", "folder", "--data-dir", "d"]
    shared = experiments.shared_settings(experiments.parse_args(argv),
                                         experiments.given_flags(argv))
    assert shared["train_per_class"] == 500 and shared["dataset"] == "folder"
    assert shared["micro_batch"] == experiments.SCALES["cpu"]["micro_batch"]["batch-epochs"]
    argv += ["--train-per-class", "20", "--micro-batch", "32"]
    shared = experiments.shared_settings(experiments.parse_args(argv),
                                         experiments.given_flags(argv))
    assert shared["train_per_class"] == 20 and shared["micro_batch"] == 32
    argv += ["--lr", "0.075", "--lr-scaling", "sqrt"]
    shared = experiments.shared_settings(experiments.parse_args(argv),
                                         experiments.given_flags(argv))
    assert shared["lr_scaling"] == "sqrt" and shared["lr"] == 0.075
    line = experiments.describe(shared, [])
    assert "width 0.125, lr 0.075 x sqrt(B), batch 128" in line
    assert "(unless varied); batches above 32 in micro-batches of 32;" in line


def test_every_study_names_its_runs_uniquely():
    for study in STUDIES.values():
        names = [point.name for point in study.points(study.axes)]
        assert len(names) == len(set(names))
    assert len(STUDIES["augmentations"].points({"strengths": ()})) == 15


# ---- the pieces the experiments stand on

def test_switched_off_steps_leave_the_images_and_the_others_see_the_same_draws():
    images = numpy.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=numpy.uint8)
    none = SimCLRAugment(16, transformations=())(images, numpy.random.default_rng(1))
    numpy.testing.assert_array_equal(none, to_float_nchw(images))
    full = SimCLRAugment(16, 0.5, blur=True)(images, numpy.random.default_rng(1))
    listed = SimCLRAugment(16, 0.5, transformations=TRANSFORMATIONS)(
        images, numpy.random.default_rng(1))
    numpy.testing.assert_array_equal(full, listed)
    jitter = SimCLRAugment(16, 0.5, transformations=("jitter",))
    views = jitter(images, numpy.random.default_rng(1))
    assert not numpy.array_equal(views, none) and not jitter.blur
    # without the crop, the jitter alone keeps every pixel's place: the gray stays gray
    gray = numpy.full((2, 16, 16, 3), 128, dtype=numpy.uint8)
    out = jitter(gray, numpy.random.default_rng(2))
    assert numpy.ptp(out, axis=(2, 3)).max() < 1e-6
    with pytest.raises(ValueError, match="unknown transformations"):
        SimCLRAugment(16, transformations=("cutout",))


@pytest.mark.parametrize("extra, says", [
    (["--augmentations", "crop,cutout"], "--augmentations crop,cutout: expected 'none' or"),
    (["--augmentations", "crop,crop"], "--augmentations crop,crop: expected 'none' or"),
    (["--augmentations", "crop", "--blur"], "--blur with --augmentations crop, which has no")])
def test_train_refuses_a_bad_augmentations_list_in_one_line(tmp_path, capsys, extra, says):
    argv = ["--dataset", "synthetic", "--synthetic-size", "32", "--arch", "resnet18", "--width",
            "0.0625", "--batch-size", "8", "--epochs", "1", "--out", str(tmp_path / "r"), *extra]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_balanced_subset_is_balanced_and_the_same_for_the_same_seed():
    labels = numpy.repeat(numpy.arange(4), [10, 12, 9, 30])
    subset = balanced_subset(labels, per_class=5, seed=1)
    assert list(numpy.bincount(labels[subset])) == [5, 5, 5, 5]
    assert list(subset) == sorted(set(subset))
    numpy.testing.assert_array_equal(subset, balanced_subset(labels, per_class=5, seed=1))
    assert not numpy.array_equal(subset, balanced_subset(labels, per_class=5, seed=2))
    tenth = balanced_subset(labels, fraction=0.2, seed=0)   # 0.2 * 61 / 4 -> 3 of each
    assert list(numpy.bincount(labels[tenth])) == [3, 3, 3, 3]
    with pytest.raises(DataError, match="needs more than class 2's 9 images"):
        balanced_subset(labels, per_class=10)
    with pytest.raises(DataError, match="exactly one of"):
        balanced_subset(labels)


def test_train_per_class_takes_a_balanced_subset_of_the_training_split_only():
    config = {"dataset": "synthetic", "synthetic_size": 60, "val_fraction": 0.25, "seed": 0}
    whole = load_from_arguments(config)
    splits = load_from_arguments(dict(config, train_per_class=2))
    counts = numpy.bincount(splits.train.labels, minlength=len(whole.train.classes))
    assert set(counts) == {2} and len(splits.val) == len(whole.val)
    smallest = numpy.bincount(whole.train.labels).min()
    with pytest.raises(DataError, match=f"--train-per-class 99 is more than the {smallest}"):
        load_from_arguments(dict(config, train_per_class=99))


def test_only_runs_the_points_it_names_and_refuses_an_unknown_one(tmp_path, capsys):
    assert run("augmentations", tmp_path / "some", "--only", "crop,jitter+grayscale") == 0
    assert [r["name"] for r in lines(tmp_path / "some" / "results.jsonl")] == [
        "crop", "jitter+grayscale"]
    capsys.readouterr()
    assert run("augmentations", tmp_path / "bad", "--only", "crop,cutout") == 2
    err = capsys.readouterr().err
    assert "--only crop,cutout: no run named cutout" in err and err.count("\n") == 1


@pytest.mark.parametrize("extra, says", [
    (["--width", "-1"], "--width must be a positive finite number, got -1.0"),
    (["--backend", "cupy"], "--backend cupy"),
    (["--dataset", "folder", "--data-dir", "/nonexistent"], "/nonexistent")])
def test_a_mistake_is_refused_before_the_folder_becomes_the_grids(tmp_path, capsys, extra, says):
    assert run("temperature", tmp_path / "grid", *extra) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "grid" / "experiment.json").exists()
    assert run("temperature", tmp_path / "grid") == 0     # the right flags then take the folder
