"""Fine-tuning with few labels: a pre-trained encoder (or a fresh one) under a new linear
classifier (simclr.model.FineTuneNet), trained end to end on the labelled subset by the training
loop (simclr/training/loop.py); python -m simclr.finetune is the program.

The recipe (SimCLR paper, appendix B.5; the official --train_mode=finetune; docs/SIMCLR.md):
cross-entropy on the labelled images, Nesterov momentum SGD at lr x B/256 with no warm-up and no
weight decay, cosine decay to 0 evaluated at every step, augmentation by random resized crop and
flip only. As in pre-training, the epoch's order of the labelled images comes from (seed, 1,
epoch) and a step's augmentation from (seed, 2, step), so a resumed run equals one never
interrupted, bit for bit.

With --micro-batch M the step takes the batch M images at a time, by plain gradient
accumulation (finetune_step): cross-entropy is a mean over images, so the micro-batches' shares
of it add up to the whole batch's loss and their gradients to its gradient. (Pre-training
cannot do this: NT-Xent couples every image with every other; simclr/pretraining.py.)
"""
import sys

import nn.functional as F
from autograd import Tensor, no_grad
from autograd.backend import array_module
from nn.optim import SGD, WarmupCosine, linear_scaled_lr
from simclr.atomic_files import atomic_write
from simclr.augment import LinearEvalAugment
from simclr.evaluate import to_network_input
from simclr.model import build_finetune_model
from simclr.pretraining_settings import check_micro_batch
from simclr.training import loop
from simclr.training.runfolder import prepare_folder

MOMENTUM = 0.9


def finetune(run, stream=sys.stderr):
    """Train `run` (a FineTuning) to its end, or to a stop request, in its --out folder, which
    gets config.json (the settings without the label indices), labels.txt, metrics.jsonl,
    checkpoint.npz and loss.png; returns the last held-out evaluation {"top1", "top5", ...}
    (None if the run stopped before one).

    Per step metrics.jsonl has loss, lr and the batch's train accuracy (of the augmented
    views, in training mode); after an evaluation, top1 and top5 on the held-out split."""
    _, evaluation = loop.train(run, stream)
    return evaluation


class FineTuning(loop.TrainingRun):
    """One fine-tuning run: the labelled subset, the network, Nesterov SGD and its schedule,
    and what the training loop asks of a task: the step, and the held-out top-1 and top-5 after
    the last step and every --eval-every epochs. Its checkpoint's settings include the label
    indices, so a resumed run trains on the same images."""
    done = "fine-tuned"
    evaluated_at_the_end = True  # its result is the evaluation of the network it ends with

    def __init__(self, config, xp, splits, pretrained_state=None, resumed=None):
        self.labelled = splits.train.subset(config["label_indices"])
        self.held_out = splits.held_out()
        super().__init__(config, xp, len(self.labelled))
        image_size = self.labelled.images.shape[1]
        self.model = build_finetune_model(config, image_size, len(splits.train.classes),
                                          pretrained_state).to(device=self.device)
        self.optimizer = SGD(self.model.trainable_parameters(), lr=0.0, momentum=MOMENTUM,
                             nesterov=True, weight_decay=0.0)
        self.lr = linear_scaled_lr(config["lr"], self.batch_size)
        self.schedule = WarmupCosine(self.lr, 0, self.total_steps)   # no warm-up, cosine per step
        self.augment = LinearEvalAugment(image_size)
        check_micro_batch(config.get("micro_batch"), self.batch_size)
        if resumed is not None:
            self.resume(*resumed)

    def prepare(self, folder):
        """config.json holds the settings without the label indices, which go to labels.txt."""
        settings = {key: value for key, value in self.config.items() if key != "label_indices"}
        metrics = prepare_folder(folder, settings, self.source, self.step)
        write_label_indices(folder.file("labels.txt"), self.config["label_indices"])
        return metrics

    def train_step(self):
        """One step at `step`, then step + 1; returns (the loss, the number of correct
        predictions), 0-d arrays on the device."""
        indices = self.batch_indices()
        views = self.augment(self.xp.asarray(self.labelled.images[indices]), self.step_rng())
        labels = self.xp.asarray(self.labelled.labels[indices])
        loss, correct = finetune_step(self.model, self.optimizer, views, labels,
                                      self.schedule(self.step), self.config.get("micro_batch"))
        self.step += 1
        return loss, correct

    def step_metrics(self, correct):
        return {"train_accuracy": correct / self.batch_size}

    def evaluation_due(self):
        """After the run's last step, and every --eval-every epochs."""
        every, (epoch, batch) = self.config["eval_every"], divmod(self.step, self.steps_per_epoch)
        return self.step == self.max_steps or (bool(every) and batch == 0 and epoch % every == 0)

    def evaluate(self, metrics, stream):
        """Top-1 and top-5 accuracy on the held-out split, logged and shown; returns the
        record."""
        name, held_out = self.held_out
        top1, top5 = top_k_accuracy(self.model, held_out.images, held_out.labels)
        record = {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch,
                  "top1": top1, "top5": top5, "split": name}
        metrics.write(**record)
        stream.write(f"  {name}: top-1 {top1:.4f}, top-5 {top5:.4f}\n")
        return record


