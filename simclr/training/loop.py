"""The training loop that pre-training and fine-tuning share. Each task (simclr/pretraining.py,
simclr/finetuning.py) is a TrainingRun that says what a step is and how to evaluate; the loop
does the rest, alike for both:

    for each epoch, from the step the run has reached:
        train_epoch        run.train_step() per step; the steps' losses read from the device a
                           few at a time (log_steps), one record per step in metrics.jsonl, and
                           the progress line
        checkpoints.save   the whole state, after the epoch's last step
        run.evaluate       when run.evaluation_due(): k-NN accuracy (pre-training), held-out
                           top-1 and top-5 (fine-tuning)

Everything random comes from --seed and the position in training: the epoch's order of the
images from (seed, 1, epoch), a step's augmentation from (seed, 2, step). So a run resumed from
its checkpoint continues exactly as if it had never stopped.

A stop request (Ctrl-C, SIGTERM: interrupts.py) ends the epoch when its step is done, and that
step is saved before the program stops. In a data-parallel run (group: its communicator,
distributed.py) every rank runs this alike, and rank 0 alone writes the folder, the metrics and
the lines shown.
"""
import math
import sys
import time

import numpy

from autograd.backend import to_numpy
from simclr.cli import UsageError
from simclr.plot import plot_loss_curve
from simclr.training import distributed
from simclr.training.checkpoint import TrainingDiverged
from simclr.training.interrupts import Interrupted, StopRequest
from simclr.training.report import ProgressLine, format_duration, read_metrics
from simclr.training.runfolder import (Checkpoints, NoFolder, NoLog, RunFolder, SilentStream,
                                       prepare_folder)

# Steps between reads of the losses on the host. On a GPU, reading one makes the host wait until
# its step is done, where it could be queueing the next ones.
READ_EVERY = {"cpu": 1, "cuda": 16}


class TrainingRun:
    """What every training run holds and counts: its settings (`config`: seed, batch_size,
    epochs, max_steps, out), the model, optimiser and learning-rate `schedule` that the task
    makes, and `step`, the number of steps done (0, or the resumed checkpoint's). Its data are
    `count` images; in a data-parallel run (group), this rank's share of a step's batch is its
    rows rank * B .. (rank + 1) * B - 1 (B = batch_size / ranks).

    A task (a subclass) makes the model, optimizer and schedule, and gives the step
    (train_step, step_metrics) and the evaluation (evaluation_due, evaluate).
    """
    done = "trained"                       # the last line: "trained steps 0..6 of 6 in ..."
    divergence_hint = "Try a lower --lr"   # what a diverged run's error line suggests
    evaluated_at_the_end = False           # True: its result is the evaluation after its last
                                           # step, made again when it resumes at its end

    def __init__(self, config, xp, count, group=None):
        self.config, self.xp, self.group, self.count = config, xp, group, count
        self.device = "cpu" if xp is numpy else "cuda"
        self.rank, self.size = (0, 1) if group is None else (group.rank, group.size)
        self.writes, self.stop_agreed = self.rank == 0, False
        self.batch_size = config["batch_size"]
        if self.batch_size % self.size:
            raise UsageError(f"--batch-size {self.batch_size} is not a multiple of the "
                             f"{self.size} ranks: each rank takes an equal share of every batch")
        self.local_batch = self.batch_size // self.size
        self.steps_per_epoch = count // self.batch_size  # the last, incomplete batch is dropped
        self.total_steps = config["epochs"] * self.steps_per_epoch
        self.max_steps = min(config["max_steps"] or self.total_steps, self.total_steps)
        self.step, self.source, self._order = 0, None, (None, None)
        self.started = time.perf_counter()

    def resume(self, model_state, optimizer_state, meta, source):
        """Continue from a checkpoint's state, saved in the folder `source`."""
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        self.step, self.source = meta["step"], source
        if self.step > self.total_steps:
            epochs = self.config["epochs"]
            raise UsageError(f"--epochs {epochs}: the run in {source} is at step {self.step}, "
                             f"past the {self.total_steps} steps of {epochs} epochs; give at "
                             f"least --epochs {-(-self.step // self.steps_per_epoch)}")

    def epoch(self):
        """The epoch that the next step belongs to."""
        return self.step // self.steps_per_epoch

    def batch_indices(self):
        """The indices of the next step's images (this rank's share): the next batch_size of its
        epoch's random order, drawn from (seed, 1, epoch)."""
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        if self._order[0] != epoch:
            rng = numpy.random.default_rng([self.config["seed"], 1, epoch])
            self._order = (epoch, rng.permutation(self.count))
        start = batch * self.batch_size + self.rank * self.local_batch    # this rank's share
        return self._order[1][start:start + self.local_batch]

    def step_rng(self):
        """The random generator of the next step (its augmentation), from (seed, 2, step)."""
        return numpy.random.default_rng([self.config["seed"], 2, self.step])

    def train_step(self):
        """One step at `step`, then step + 1; returns the step's numbers as 0-d arrays on the
        device, the loss first (the loop reads them a few steps at a time)."""
        raise NotImplementedError

    def step_metrics(self, *rest):
        """The metrics of a step besides its loss, made of the numbers train_step returned after
        the loss (none here)."""
        return {}

    def evaluation_due(self):
        """Whether to evaluate after the epoch just ended."""
        raise NotImplementedError

    def evaluate(self, metrics, stream):
        """Evaluate the model, write the record to `metrics` and a line to `stream`; returns the
        record."""
        raise NotImplementedError

    def stopping(self, stop):
        """Whether to stop after the step just done: a signal asked for it (on any rank: the
        ranks agree at every step, so that all stop after the same one)."""
        asked = stop.signum is not None
        if self.group is not None:
            asked = distributed.host(self.group).any(asked)
        self.stop_agreed = asked
        return asked

    def prepare(self, folder):
        """Make the --out folder ready (prepare_folder: config.json, the history); returns the
        metrics log."""
        return prepare_folder(folder, self.config, self.source, self.step)


