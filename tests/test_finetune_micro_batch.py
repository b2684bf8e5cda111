"""Fine-tuning in micro-batches (python -m simclr.finetune --micro-batch M): plain gradient
accumulation (simclr.finetuning.finetune_step).

The claim, in float64 to 1e-10: a step in micro-batches of M is the plain step of the whole
batch B (the loss and the number of correct predictions, every gradient, the weights after
Nesterov SGD, batch norm's running statistics and counts) of a network whose batch norm
normalises each group of M images by the group's statistics. Cross-entropy is a mean over the
images, so its micro-batches' shares (M/B) L_m add up to it exactly; batch norm is the one layer
that mixes images, and the reference here runs the model on each group with its graph, puts the
logits together and takes one cross-entropy and one backward: the whole batch's step, with
grouped batch norm, without accumulation. M = B is the plain step bit for bit. Then the
program: the views are drawn once for the whole batch, its mistakes are one line naming
--micro-batch, a run may change M on --resume, and on the rehearsal of a GPU the step waits for
the device no more often than the plain one.
"""
import json

import numpy
import pytest

from autograd import Tensor, cat
import nn.functional as F
from nn.optim import SGD
from simclr import finetune, finetuning
from simclr.model import build_finetune_model
from simclr.training.checkpoint import load_checkpoint
from helpers import assert_close_step_results, assert_same_step_results, relative_error
from test_finetune import TINY, assert_same_state, finetuned, one_line_error
from test_finetune import own_cache  # noqa: F401 (an autouse fixture: image caches in tmp_path)

TOLERANCE = 1e-10
IMAGES, CLASSES = 8, 4          # per step; 8 x 8 px
CONFIG = {"arch": "resnet18", "width": 0.0625, "cifar_stem": True, "seed": 0,
          "head": "nonlinear", "proj_dim": 16, "from_head_layer": 1, "freeze_until": None}
SCRATCH = ["--from-scratch", "--arch", "resnet18", "--width", "0.0625"] + TINY  # B = 8


@pytest.fixture(autouse=True)
def one_cpu_thread(threads):
    """One CPU thread: every sum in one order."""
    from nn.runtime import threads as cpu_threads
    cpu_threads.set_num_threads(1)


def _model():
    """A tiny FineTuneNet in float64: the encoder's BatchNorm2d layers and, under the
    classifier, the head's first layer with its BatchNorm1d (--from-head-layer 1)."""
    return build_finetune_model(CONFIG, 8, CLASSES).to(dtype="float64")


def _optimizer(model):
    return SGD(model.trainable_parameters(), lr=0.0, momentum=finetuning.MOMENTUM,
               nesterov=True, weight_decay=0.0)


def _batches(steps=2):
    """Each step's views (steps, B, 3, 8, 8) and labels (steps, B)."""
    rng = numpy.random.default_rng(3)
    return rng.random((steps, IMAGES, 3, 8, 8)), rng.integers(0, CLASSES, (steps, IMAGES))


def _results(model, optimizer, numbers):
    """What a test compares: (loss, correct) of each step, the gradients before the last
    update, the buffers (running statistics and counts) and the weights after it."""
    return (numpy.array(numbers), [p.grad.copy() for p in optimizer.params],
            {name: numpy.array(b) for name, b in model.named_buffers()},
            [p.data.copy() for p in model.parameters()])


def _micro_batched_steps(micro_batch, steps=2):
    """finetune_step, as the program runs it, on each step's views."""
    model = _model()
    optimizer = _optimizer(model)
    numbers = [tuple(map(float, finetuning.finetune_step(model, optimizer, views, labels, 0.1,
                                                         micro_batch)))
               for views, labels in zip(*_batches(steps))]
    return _results(model, optimizer, numbers)


def _grouped_batch_norm_steps(micro_batch, steps=2):
    """The reference: the plain step of the whole batch (one mean cross-entropy, one backward)
    of the network whose batch norm normalises each group of M images by its own statistics."""
    model = _model()
    optimizer = _optimizer(model)
    numbers = []
    for views, labels in zip(*_batches(steps)):
        logits = cat([model(Tensor(views[start:start + micro_batch]))
                      for start in range(0, IMAGES, micro_batch)])             # (B, classes)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.lr = 0.1
        optimizer.step()
        numbers.append((float(loss.data), float((logits.data.argmax(axis=1) == labels).sum())))
    return _results(model, optimizer, numbers)


