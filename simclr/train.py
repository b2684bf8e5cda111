"""python -m simclr.train: SimCLR pre-training.

One step: a batch of N images -> two augmented views each -> encoder and head on the 2N views
-> NT-Xent -> backward -> LARS (or SGD) update, at the learning rate the warm-up + cosine
schedule gives for this step. Defaults are the official CIFAR-10 recipe (docs/SIMCLR.md, Recipe).

Everything random is derived from --seed and the position in training (the epoch's batch order
from (seed, epoch), a step's augmentations from (seed, step)), so a run resumed from its
checkpoint continues exactly as if it had never stopped.
"""
import math
import signal
import sys
import time

import numpy

from autograd import Tensor
from autograd.backend import array_module, to_numpy
from nn.distributed import average_gradients, same_on_every_rank, synchronize_batch_norm
from nn.functional import cpu
from nn.optim import LARS, SGD, WarmupCosine, linear_scaled_lr, sqrt_scaled_lr
from simclr import cli, distributed
from simclr.augment import SimCLRAugment
from simclr.checkpoint import TrainingDiverged
from simclr.cli import UsageError
from simclr.data import load_from_arguments
from simclr.evaluate import encode, knn_accuracy
from simclr.interrupts import Interrupted, StopRequest
from simclr.loss import nt_xent
from simclr.model import SimCLR
from simclr.report import ProgressLine, format_duration, plot_loss_curve, read_metrics
from simclr.runfolder import (Checkpoints, NoFolder, NoLog, RunFolder, SilentStream,
                              prepare_folder)
from simclr.settings import (ARCHITECTURES, given_flags, parse_args, resolve_config,
                             transformations, validate)


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


def train(config, resumed=None, stream=sys.stderr, group=None):
    """Run (or continue) pre-training; returns the last step's metrics record.

        for each epoch, from the step the run has reached:
            train_epoch        one training_step per batch, each logged
            checkpoints.save   the whole state, after the epoch's last step
            monitor_knn        every --knn-every epochs, where there is a held-out split
    A stop request (Ctrl-C, SIGTERM: simclr/interrupts.py) ends the epoch when its step is
    done, and that step is saved before the program stops. In a data-parallel run (group:
    its communicator, simclr/distributed.py) every rank runs this alike, and rank 0 alone
    writes the folder, the metrics and the lines shown."""
    if group is None:
        run = Run(config, resumed)
    else:
        run = distributed.agree(group, lambda: Run(config, resumed, group))
        stream = stream if group.rank == 0 else SilentStream()
    with (RunFolder(config["out"]) if run.writes else NoFolder(config["out"])) as folder:
        metrics = prepare_folder(folder, config, run.source, run.step) if run.writes \
            else NoLog()
        progress = ProgressLine(config["epochs"], run.steps_per_epoch, stream)
        with StopRequest(stream, lambda: f"when step {run.step + 1} is done") as stop:
            checkpoints = Checkpoints(folder.file("checkpoint.npz"), run, stop)
            first_step, record = run.step, {}
            try:
                while run.step < run.max_steps and not run.stopping(stop):
                    record = train_epoch(run, metrics, progress, stop) or record
                    checkpoints.save()
                    if run.knn_due() and not run.stopping(stop) and run.writes:
                        name, held_out = run.splits.held_out()
                        accuracy = monitor_knn(run.model, run.splits.train, held_out)
                        metrics.write(step=run.step, epoch=run.epoch() - 1,
                                      knn_accuracy=accuracy, split=name)
                        stream.write(f"  k-NN accuracy on {name}: {accuracy:.4f}\n")
                if run.stop_agreed:
                    checkpoints.save_on_stop(folder.path, stream)
            except Interrupted as interrupted:
                checkpoints.say_if_unsaved(interrupted, stream)
                raise
            finally:
                metrics.close()
        if run.writes:
            plot_loss_curve(read_metrics(metrics.path), folder.file("loss.png"))
    stream.write(f"trained steps {first_step}..{run.step} of {run.total_steps} in "
                 f"{format_duration(time.perf_counter() - run.started)}; checkpoint: "
                 f"{folder.file('checkpoint.npz')}\n")
    return record