def finetune_step(model, optimizer, views, labels, lr, micro_batch=None):
    """One step of supervised training on views (B, 3, H, W) and their labels (B,):
    cross-entropy of the logits, backward, Nesterov SGD at `lr`. Returns (the batch's mean
    loss, its number of correct predictions), 0-d arrays on the device.

    micro_batch: M images through the network at a time (M divides B), by plain gradient
    accumulation. The loss is a mean over the batch, L = (1/B) sum_i l_i, so with the batch
    cut into micro-batches m of M images,
        L = sum_m (M/B) L_m,   L_m = (1/M) sum_{i in m} l_i,   dL/dtheta = sum_m (M/B) dL_m/dtheta:
    each micro-batch's forward and backward of (M/B) L_m adds its share to the gradients, and
    one update follows, exactly the whole batch's. Batch norm is the one layer that mixes
    images: it normalises each micro-batch by that micro-batch's statistics and updates its
    running statistics once per micro-batch. None, or M = B, is the plain step."""
    optimizer.zero_grad()
    if micro_batch is None or micro_batch == len(views):
        logits = model(Tensor(views))
        loss = F.cross_entropy(logits, labels, check_targets=False)  # the data set's labels
        loss.backward()
        loss, correct = loss.data, (logits.data.argmax(axis=1) == labels).sum()
    else:
        loss, correct = backward_in_micro_batches(model, views, labels, micro_batch)
    optimizer.lr = lr
    optimizer.step()
    return loss, correct


def backward_in_micro_batches(model, views, labels, micro_batch):
    """Forward and backward of each micro-batch's share (M/B) L_m of the batch's mean
    cross-entropy, M images at a time (see finetune_step); the parameters' gradients add up.
    Returns (the batch's loss, its number of correct predictions), summed over the
    micro-batches on the device (no wait for it)."""
    loss = correct = 0
    for start in range(0, len(views), micro_batch):
        rows = slice(start, start + micro_batch)
        logits = model(Tensor(views[rows]))                                # (M, classes)
        share = F.cross_entropy(logits, labels[rows], check_targets=False) \
            * (micro_batch / len(views))                                   # (M/B) L_m
        share.backward()
        loss = loss + share.data
        correct = correct + (logits.data.argmax(axis=1) == labels[rows]).sum()
    return loss, correct


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


def write_label_indices(path, indices):
    """labels.txt: the labelled images' indices into the training split, one per line (what
    --label-indices reads back)."""
    with atomic_write(path, "w") as file:
        file.writelines(f"{int(index)}\n" for index in indices)
