"""SimCLR pre-training: the step, where its images come from, and the k-NN monitor; run by the
training loop (simclr/training/loop.py) from the settings of python -m simclr.train.

One step: a batch of N images -> two augmented views each -> encoder and head on the 2N views
-> NT-Xent -> backward -> LARS (or SGD) update, at the learning rate the warm-up + cosine
schedule gives for this step. Defaults are the official CIFAR-10 recipe (docs/SIMCLR.md, Recipe).
With --micro-batch M the encoder takes M images at a time and NT-Xent is still the whole batch's
(backward_in_micro_batches; docs/SIMCLR.md, "Big batches on small memory").

Everything random is derived from --seed and the position in training (the epoch's batch order
from (seed, 1, epoch), a step's augmentations from (seed, 2, step)), so a run resumed from its
checkpoint continues exactly as if it had never stopped.
"""
import sys
from contextlib import contextmanager

import numpy

import nn
from autograd import Tensor, no_grad
from autograd.backend import array_module
from nn.distributed import average_gradients, same_on_every_rank
from nn.layers import synchronize_batch_norm
from nn.optim import LARS, SGD, WarmupCosine, linear_scaled_lr, sqrt_scaled_lr
from simclr import cli
from simclr.augment import SimCLRAugment
from simclr.cli import UsageError
from simclr.data import load_from_arguments
from simclr.evaluate import encode, knn_accuracy
from simclr.loss import nt_xent
from simclr.model import build_model
from simclr.pretraining_settings import check_micro_batch, transformations, validate
from simclr.training import distributed, loop


def scaled_lr(config):
    """The peak learning rate: --lr scaled by the batch size as --lr-scaling says."""
    base, batch = config["lr"], config["batch_size"]
    return {"linear": linear_scaled_lr, "sqrt": sqrt_scaled_lr,
            "none": lambda lr, _: lr}[config["lr_scaling"]](base, batch)


def build_optimizer(config, model):
    """LARS (batch norm and biases excluded from its adaptation and decay), or SGD; momentum
    0.9. The learning rate is set at every step by the schedule."""
    if config["optimizer"] == "lars":
        return LARS(model.named_parameters(), lr=0.0, momentum=0.9,
                    weight_decay=config["weight_decay"])
    return SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=config["weight_decay"])


def train(config, resumed=None, stream=sys.stderr, group=None):
    """Run (or continue) pre-training with the settings `config` (simclr.pretraining_settings),
    from `resumed` (a checkpoint's model state, optimiser state, meta and folder) if given;
    returns the last step's metrics record. In a data-parallel run (group: its communicator,
    simclr/training/distributed.py) every rank calls this alike."""
    if group is None:
        run = Pretraining(config, resumed)
    else:
        run = distributed.agree(group, lambda: Pretraining(config, resumed, group))
    record, _ = loop.train(run, stream)
    return record


class Pretraining(loop.TrainingRun):
    """One pre-training run: its data, model, optimiser, learning-rate schedule and
    augmentation, and what the training loop asks of a task: the step, and the k-NN accuracy
    every --knn-every epochs."""
    divergence_hint = "Try a lower --lr or a higher --temperature"

    def __init__(self, config, resumed=None, group=None):
        validate(config)
        xp = cli.require_backend(config["backend"])
        self.splits = load_from_arguments(config)
        self.images = self.splits.train.images
        super().__init__(config, xp, len(self.images), group)
        check_data(config, self.splits, self.steps_per_epoch)
        check_micro_batch(config.get("micro_batch"), self.batch_size, self.size)
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
        if resumed is not None:
            self.resume(*resumed)
        if group is not None and not same_on_every_rank(
                [p.data for p in self.model.parameters()], distributed.host(group)):
            raise UsageError(f"rank {self.rank}: the model's weights differ between the ranks; "
                             f"every rank must run the same code and settings")

    def train_step(self):
        """One training step at `step`, then step + 1; returns (the loss as a 0-d array on the
        run's device,)."""
        images = self.xp.asarray(self.images[self.batch_indices()])  # (N, H, W, 3) uint8
        rows = None if self.group is None else (self.rank * self.local_batch, self.batch_size)
        loss = training_step(self.model, self.optimizer, self.augment, images, self.step_rng(),
                             self.schedule(self.step), self.config["temperature"], self.group,
                             rows, self.config.get("micro_batch"))
        self.step += 1
        return (loss,)

    def evaluation_due(self):
        """Whether the epoch just ended is one to measure k-NN accuracy after."""
        every = self.config["knn_every"]
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        return bool(every) and batch == 0 and epoch % every == 0 \
            and self.splits.held_out() is not None

    def evaluate(self, metrics, stream):
        """The k-NN accuracy of the encoder on the held-out split, logged and shown."""
        name, held_out = self.splits.held_out()
        accuracy = monitor_knn(self.model, self.splits.train, held_out)
        record = {"step": self.step, "epoch": self.epoch() - 1, "knn_accuracy": accuracy,
                  "split": name}
        metrics.write(**record)
        stream.write(f"  k-NN accuracy on {name}: {accuracy:.4f}\n")
        return record


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