class Run:
    """One pre-training run: its data, model, optimiser, learning-rate schedule and
    augmentation, and `step`, the number of steps done (0, or the resumed checkpoint's).

    Everything random comes from --seed and the position: the epoch's batch order from
    (seed, 1, epoch), a step's augmentation from (seed, 2, step). In a data-parallel run
    (group), this rank's share of a step's batch is its rows rank * B .. (rank + 1) * B - 1."""

    def __init__(self, config, resumed=None, group=None):
        validate(config)
        self.config, self.group = config, group
        self.rank, self.size = (0, 1) if group is None else (group.rank, group.size)
        self.writes, self.stop_agreed = self.rank == 0, False
        self.xp = cli.require_backend(config["backend"])
        self.splits = load_from_arguments(config)
        self.images = self.splits.train.images
        self.batch_size = config["batch_size"]
        if self.batch_size % self.size:
            raise UsageError(f"--batch-size {self.batch_size} is not a multiple of the "
                             f"{self.size} ranks: each rank takes an equal share of every batch")
        self.local_batch = self.batch_size // self.size
        self.steps_per_epoch = len(self.images) // self.batch_size
        check_data(config, self.splits, self.steps_per_epoch)
        self.total_steps = config["epochs"] * self.steps_per_epoch
        self.max_steps = min(config["max_steps"] or self.total_steps, self.total_steps)
        self.device = "cpu" if self.xp is numpy else "cuda"
        self.model = build_model(config, self.images.shape[1]).to(device=self.device)
        if group is not None:
            synchronize_batch_norm(self.model, group)
        self.optimizer = build_optimizer(config, self.model)
        self.schedule = WarmupCosine(scaled_lr(config),
                                     round(config["warmup_epochs"] * self.steps_per_epoch),
                                     self.total_steps)
        self.augment = SimCLRAugment(size=self.images.shape[1],
                                     color_strength=config["color_strength"], blur=config["blur"],
                                     transformations=transformations(config))
        self.step, self.source, self._order = 0, None, (None, None)
        if resumed is not None:
            self.resume(*resumed)
        if group is not None and not same_on_every_rank(
                [p.data for p in self.model.parameters()], distributed.host(group)):
            raise UsageError(f"rank {self.rank}: the model's weights differ between the ranks; "
                             f"every rank must run the same code and settings")
        self.started = time.perf_counter()

    def resume(self, model_state, optimizer_state, meta, source):
        """Continue from a checkpoint's state (simclr.settings.resolve_config read it)."""
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

    def batch_images(self):
        """The uint8 images (N, H, W, 3) of the next step, on the run's device: the next
        batch_size of its epoch's random order."""
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        if self._order[0] != epoch:
            rng = numpy.random.default_rng([self.config["seed"], 1, epoch])
            self._order = (epoch, rng.permutation(len(self.images)))
        start = batch * self.batch_size + self.rank * self.local_batch    # this rank's share
        indices = self._order[1][start:start + self.local_batch]
        return self.xp.asarray(self.images[indices])

    def train_step(self):
        """One training step at `step`, then step + 1; returns (step + 1, the loss as a 0-d
        array on the run's device)."""
        rng = numpy.random.default_rng([self.config["seed"], 2, self.step])
        rows = None if self.group is None else (self.rank * self.local_batch, self.batch_size)
        loss = training_step(self.model, self.optimizer, self.augment, self.batch_images(), rng,
                             self.schedule(self.step), self.config["temperature"], self.group,
                             rows)
        self.step += 1
        return self.step, loss

    def stopping(self, stop):
        """Whether to stop after the step just done: a signal asked for it (on any rank: the
        ranks agree at every step, so that all stop after the same one)."""
        asked = stop.signum is not None
        if self.group is not None:
            asked = distributed.host(self.group).any(asked)
        self.stop_agreed = asked
        return asked

    def knn_due(self):
        """Whether the epoch just ended is one to measure k-NN accuracy after."""
        every = self.config["knn_every"]
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        return bool(every) and batch == 0 and epoch % every == 0 \
            and self.splits.held_out() is not None


def check_data(config, splits, steps_per_epoch):
    """One clear line where the data cannot serve the run's flags."""
    images = splits.train.images
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size {config['batch_size']} is more than the {len(images)} "
                         f"training images: lower --batch-size to at most {len(images)}")
    if config["knn_every"] and splits.held_out() is None:
        raise UsageError(f"--knn-every {config['knn_every']} needs a held-out split, and this data "
                         f"has no test split: carve one with --val-fraction or --val-per-class")
    if config["knn_every"] and splits.train.labels is None:
        raise UsageError(f"--knn-every {config['knn_every']} needs labelled images, and "
                         f"{config['data_dir']} has none (its images lie directly in it)")


LOSS_READ_EVERY = {"cpu": 1, "cuda": 16}  # steps between reads of the loss on the host


def train_epoch(run, metrics, progress, stop):
    """The steps from run.step to the end of its epoch (or to max_steps, or to a stop
    request), each logged and shown; returns the last step's record ({} if none ran).

    The losses stay on the device until LOSS_READ_EVERY of them are waiting: on a GPU,
    reading one makes the host wait until the step is done, where it could be queueing the
    next one. So a non-finite loss is seen up to that many steps late, when no checkpoint
    has been written since (one is written only after the losses before it are read)."""
    epoch = run.epoch()
    end = min(run.max_steps, (epoch + 1) * run.steps_per_epoch)
    clock, first_step, record, waiting = time.perf_counter(), run.step, {}, []
    while run.step < end and not run.stopping(stop):
        waiting.append(run.train_step())                              # (step, loss array)
        if len(waiting) == LOSS_READ_EVERY[run.device] or run.step == end:
            record, waiting = log_steps(run, waiting, metrics, clock, first_step), []
            progress.update(epoch, run.step - epoch * run.steps_per_epoch, record["loss"],
                            record["images_per_s"], (run.max_steps - run.step) * run.batch_size
                            / max(record["images_per_s"], 1e-9), final=run.step == end)
    if waiting:                                                       # a stop request
        record = log_steps(run, waiting, metrics, clock, first_step)
    return record


