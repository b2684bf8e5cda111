"""Fine-tuning's network and loop: a pre-trained encoder (or a fresh one) with a new linear
classifier, trained end to end on the labelled subset (python -m simclr.finetune is the program).

The network (FineTuneNet):

    x --encoder f--> h [--the head's first layer: Linear, BN, ReLU--> g1(h)] --classifier--> logits

The optional head layer is SimCLRv2's ft_proj_selector = 1: fine-tuning "from the middle of the
projection head" (v2 found it better than from h with few labels). The classifier is new, a
Linear layer started as the official code starts its dense layers (N(0, 0.01^2), bias 0).

Freezing (freeze_until): the stages of the encoder up to and including the one named (stem,
layer1, ..., layer4) run under no_grad() in evaluation mode (their batch norm uses and keeps its
running statistics), and the optimiser does not hold their parameters: nothing of theirs changes.
That is the official fine_tune_after_block: 0 freezes the stem, k the stem and block groups 1..k,
4 the whole encoder, -1 (its default, and ours: no --freeze-until) nothing. The TF1 code stops
the gradient there but keeps those batch norms in training mode (their moving averages move);
the TF2 code (SimCLRv2) makes them non-trainable, so in inference mode, as here.

Everything that is not frozen trains as in pre-training: batch norm in training mode, normalising
with the batch's statistics and updating its running averages (as the official code fine-tunes);
evaluation uses the running statistics (evaluation mode).

The loop (finetune) is simclr.train's: the whole state saved after every epoch and on a stop
request (Ctrl-C, SIGTERM: the step in progress finishes and is saved), the epoch's order of the
labelled images from (seed, 1, epoch), a step's augmentation (crop + flip) from (seed, 2, step),
so a resumed run equals one never interrupted, bit for bit.
"""
import math
import sys
import time

import numpy

import nn
import nn.functional as F
from autograd import Tensor, no_grad
from autograd.backend import array_module
from nn.optim import SGD, WarmupCosine, linear_scaled_lr
from simclr.augment import LinearEvalAugment
from simclr.checkpoint import TrainingDiverged
from simclr.evaluate import to_network_input
from simclr.files import atomic_write
from simclr.interrupts import Interrupted, StopRequest
from simclr.model import dense
from simclr.report import ProgressLine, format_duration, plot_loss_curve, read_metrics
from simclr.runfolder import Checkpoints, RunFolder, prepare_folder
from simclr.train import build_model

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # the encoder's stages, input first
MOMENTUM = 0.9