def training_step(model, optimizer, augment, images, rng, lr, temperature, group=None,
                  rows=None, micro_batch=None):
    """One SimCLR step on a batch of uint8 images (N, H, W, 3); returns the loss, a 0-d array
    on the images' device (float(loss) reads it: on a GPU, after the step is done).

    In a data-parallel run (group: its communicator) the images are rows=(start, total) of the
    global batch: their views are those the whole batch would get, NT-Xent compares them with
    every rank's, batch norm takes the global batch's statistics (synchronize_batch_norm),
    and the gradients are averaged over the ranks before the update, which every rank then
    makes alike (nn/distributed/collectives.py).

    micro_batch: M images (2M views) through the encoder at a time, by cached embedding
    gradients (backward_in_micro_batches); None, or M = N, is the plain step. The views'
    random draws are made for the whole batch at once either way, so the random streams do
    not depend on M; with M < N each micro-batch's views are made when the encoder takes them
    (twice: pair_on_demand makes the same views each time), so the step never holds the whole
    batch's."""
    optimizer.zero_grad()
    if micro_batch is None or micro_batch == len(images):
        views = array_module(images).concatenate(augment.pair(images, rng, rows))  # (2N, ...)
        loss = nt_xent(model(Tensor(views)), temperature, group)
        loss.backward()
    else:
        views = augment.pair_on_demand(images, rng, rows)
        loss = backward_in_micro_batches(model, views, len(images), temperature, micro_batch,
                                         group)
    if group is not None and group.size > 1:
        average_gradients(optimizer.params, group)
    optimizer.lr = lr
    optimizer.step()
    return loss.data


def backward_in_micro_batches(model, views, n, temperature, micro_batch, group=None):
    """NT-Xent over both views of n images with the model run on M images (2M views) at a
    time; returns the loss, having added its gradient to every parameter's .grad (Gao et al.
    2021). views(start, stop): the two views of images start..stop-1, each (stop - start, 3,
    H, W), the same each time they are asked for (SimCLRAugment.pair_on_demand).

    The loss L(z) couples every embedding z_i with every other (each is a negative of the
    rest), but the model maps each micro-batch's views to its own rows of z. So, by the chain
    rule, dL/dtheta = sum over micro-batches m of (dz_m/dtheta)^T g_m with g = dL/dz:
        1. z for every micro-batch, without a graph (the memory of one micro-batch at a time);
        2. L and g = dL/dz from z as a leaf: a small graph of (2N, d) rows;
        3. each micro-batch again, with its graph, and backward from z_m with upstream g_m;
           the parameters' gradients add up over the micro-batches.
    Micro-batch k holds images kM .. kM + M - 1 and both their views (rows i and i + N of
    z), so that it holds whole positive pairs.

    Batch norm normalises each micro-batch by its own statistics (in a data-parallel run: the
    k-th micro-batch of every rank together), the same in both passes, so that the two passes
    compute the same z; its running statistics are updated in the second pass alone, once per
    micro-batch (running_statistics_left_alone)."""
    starts = range(0, n, micro_batch)

    def views_of(start):                                             # (2M, 3, H, W)
        first, second = views(start, min(start + micro_batch, n))
        return Tensor(array_module(first).concatenate([first, second]))
    with no_grad(), running_statistics_left_alone(model):
        z = [model(views_of(start)).data for start in starts]          # each (2M, d)
    xp = array_module(z[0])
    d = z[0].shape[1]
    z = xp.concatenate([rows.reshape(2, -1, d) for rows in z], axis=1)  # (2, N, d)
    z = Tensor(z.reshape(2 * n, d), requires_grad=True)
    loss = nt_xent(z, temperature, group)
    loss.backward()
    upstream = z.grad.reshape(2, n, d)                                # dL/dz, (2, N, d)
    for start in starts:
        rows = upstream[:, start:start + micro_batch]
        model(views_of(start)).backward(rows.reshape(2 * rows.shape[1], d))
    return loss


@contextmanager
def running_statistics_left_alone(model):
    """Inside: the batch-norm layers of `model` normalise by the batch's statistics as in
    training, but keep no running statistics and count no batch (F.batch_norm, given no running
    statistics, keeps none); outside, each layer has its own arrays back, untouched."""
    layers = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    kept = [(layer.running_mean, layer.running_var, layer.num_batches_tracked)
            for layer in layers]
    try:
        for layer in layers:
            layer.running_mean = layer.running_var = None
            layer.num_batches_tracked = numpy.zeros((), dtype="int64")  # a count thrown away
        yield
    finally:
        for layer, (mean, var, count) in zip(layers, kept):
            layer.running_mean, layer.running_var, layer.num_batches_tracked = mean, var, count


def monitor_knn(model, train, held_out, max_train=10000):
    """k-NN accuracy of the current encoder, with a random subset of the training images (the
    same one each time) as the memory bank; never the first ones, which a folder sorts by class."""
    count = min(len(train), max_train)
    bank = numpy.sort(numpy.random.default_rng(0).choice(len(train), count, replace=False))
    memory = encode(model.encoder, train.images[bank])
    queries = encode(model.encoder, held_out.images)
    return knn_accuracy(memory, train.labels[bank], queries, held_out.labels,
                        num_classes=len(train.classes))