def log_steps(run, waiting, metrics, clock, first_step):
    """Read the losses of the steps `waiting` for it ((step, 0-d loss array) pairs) in one
    transfer, stop the run if one is not finite, and log a record per step; returns the
    last. In a data-parallel run the loss is the mean of the ranks' (one all-reduce): the
    loss of the global batch, the same on every rank."""
    xp = run.xp
    losses = xp.stack([loss for _, loss in waiting])
    if run.group is not None:
        run.group.allreduce(losses)
        losses /= run.size
    losses = to_numpy(losses).tolist()
    images_per_s = run.batch_size * (run.step - first_step) / max(time.perf_counter() - clock,
                                                                  1e-9)
    for (step, _), loss in zip(waiting, losses):
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at step {step}; the last checkpoint was kept. Try a "
                f"lower --lr or a higher --temperature")
        record = {"step": step, "epoch": (step - 1) // run.steps_per_epoch, "loss": loss,
                  "lr": run.schedule(step - 1), "images_per_s": images_per_s,
                  "elapsed": time.perf_counter() - run.started}
        metrics.write(**record)
    return record


def training_step(model, optimizer, augment, images, rng, lr, temperature, group=None,
                  rows=None):
    """One SimCLR step on a batch of uint8 images (N, H, W, 3); returns the loss, a 0-d array
    on the images' device (float(loss) reads it: on a GPU, after the step is done).

    In a data-parallel run (group: its communicator) the images are rows=(start, total) of the
    global batch: their views are those the whole batch would get, NT-Xent compares them with
    every rank's, batch norm takes the global batch's statistics (synchronize_batch_norm),
    and the gradients are averaged over the ranks before the update, which every rank then
    makes alike (nn/distributed/collectives.py)."""
    xp = array_module(images)
    views = xp.concatenate(augment.pair(images, rng, rows))  # both views of each: (2N, 3, H, W)
    loss = nt_xent(model(Tensor(views)), temperature, group)
    optimizer.zero_grad()
    loss.backward()
    if group is not None and group.size > 1:
        average_gradients(optimizer.params, group)
    optimizer.lr = lr
    optimizer.step()
    return loss.data


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
    argv = sys.argv[1:] if argv is None else argv
    if "--distributed" in argv:  # MPI first: the ranks then agree on every mistake (one line)
        return _main_of_a_rank(argv, distributed.start())
    args = parse_args(argv)
    _set_up_process(args)
    config, resumed = resolve_config(args, given_flags(argv))
    return _train(config, resumed)


def _set_up_process(args):
    cpu.reuse_freed_memory()  # reuse last step's pages instead of faulting in new ones
    if args.threads is not None:
        cli.at_least("--threads", args.threads, 1)
        cpu.set_num_threads(args.threads)
    # SIGTERM (a polite kill) ends the run as Ctrl-C does: before training starts as a
    # KeyboardInterrupt, during training as a request to stop (simclr/interrupts.py)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _main_of_a_rank(argv, mpi):
    """One rank of a data-parallel run (simclr/distributed.py): the flags checked on every
    rank alike, the settings (and a checkpoint to resume) from rank 0, training together; a
    failure during training ends every rank."""
    try:
        args = distributed.agree(mpi, lambda: parse_args(argv))
        distributed.agree(mpi, lambda: _set_up_process(args))
        config, resumed = distributed.broadcast(
            mpi, lambda: resolve_config(args, given_flags(argv)))
        group = distributed.agree(mpi, lambda: distributed.for_backend(mpi, config["backend"]))
    except distributed.ElsewhereFailed:
        return cli.EXIT_USAGE  # the rank that failed said why
    return _train(config, resumed, group)


def _train(config, resumed, group=None):
    try:
        train(config, resumed, group=group)
    except Interrupted as interrupted:
        return 128 + interrupted.signum
    except TrainingDiverged as error:
        if group is None or group.rank == 0:
            print(f"python -m simclr.train: error: {error}", file=sys.stderr)
        return 1
    except distributed.ElsewhereFailed:
        return cli.EXIT_USAGE
    except BaseException as error:
        if group is None or getattr(error, "agreed", False):
            raise
        distributed.fail_together(group, "python -m simclr.train", error)
    return 0


if __name__ == "__main__":
    cli.exit_program(main())