def _compare(ours, reference):
    """Losses and buffers to 1e-10 relative, the correct counts exactly; gradients and weights
    relative to the largest of all (a bias before a batch norm has a gradient of 0
    analytically: its own relative error means nothing)."""
    numbers = reference[0]
    assert relative_error(ours[0][:, 0], numbers[:, 0]) < TOLERANCE, "loss"
    assert numpy.array_equal(ours[0][:, 1], numbers[:, 1]), "correct predictions"
    assert_close_step_results(ours, reference, TOLERANCE)


@pytest.mark.parametrize("micro_batch", [2, 4])
def test_a_micro_batched_step_equals_the_whole_batch_step_with_batch_norm_per_group(
        micro_batch):
    """Two Nesterov steps (the second uses the first's momentum): the batch's loss and correct
    count, every gradient, the weights, the running statistics and num_batches_tracked (once
    per micro-batch)."""
    _compare(_micro_batched_steps(micro_batch), _grouped_batch_norm_steps(micro_batch))


def test_a_micro_batch_of_the_whole_batch_is_the_plain_step_bit_for_bit():
    plain, whole = _micro_batched_steps(None), _micro_batched_steps(IMAGES)
    assert_same_step_results(plain, whole)


def test_micro_batches_differ_from_the_plain_step_only_through_batch_norms_groups():
    """The check above has something to see: with M < B the step is not the plain one (batch
    norm's groups), and the plain step is the reference with one group."""
    plain = _micro_batched_steps(None, steps=1)
    _compare(plain, _grouped_batch_norm_steps(IMAGES, steps=1))
    assert relative_error(_micro_batched_steps(2, steps=1)[3][0], plain[3][0]) > 1e-6


# ----- the program -------------------------------------------------------------------------

def test_the_views_of_a_step_are_drawn_once_whatever_the_micro_batch(tmp_path, monkeypatch):
    """The random streams of a run do not depend on M: every step draws its views once, for
    the whole batch, and the same ones with M = 2, 8 or none."""
    from simclr.augment import LinearEvalAugment
    real_call, drawn = LinearEvalAugment.__call__, []

    def recording_call(self, *args, **kwargs):
        drawn.append(real_call(self, *args, **kwargs))
        return drawn[-1]
    monkeypatch.setattr(LinearEvalAugment, "__call__", recording_call)
    draws = {}
    for micro_batch in (None, 2, 8):
        drawn.clear()
        extra = [] if micro_batch is None else ["--micro-batch", str(micro_batch)]
        finetuned(tmp_path / f"m{micro_batch}", *SCRATCH, "--max-steps", "2", *extra)
        draws[micro_batch] = list(drawn)
    assert len(draws[None]) == 2
    for micro_batch in (2, 8):
        assert len(draws[micro_batch]) == 2
        for ours, plain in zip(draws[micro_batch], draws[None]):
            assert numpy.array_equal(ours, plain)


MISTAKES = [
    (["--micro-batch", "0"], "--micro-batch must be at least 1, got 0"),
    (["--micro-batch", "3"], "--micro-batch 3 does not divide --batch-size 8: give a divisor "
                             "of 8"),
    (["--micro-batch", "16"], "--micro-batch 16 does not divide --batch-size 8: give a divisor "
                              "of 8"),
]


@pytest.mark.parametrize("argv, message", MISTAKES, ids=["zero", "no-divisor", "too-big"])
def test_a_micro_batch_mistake_is_one_line_naming_the_flag(tmp_path, capsys, argv, message):
    code, line = one_line_error(capsys, SCRATCH + argv + ["--out", str(tmp_path / "run")])
    assert code == 2 and line == f"python -m simclr.finetune: error: {message}", line
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_a_resumed_run_is_refused_a_micro_batch_that_does_not_divide_its_batch(tmp_path,
                                                                               capsys):
    finetuned(tmp_path, *SCRATCH, "--max-steps", "1")
    code, line = one_line_error(capsys, ["--resume", str(tmp_path), "--micro-batch", "3"])
    assert code == 2 and line.endswith("--micro-batch 3 does not divide --batch-size 8: give "
                                       "a divisor of 8"), line