def train(run, stream=sys.stderr):
    """Train `run` to its end, or to a stop request, in its --out folder, which gets config.json,
    metrics.jsonl, checkpoint.npz and loss.png; returns (the last step's record, the last
    evaluation's record), {} and None where there was none."""
    stream = stream if run.writes else SilentStream()
    out = run.config["out"]
    with (RunFolder(out) if run.writes else NoFolder(out)) as folder:
        metrics = run.prepare(folder) if run.writes else NoLog()
        progress = ProgressLine(run.config["epochs"], run.steps_per_epoch, stream)
        with StopRequest(stream, lambda: f"when step {run.step + 1} is done") as stop:
            checkpoints = Checkpoints(folder.file("checkpoint.npz"), run, stop)
            first_step = run.step
            try:
                record, evaluation = train_epochs(run, checkpoints, metrics, progress, stop,
                                                  stream)
                if run.stop_agreed:
                    checkpoints.save_on_stop(folder.path, stream)
            except Interrupted as interrupted:
                checkpoints.say_if_unsaved(interrupted, stream)
                raise
            finally:
                metrics.close()
        if run.writes:
            plot_loss_curve(read_metrics(metrics.path), folder.file("loss.png"))
    stream.write(f"{run.done} steps {first_step}..{run.step} of {run.total_steps} in "
                 f"{format_duration(time.perf_counter() - run.started)}; checkpoint: "
                 f"{folder.file('checkpoint.npz')}\n")
    return record, evaluation


def train_epochs(run, checkpoints, metrics, progress, stop, stream):
    """The epochs from run.step on, each saved and evaluated when due; returns (the last step's
    record, the last evaluation's record)."""
    record, evaluation = {}, None
    while run.step < run.max_steps and not run.stopping(stop):
        record = train_epoch(run, metrics, progress, stop) or record
        checkpoints.save()
        if run.evaluation_due() and not run.stopping(stop) and run.writes:
            evaluation = run.evaluate(metrics, stream)
    if run.evaluated_at_the_end and evaluation is None and run.step == run.max_steps \
            and not run.stop_agreed:
        evaluation = run.evaluate(metrics, stream)  # resumed at its end
    return record, evaluation


def train_epoch(run, metrics, progress, stop):
    """The steps from run.step to the end of its epoch (or to max_steps, or to a stop
    request), each logged and shown; returns the last step's record ({} if none ran).

    The steps' numbers stay on the device until READ_EVERY of them are waiting, so a
    non-finite loss is seen up to that many steps late, when no checkpoint has been written
    since (one is written only after the losses before it are read)."""
    epoch = run.epoch()
    end = min(run.max_steps, (epoch + 1) * run.steps_per_epoch)
    clock, first_step, record, waiting = time.perf_counter(), run.step, {}, []
    while run.step < end and not run.stopping(stop):
        numbers = run.train_step()
        waiting.append((run.step, numbers))
        if len(waiting) == READ_EVERY[run.device] or run.step == end:
            record, waiting = log_steps(run, waiting, metrics, clock, first_step), []
            progress.update(epoch, run.step - epoch * run.steps_per_epoch, record["loss"],
                            record["images_per_s"], (run.max_steps - run.step) * run.batch_size
                            / max(record["images_per_s"], 1e-9), final=run.step == end)
    if waiting:                                                       # a stop request
        record = log_steps(run, waiting, metrics, clock, first_step)
    return record


def log_steps(run, waiting, metrics, clock, first_step):
    """Read the numbers of the steps `waiting` for it ((step, its 0-d arrays) pairs) in one
    transfer, stop the run if a loss is not finite, and log a record per step; returns the
    last. In a data-parallel run the numbers are the mean of the ranks' (one all-reduce): the
    loss of the global batch, the same on every rank."""
    xp = run.xp
    numbers = xp.stack([xp.stack(step_numbers) for _, step_numbers in waiting])  # (steps, k)
    if run.group is not None:
        run.group.allreduce(numbers)
        numbers /= run.size
    numbers = to_numpy(numbers).tolist()
    images_per_s = run.batch_size * (run.step - first_step) / max(time.perf_counter() - clock,
                                                                  1e-9)
    for (step, _), (loss, *rest) in zip(waiting, numbers):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {step}; the last checkpoint "
                                   f"was kept. {run.divergence_hint}")
        record = {"step": step, "epoch": (step - 1) // run.steps_per_epoch, "loss": loss,
                  "lr": run.schedule(step - 1), **run.step_metrics(*rest),
                  "images_per_s": images_per_s, "elapsed": time.perf_counter() - run.started}
        metrics.write(**record)
    return record
