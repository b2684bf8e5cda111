"""python -m simclr.train: SimCLR pre-training.

One step: a batch of N images -> two augmented views each -> encoder and head on the 2N views
-> NT-Xent -> backward -> LARS (or SGD) update, at the learning rate the warm-up + cosine
schedule gives for this step. Defaults are the official CIFAR-10 recipe (docs/SIMCLR.md, Recipe).

Everything random is derived from --seed and the position in training (the epoch's batch order
from (seed, epoch), a step's augmentations from (seed, step)), so a run resumed from its
checkpoint continues exactly as if it had never stopped.
"""
import json
import math
import os
import signal
import sys
import time

import numpy

from autograd import Tensor
from autograd.backend import array_module
from nn.functional import cpu
from nn.optim import LARS, SGD, WarmupCosine, linear_scaled_lr, sqrt_scaled_lr
from simclr import cli
from simclr.augment import SimCLRAugment
from simclr.checkpoint import NonFiniteState, save_checkpoint
from simclr.cli import UsageError
from simclr.data import load_from_arguments
from simclr.evaluate import encode, knn_accuracy
from simclr.files import atomic_write, remove_temporaries
from simclr.interrupts import Interrupted, StopRequest
from simclr.loss import nt_xent
from simclr.model import SimCLR
from simclr.report import MetricsLog, ProgressLine, format_duration, plot_loss_curve, read_metrics
from simclr.runfolder import RunFolder
from simclr.settings import ARCHITECTURES, given_flags, parse_args, resolve_config, validate


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def scaled_lr(config):
    base, batch = config["lr"], config["batch_size"]
    return {"linear": linear_scaled_lr, "sqrt": sqrt_scaled_lr,
            "none": lambda lr, _: lr}[config["lr_scaling"]](base, batch)


def build_model(config, image_size):
    cifar_stem = config["cifar_stem"]
    if cifar_stem is None:
        cifar_stem = image_size <= 32
    rng = numpy.random.default_rng([config["seed"], 0])
    width = int(config["width"]) if float(config["width"]).is_integer() else config["width"]
    encoder = ARCHITECTURES[config["arch"]](cifar_stem=cifar_stem, width=width,
                                            zero_init_residual=True, rng=rng)
    return SimCLR(encoder, head=config["head"], proj_dim=config["proj_dim"], rng=rng)


def build_optimizer(config, model):
    if config["optimizer"] == "lars":
        return LARS(model.named_parameters(), lr=0.0, momentum=0.9,
                    weight_decay=config["weight_decay"])
    return SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=config["weight_decay"])


def train(config, resumed=None, stream=sys.stderr):
    """Run (or continue) pre-training; returns the final metrics record."""
    validate(config)
    xp = cli.require_backend(config["backend"])
    device = "cpu" if xp is numpy else "cuda"
    splits = load_from_arguments(config)
    images = splits.train.images
    batch_size = config["batch_size"]
    steps_per_epoch = len(images) // batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size {batch_size} is more than the {len(images)} training "
                         f"images: lower --batch-size to at most {len(images)}")
    if config["knn_every"] and splits.held_out() is None:
        raise UsageError(f"--knn-every {config['knn_every']} needs a held-out split, and this data "
                         f"has no test split: carve one with --val-fraction or --val-per-class")
    if config["knn_every"] and splits.train.labels is None:
        raise UsageError(f"--knn-every {config['knn_every']} needs labelled images, and "
                         f"{config['data_dir']} has none (its images lie directly in it)")
    total_steps = config["epochs"] * steps_per_epoch
    max_steps = min(config["max_steps"] or total_steps, total_steps)

    model = build_model(config, images.shape[1]).to(device=device)
    optimizer = build_optimizer(config, model)
    schedule = WarmupCosine(scaled_lr(config), round(config["warmup_epochs"] * steps_per_epoch),
                            total_steps)
    augment = SimCLRAugment(size=images.shape[1], color_strength=config["color_strength"],
                            blur=config["blur"])
    step, source = 0, None
    if resumed is not None:
        model_state, optimizer_state, meta, source = resumed
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        step = meta["step"]
        if step > total_steps:
            raise UsageError(f"--epochs {config['epochs']}: the run in {source} is at step {step}, "
                             f"past the {total_steps} steps of {config['epochs']} epochs; give at "
                             f"least --epochs {-(-step // steps_per_epoch)}")

    with RunFolder(config["out"]) as folder:
        metrics = prepare_folder(folder, config, source, step)
        progress = ProgressLine(config["epochs"], steps_per_epoch, stream)
        saved_step = step if resumed is not None else None  # the step of the checkpoint on disk

        def kept():
            return ("no checkpoint was written" if saved_step is None else
                    f"the checkpoint of step {saved_step} is kept")

        def save_at(step):
            nonlocal saved_step
            with stop.saving():
                try:
                    save_checkpoint(folder.file("checkpoint.npz"), model, optimizer,
                                    {"step": step, "epoch": step // steps_per_epoch,
                                     "config": config})
                except NonFiniteState as error:
                    raise TrainingDiverged(f"the model became non-finite by step {step}: "
                                           f"{error}; {kept()}. Try a lower --lr") from None
            saved_step = step

        held_out = splits.held_out()
        start_time, start_step = time.perf_counter(), step
        record = {}

        def train_epoch():
            """The steps from `step` to the end of its epoch (or to max_steps, or to a stop
            request); returns the last step's record."""
            nonlocal step, record
            epoch = step // steps_per_epoch
            order = numpy.random.default_rng([config["seed"], 1, epoch]).permutation(len(images))
            epoch_start, epoch_first_step = time.perf_counter(), step
            while step < min(max_steps, (epoch + 1) * steps_per_epoch) and stop.signum is None:
                batch = step - epoch * steps_per_epoch
                indices = order[batch * batch_size:(batch + 1) * batch_size]
                loss = training_step(model, optimizer, augment, xp.asarray(images[indices]),
                                     numpy.random.default_rng([config["seed"], 2, step]),
                                     schedule(step), config["temperature"], step)
                step += 1
                images_per_s = batch_size * (step - epoch_first_step) / max(
                    time.perf_counter() - epoch_start, 1e-9)
                record = {"step": step, "epoch": epoch, "loss": loss, "lr": schedule(step - 1),
                          "images_per_s": images_per_s, "elapsed": time.perf_counter() - start_time}
                metrics.write(**record)
                progress.update(epoch, batch + 1, loss, images_per_s,
                                (max_steps - step) * batch_size / max(images_per_s, 1e-9),
                                final=step == (epoch + 1) * steps_per_epoch or step == max_steps)

        with StopRequest(stream, lambda: f"when step {step + 1} is done") as stop:
            try:
                while step < max_steps and stop.signum is None:
                    train_epoch()
                    save_at(step)
                    epoch, batch = divmod(step, steps_per_epoch)
                    if config["knn_every"] and batch == 0 and held_out is not None \
                            and epoch % config["knn_every"] == 0 and stop.signum is None:
                        accuracy = monitor_knn(model, splits.train, held_out[1])
                        metrics.write(step=step, epoch=epoch - 1, knn_accuracy=accuracy,
                                      split=held_out[0])
                        stream.write(f"  k-NN accuracy on {held_out[0]}: {accuracy:.4f}\n")
                if stop.signum is not None:
                    if saved_step != step:
                        save_at(step)
                    stream.write(f"stopped: checkpoint saved at step {step} in {folder.path}; "
                                 f"continue with --resume {folder.path}\n")
                    raise Interrupted(stop.signum, saved=True)
            except Interrupted as interrupted:
                if not interrupted.saved:
                    stream.write(f"stopped at once: step {step + 1} was not finished; {kept()}\n")
                raise
            finally:
                metrics.close()
        plot_loss_curve(read_metrics(metrics.path), folder.file("loss.png"))
    done = time.perf_counter() - start_time
    stream.write(f"trained steps {start_step}..{step} of {total_steps} in {format_duration(done)}; "
                 f"checkpoint: {folder.file('checkpoint.npz')}\n")
    return record


RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.npz", "loss.png")


def prepare_folder(folder, config, source, step):
    """Make the --out folder (held by this process) ready for a run that starts at `step`, and
    return its metrics log. A new run, or a resumed one that writes to another folder, needs a
    folder that holds no run. The temporaries of writes that a kill cut short are removed; the
    settings are written to config.json; the log starts with the history of the resumed run up
    to its checkpoint's step (the steps after it are done again)."""
    if source is None or os.path.realpath(source) != os.path.realpath(folder.path):
        folder.check_holds_no_run()
    for name in RUN_FILES:
        remove_temporaries(folder.file(name))
    history = ()
    if source is not None and os.path.exists(os.path.join(source, "metrics.jsonl")):
        history = read_metrics(os.path.join(source, "metrics.jsonl"), until_step=step)
    with atomic_write(folder.file("config.json"), "w") as file:
        json.dump(config, file, indent=2)
    return MetricsLog(folder.file("metrics.jsonl"), history)


def training_step(model, optimizer, augment, images, rng, lr, temperature, step):
    """One SimCLR step on a batch of uint8 images (N, H, W, 3); returns the loss as a float."""
    xp = array_module(images)
    views = xp.concatenate(augment.pair(images, rng))  # the two views of each image: (2N, 3, H, W)
    loss = nt_xent(model(Tensor(views)), temperature)
    value = float(loss.data)
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"the loss became {value} at step {step}; no update was applied and the last "
            f"checkpoint was kept. Try a lower --lr or a higher --temperature")
    optimizer.zero_grad()
    loss.backward()
    optimizer.lr = lr
    optimizer.step()
    return value


def monitor_knn(model, train, held_out, max_train=10000):
    """k-NN accuracy of the current encoder, with a random subset of the training images (the
    same one each time) as the memory bank; never the first ones, which a folder sorts by class."""
    count = min(len(train), max_train)
    bank = numpy.sort(numpy.random.default_rng(0).choice(len(train), count, replace=False))
    memory = encode(model.encoder, train.images[bank])
    queries = encode(model.encoder, held_out.images)
    return knn_accuracy(memory, train.labels[bank], queries, held_out.labels,
                        num_classes=len(train.classes))


def main(argv=None):
    """The program: exit status 0 when done, 2 for a user's mistake (one line, see
    simclr/cli.py), 130 after Ctrl-C, 1 when training diverged."""
    return cli.run(_main, argv, prog="python -m simclr.train")


def _main(argv):
    args = parse_args(argv)
    cpu.reuse_freed_memory()  # reuse last step's pages instead of faulting in new ones
    if args.threads is not None:
        cli.at_least("--threads", args.threads, 1)
        cpu.set_num_threads(args.threads)
    config, resumed = resolve_config(args, given_flags(sys.argv[1:] if argv is None else argv))
    # SIGTERM (a polite kill) ends the run as Ctrl-C does: before training starts as a
    # KeyboardInterrupt, during training as a request to stop (simclr/interrupts.py)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        train(config, resumed)
    except Interrupted as interrupted:
        return 128 + interrupted.signum
    except TrainingDiverged as error:
        print(f"python -m simclr.train: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.exit_program(main())