class FineTuneNet(nn.Module):
    """encoder (an nn.ResNet) -> head_layer (a module, or None for none) -> a new Linear
    classifier to num_classes; the stages up to freeze_until (one of STAGES, or None) frozen."""

    def __init__(self, encoder, head_layer, num_classes, freeze_until=None, rng=None):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Identity() if head_layer is None else head_layer
        features = encoder.num_features if head_layer is None else head_layer[0].out_features
        self.classifier = dense(features, num_classes, rng)
        count = 0 if freeze_until is None else STAGES.index(freeze_until) + 1
        self.frozen_stages = STAGES[:count]
        self.train()  # the frozen stages in evaluation mode from the start

    def stage_modules(self, name):
        """The modules of an encoder stage."""
        encoder = self.encoder
        return [encoder.conv1, encoder.bn1, encoder.maxpool] if name == "stem" else \
            [getattr(encoder, name)]

    def frozen_modules(self):
        return [module for name in self.frozen_stages for module in self.stage_modules(name)]

    def trainable_parameters(self):
        """(name, parameter) pairs of everything not frozen: what the optimiser updates."""
        frozen = {id(p) for module in self.frozen_modules() for p in module.parameters()}
        return [(name, p) for name, p in self.named_parameters() if id(p) not in frozen]

    def train(self, mode=True):
        """Training mode (batch statistics) everywhere but in the frozen stages."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, x):
        encoder = self.encoder
        for name in STAGES:
            stage = encoder.stem if name == "stem" else getattr(encoder, name)
            if name in self.frozen_stages:
                with no_grad():  # no graph: the frozen stages' output is a constant input
                    x = stage(x)
            else:
                x = stage(x)
        h = encoder.avgpool(x).reshape(x.shape[0], encoder.num_features)
        return self.classifier(self.head(h))


def build_finetune_model(config, image_size, num_classes, pretrained_state=None):
    """The network of a fine-tuning run's settings: simclr.train's model (config's arch, width,
    head, ...; random weights from config's seed, exactly as build_model draws them), its
    pre-trained weights loaded when given, cut to the encoder (and the head's first layer with
    --from-head-layer 1), and a classifier drawn from (seed, 3)."""
    model = build_model(config, image_size)
    if pretrained_state is not None:
        model.load_state_dict(pretrained_state)
    head_layer = model.head[0:3] if config["from_head_layer"] == 1 else None  # Linear, BN, ReLU
    rng = numpy.random.default_rng([config["seed"], 3])
    return FineTuneNet(model.encoder, head_layer, num_classes, config["freeze_until"], rng)


class Run:
    """One fine-tuning run: the labelled subset, the network, Nesterov SGD and its schedule,
    and `step`, the steps done. It has what runfolder.Checkpoints reads (model, optimizer,
    step, steps_per_epoch, config, source, writes, group): its checkpoint's settings include
    the label indices, so a resumed run trains on the same images."""

    def __init__(self, config, xp, splits, pretrained_state=None, resumed=None):
        self.config, self.xp, self.group, self.writes = config, xp, None, True
        self.device = "cpu" if xp is numpy else "cuda"
        self.labelled = splits.train.subset(config["label_indices"])
        self.held_out = splits.held_out()
        self.batch_size = config["batch_size"]
        self.steps_per_epoch = len(self.labelled) // self.batch_size  # the remainder is dropped
        self.total_steps = config["epochs"] * self.steps_per_epoch
        self.max_steps = min(config["max_steps"] or self.total_steps, self.total_steps)
        image_size = self.labelled.images.shape[1]
        self.model = build_finetune_model(config, image_size, len(splits.train.classes),
                                          pretrained_state).to(device=self.device)
        self.optimizer = SGD(self.model.trainable_parameters(), lr=0.0, momentum=MOMENTUM,
                             nesterov=True, weight_decay=0.0)
        self.lr = linear_scaled_lr(config["lr"], self.batch_size)
        self.schedule = WarmupCosine(self.lr, 0, self.total_steps)   # no warm-up, cosine per step
        self.augment = LinearEvalAugment(image_size)
        self.step, self.source, self.stop_agreed = 0, None, False
        if resumed is not None:
            model_state, optimizer_state, meta, self.source = resumed
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state)
            self.step = meta["step"]
        self.started = time.perf_counter()

    def epoch(self):
        return self.step // self.steps_per_epoch

    def batch(self):
        """The next step's views (float32 (B, 3, H, W), crop + flip) and labels, on the device."""
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        order = numpy.random.default_rng([self.config["seed"], 1, epoch]).permutation(
            len(self.labelled))
        indices = order[batch * self.batch_size:(batch + 1) * self.batch_size]
        rng = numpy.random.default_rng([self.config["seed"], 2, self.step])
        views = self.augment(self.xp.asarray(self.labelled.images[indices]), rng)
        return views, self.xp.asarray(self.labelled.labels[indices])

    def train_step(self):
        """One step at `step`, then step + 1; returns (loss, correct predictions) on the host."""
        views, labels = self.batch()
        loss, correct = finetune_step(self.model, self.optimizer, views, labels,
                                      self.schedule(self.step))
        self.step += 1
        return float(loss), int(correct)

    def stopping(self, stop):
        self.stop_agreed = stop.signum is not None
        return self.stop_agreed

    def evaluation_due(self):
        """After the run's last step, and every --eval-every epochs."""
        every, (epoch, batch) = self.config["eval_every"], divmod(self.step, self.steps_per_epoch)
        return self.step == self.max_steps or (bool(every) and batch == 0 and epoch % every == 0)


def finetune_step(model, optimizer, views, labels, lr):
    """One step of supervised training: cross-entropy of the logits, backward, Nesterov SGD at
    `lr`. Returns (the loss, the number of correct predictions), as arrays on the device."""
    logits = model(Tensor(views))
    loss = F.cross_entropy(logits, labels, check_targets=False)  # the data set's valid labels
    optimizer.zero_grad()
    loss.backward()
    optimizer.lr = lr
    optimizer.step()
    return loss.data, (logits.data.argmax(axis=1) == labels).sum()


def top_k_accuracy(model, images, labels, k=5, batch_size=256):
    """(top-1, top-k) accuracy of the network on uint8 images (N, H, W, 3), in evaluation mode
    (running statistics), without a graph; the network's mode is restored. With fewer than k
    classes, top-k counts every class (it is 1)."""
    xp = array_module(next(iter(model.parameters())).data)
    was_training = model.training
    model.eval()
    top1 = topk = 0
    try:
        with no_grad():
            for start in range(0, len(images), batch_size):
                logits = model(Tensor(to_network_input(images[start:start + batch_size], xp)))
                best = xp.argsort(-logits.data, axis=1)[:, :k]
                hits = best == xp.asarray(labels[start:start + batch_size])[:, None]
                top1 += int(hits[:, 0].sum())
                topk += int(hits.any(axis=1).sum())
    finally:
        model.train(was_training)
    return top1 / len(images), topk / len(images)


def finetune(run, settings, stream=sys.stderr):
    """Train `run` to its end (or to a stop request) in its --out folder, which gets
    config.json (`settings`: the config without the label indices), labels.txt, metrics.jsonl,
    checkpoint.npz and loss.png; returns the last held-out evaluation {"top1", "top5", ...}
    (None if the run stopped before one).

    Per step metrics.jsonl has loss, lr and the batch's train accuracy (of the augmented
    views, in training mode); after an evaluation, top1 and top5 on the held-out split."""
    config, result = run.config, None
    with RunFolder(config["out"]) as folder:
        metrics = prepare_folder(folder, settings, run.source, run.step)
        write_label_indices(folder.file("labels.txt"), config["label_indices"])
        progress = ProgressLine(config["epochs"], run.steps_per_epoch, stream)
        with StopRequest(stream, lambda: f"when step {run.step + 1} is done") as stop:
            checkpoints = Checkpoints(folder.file("checkpoint.npz"), run, stop)
            first_step = run.step
            try:
                while run.step < run.max_steps and not run.stopping(stop):
                    train_epoch(run, metrics, progress, stop)
                    checkpoints.save()
                    if run.evaluation_due() and not run.stopping(stop):
                        result = evaluate(run, metrics, stream)
                if run.step == run.max_steps and result is None and not run.stop_agreed:
                    # resumed at its end
                    result = evaluate(run, metrics, stream)
                if run.stop_agreed:
                    checkpoints.save_on_stop(folder.path, stream)
            except Interrupted as interrupted:
                checkpoints.say_if_unsaved(interrupted, stream)
                raise
            finally:
                metrics.close()
        plot_loss_curve(read_metrics(metrics.path), folder.file("loss.png"))
    stream.write(f"fine-tuned steps {first_step}..{run.step} of {run.total_steps} in "
                 f"{format_duration(time.perf_counter() - run.started)}\n")
    return result


def train_epoch(run, metrics, progress, stop):
    """The steps from run.step to the end of its epoch (or to max_steps, or a stop request)."""
    epoch = run.epoch()
    end = min(run.max_steps, (epoch + 1) * run.steps_per_epoch)
    clock, first_step = time.perf_counter(), run.step
    while run.step < end and not run.stopping(stop):
        lr = run.schedule(run.step)
        loss, correct = run.train_step()
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {run.step}; the last "
                                   f"checkpoint was kept. Try a lower --lr")
        images_per_s = run.batch_size * (run.step - first_step) / max(
            time.perf_counter() - clock, 1e-9)
        metrics.write(step=run.step, epoch=epoch, loss=loss, lr=lr,
                      train_accuracy=correct / run.batch_size, images_per_s=images_per_s,
                      elapsed=time.perf_counter() - run.started)
        progress.update(epoch, run.step - epoch * run.steps_per_epoch, loss, images_per_s,
                        (run.max_steps - run.step) * run.batch_size / max(images_per_s, 1e-9),
                        final=run.step == end)


def evaluate(run, metrics, stream):
    """Top-1 and top-5 accuracy on the held-out split, logged and shown; returns the record."""
    name, held_out = run.held_out
    top1, top5 = top_k_accuracy(run.model, held_out.images, held_out.labels)
    record = {"step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch, "top1": top1,
              "top5": top5, "split": name}
    metrics.write(**record)
    stream.write(f"  {name}: top-1 {top1:.4f}, top-5 {top5:.4f}\n")
    return record


def write_label_indices(path, indices):
    """labels.txt: the labelled images' indices into the training split, one per line (what
    --label-indices reads back)."""
    with atomic_write(path, "w") as file:
        file.writelines(f"{int(index)}\n" for index in indices)