def _state(folder):
    return load_checkpoint(str(folder / "checkpoint.npz"))[0]


def _config(folder):
    return json.load(open(folder / "config.json"))


def _without_micro_batch(folder):
    """Make the checkpoint in `folder` one saved before --micro-batch existed: its settings
    lack the key."""
    path = folder / "checkpoint.npz"
    with numpy.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    header = json.loads(arrays["header"].tobytes().decode())
    del header["meta"]["config"]["micro_batch"]
    arrays["header"] = numpy.frombuffer(json.dumps(header).encode(), dtype=numpy.uint8)
    numpy.savez(path, **arrays)


def test_a_run_resumes_bitwise_and_may_change_m_on_resume(tmp_path, monkeypatch):
    """Stopped after 3 of 8 steps and resumed with the same M: the run that never stopped, bit
    for bit. A run saved before --micro-batch existed resumes as the plain step, and given
    --micro-batch 8 (= B, the plain step) on resume it is still the plain run, bit for bit.
    Resumed with another M: the remaining steps take the new M, which is saved."""
    whole, _, _ = finetuned(tmp_path / "whole", *SCRATCH, "--micro-batch", "4")
    finetuned(tmp_path / "parts", *SCRATCH, "--micro-batch", "4", "--max-steps", "3")
    assert finetune.main(["--resume", str(tmp_path / "parts")]) == 0
    assert_same_state(whole, _state(tmp_path / "parts"))
    plain, _, _ = finetuned(tmp_path / "plain", *SCRATCH)
    for folder, extra in (("old", []), ("old_m8", ["--micro-batch", "8"])):
        finetuned(tmp_path / folder, *SCRATCH, "--max-steps", "3")
        _without_micro_batch(tmp_path / folder)
        assert finetune.main(["--resume", str(tmp_path / folder)] + extra) == 0
        assert_same_state(plain, _state(tmp_path / folder))
    assert _config(tmp_path / "old")["micro_batch"] is None
    assert _config(tmp_path / "old_m8")["micro_batch"] == 8
    real_step, taken = finetuning.finetune_step, []

    def recording_step(*args):
        taken.append(args[5] if len(args) > 5 else None)
        return real_step(*args)
    finetuned(tmp_path / "changed", *SCRATCH, "--micro-batch", "4", "--max-steps", "3")
    monkeypatch.setattr(finetuning, "finetune_step", recording_step)
    assert finetune.main(["--resume", str(tmp_path / "changed"), "--micro-batch", "2"]) == 0
    assert taken == [2] * 5 and _config(tmp_path / "changed")["micro_batch"] == 2
    assert json.load(open(tmp_path / "changed" / "finetune.json"))["micro_batch"] == 2


def test_a_micro_batched_step_waits_for_the_device_no_more_than_the_plain_step():
    """--backend cupy runs the same code: on the rehearsal, a step of 8 images in micro-batches
    of 2 makes no more host synchronisations than the plain step (none), its loss and correct
    count staying on the device."""
    from bench.rehearsal import rehearsal
    syncs, on_device = {}, []
    with rehearsal() as device:
        views, labels = (device.xp.asarray(batch[0]) for batch in _batches(1))
        for micro_batch in (None, 2):
            model = build_finetune_model(CONFIG, 8, CLASSES).to(device="cuda")
            optimizer = _optimizer(model)
            for step in range(2):  # the first step makes the momentum buffers
                before = device.snapshot()
                numbers = finetuning.finetune_step(model, optimizer, views.astype("float32"),
                                                   labels, 0.1, micro_batch)
            syncs[micro_batch] = device.snapshot()[1] - before[1], dict(device.sync_sites)
            on_device += [type(number).__module__.startswith("cupy") for number in numbers]
    assert syncs[2][0] <= syncs[None][0] == 0, syncs
    assert all(on_device)
