"""A grid of pre-training runs, each evaluated alike, that an interruption never loses.

DIR (the experiment's --out) holds:

    experiment.json   what the grid is: the experiment's name and the settings every run shares
    runs/NAME/        one simclr.train run folder per point of the grid (config.json,
                      metrics.jsonl, checkpoint.npz, loss.png), and result.json once evaluated
    results.jsonl     one JSON line per evaluated run, in the grid's order
    table.md          the Markdown table; NAME.png, the figure

A run is done when its result.json exists. Running the same command again skips the runs that
are done, continues a run that has a checkpoint (simclr.train's --resume: it ends exactly as if
it had never stopped), and starts anew a run that stopped before its first checkpoint (it had
saved nothing worth keeping). Every file is written whole or not at all
(simclr/atomic_files.py), so a Ctrl-C, a kill or a full disk leaves every finished run, and
results.jsonl, as they were.
"""
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

from simclr.atomic_files import atomic_write
from simclr.cli import UsageError
from simclr.data import load_from_arguments
from simclr.evaluate import encode, knn_accuracy, linear_probe
from simclr.model import build_model
from simclr.pretraining import train
from simclr.pretraining_settings import parse_args, resolve_config, validate
from simclr.training.checkpoint import load_checkpoint
from simclr.training.report import format_duration

PROBE_EPOCHS = 100  # epochs of the linear probe on frozen features (simclr.linear_eval's default)
KNN_K = 200


@dataclass
class Point:
    """One run of a grid: `name` (its folder under runs/), the simclr.train settings it
    changes from the grid's shared ones, and the study's own labels for tables and figures
    (`labels`: e.g. {"first": "crop", "second": "jitter"}). `on_z`: evaluate the projections
    z = g(h) too, not only the representation h."""
    name: str
    settings: dict
    labels: dict = field(default_factory=dict)
    on_z: bool = False


def train_flags(settings):
    """simclr.train's command line for a dict of its settings (config keys: "batch_size": 64
    is --batch-size 64; True is the bare flag, False its --no- form, None leaves it out)."""
    argv = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


class Grid:
    """The runs of one experiment in the folder `out`, with the settings they share (`shared`,
    simclr.train's settings as config keys). `stream` shows the progress."""

    def __init__(self, experiment, out, shared, points, stream=sys.stderr):
        names = [point.name for point in points]
        if len(set(names)) != len(names):
            raise ValueError(f"the grid's run names repeat: {names}")
        self.experiment, self.out, self.shared = experiment, out, dict(shared)
        self.points, self.stream = points, stream
        self.description = {"experiment": experiment, "shared": self.shared,
                            "runs": {p.name: p.settings for p in points}}

    def settings(self, point):
        """simclr.train's settings for `point`: the shared ones, the point's, its folder. A
        micro-batch as large as the run's batch is left out: that run takes the plain step
        (which is what a micro-batch of the whole batch computes, bit for bit)."""
        settings = {**self.shared, **point.settings, "out": self.run_folder(point)}
        micro, batch = settings.get("micro_batch"), settings.get("batch_size")
        if micro is not None and batch is not None and micro >= batch:
            settings["micro_batch"] = None
        return settings

    def run_folder(self, point):
        return os.path.join(self.out, "runs", point.name)

    def claim_folder(self):
        """Make `out` this grid's folder, or check that it already is: a folder that holds
        another experiment, or this one at another scale, is refused (its runs would mix)."""
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise UsageError(f"--out {self.out}: exists and is not a folder")
        path = os.path.join(self.out, "experiment.json")
        if os.path.exists(path):
            try:
                with open(path) as file:
                    saved = json.load(file)
            except (OSError, ValueError) as error:
                raise UsageError(f"--out {self.out}: its experiment.json is unreadable "
                                 f"({error}); choose another --out") from None
            if saved != json.loads(json.dumps(self.description)):
                raise UsageError(f"--out {self.out} holds {saved.get('experiment')!r} with other "
                                 f"settings ({describe_difference(saved, self.description)}); "
                                 f"give the same flags to continue it, or another --out")
        elif os.path.isdir(self.out) and os.listdir(self.out):
            raise UsageError(f"--out {self.out}: the folder is not empty and holds no "
                             f"experiment; choose a new or empty folder")
        with atomic_write(path, "w") as file:
            json.dump(self.description, file, indent=2)

    def run(self):
        """Train and evaluate every run not yet done; returns the results, in grid order."""
        splits = self.check()
        self.claim_folder()
        started, results = time.perf_counter(), []
        for number, point in enumerate(self.points, 1):
            result = self.finished(point)
            if result is None:
                self.stream.write(f"[{number}/{len(self.points)}] {point.name}\n")
                seconds = time.perf_counter()
                self.train(point)
                result = self.evaluate(point, splits)
                result["seconds"] = time.perf_counter() - seconds
                with atomic_write(os.path.join(self.run_folder(point), "result.json"), "w") as f:
                    json.dump(result, f, indent=2)
                self.stream.write(f"  {point.name}: linear {result['linear_accuracy']:.4f}, "
                                  f"k-NN {result['knn_accuracy']:.4f} "
                                  f"({format_duration(result['seconds'])})\n")
            results.append(result)
            self.write_results(results)
        self.stream.write(f"{self.experiment}: {len(results)} runs in {self.out} "
                          f"({format_duration(time.perf_counter() - started)} this time)\n")
        return results

    def check(self):
        """Refuse (one line, naming the flag) a setting that no run of the grid can use, and
        load the data (the held-out split for the evaluations), before the folder is made the
        grid's: a mistake leaves no folder that only the mistaken flags could continue."""
        for point in self.points:
            validate(resolve_config(parse_args(train_flags(self.settings(point))))[0])
        return load_from_arguments(self.shared)

    def finished(self, point):
        """The result of `point` if it is done, else None."""
        path = os.path.join(self.run_folder(point), "result.json")
        if not os.path.exists(path):
            return None
        with open(path) as file:
            return json.load(file)

    def train(self, point):
        """Pre-train `point`: anew, or on from its checkpoint."""
        folder = self.run_folder(point)
        if os.path.exists(os.path.join(folder, "checkpoint.npz")):
            config, resumed = resolve_config(parse_args(["--resume", folder]), {"resume"})
        else:
            if os.path.isdir(folder):  # stopped before its first checkpoint: nothing to keep
                shutil.rmtree(folder)
            config, resumed = resolve_config(parse_args(train_flags(self.settings(point))))
        train(config, resumed, stream=self.stream)

    def evaluate(self, point, splits):
        """The linear probe and k-NN on the held-out split, for the run's encoder (h) and,
        where asked, its projections (z), computed from the run's checkpoint."""
        model_state, _, meta = load_checkpoint(
            os.path.join(self.run_folder(point), "checkpoint.npz"), flag="--out")
        config = meta["config"]
        model = build_model(config, splits.train.images.shape[1])
        model.load_state_dict(model_state)
        model.to(device="cpu" if config["backend"] == "numpy" else "cuda")
        split, held_out = splits.held_out()
        result = {"name": point.name, **point.labels, "settings": point.settings,
                  "step": meta["step"], "split": split, "train_images": len(splits.train),
                  "test_images": len(held_out)}
        spaces = [("", model.encoder)] + ([("z_", model)] if point.on_z else [])
        for prefix, network in spaces:
            result.update({prefix + key: value for key, value in
                           measure(network, splits.train, held_out).items()})
        return result

    def write_results(self, results):
        with atomic_write(os.path.join(self.out, "results.jsonl"), "w") as file:
            file.writelines(json.dumps(result) + "\n" for result in results)


def measure(network, train_set, held_out):
    """k-NN (cosine, k = 200) and linear-probe top-1 on `held_out` of the features that the
    frozen `network` gives, fitted on `train_set` (simclr/evaluate.py)."""
    classes = len(train_set.classes)
    train_features = encode(network, train_set.images)
    test_features = encode(network, held_out.images)
    knn = knn_accuracy(train_features, train_set.labels, test_features, held_out.labels,
                       k=min(KNN_K, len(train_set)), num_classes=classes)
    _, linear = linear_probe(train_features, train_set.labels, test_features, held_out.labels,
                             epochs=PROBE_EPOCHS, batch_size=min(256, len(train_set)),
                             num_classes=classes)
    return {"linear_accuracy": linear, "knn_accuracy": knn,
            "feature_dim": int(train_features.shape[1])}


def describe_difference(saved, wanted):
    """A short phrase naming the settings in which two grid descriptions differ."""
    if saved.get("experiment") != wanted["experiment"]:
        return f"experiment {saved.get('experiment')!r}, not {wanted['experiment']!r}"
    old, new = saved.get("shared", {}), wanted["shared"]
    keys = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    if keys:
        return ", ".join(f"{key} {old.get(key)!r} there, {new.get(key)!r} here" for key in keys)
    return "another list of runs"
