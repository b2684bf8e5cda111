"""Big batches on small memory (--micro-batch M): NT-Xent over the whole batch with the encoder
run on M images at a time, by cached embedding gradients (simclr.pretraining.
backward_in_micro_batches).

The claim, in float64 to 1e-10: a micro-batched step is the full-batch step (loss, every
gradient, the weights after LARS, batch norm's running statistics and counts) of a network
whose batch norm normalises each group of M images by the group's statistics. The reference
here builds that network's step as one graph: the model run on each group with its graph, the
embeddings put back in the batch's order, one NT-Xent and one backward. Batch norm is the only
layer that mixes images, so this is the full-batch step with grouped batch norm, made without
cached gradients. The same holds for 2 ranks (threads, and real MPI processes), each
micro-batching its share, where the groups are the k-th micro-batch of every rank together
(global batch norm). Then the program: its mistakes are one line naming --micro-batch, a
run resumes with another M, Ctrl-C inside a micro-batched step saves whole steps only.
"""
import json
import os
import signal

import numpy
import pytest

import nn
from autograd import Tensor, cat
from nn.distributed import LocalWorld
from nn.layers import synchronize_batch_norm
from nn.optim import LARS
from simclr import pretraining, train
from simclr.cli import UsageError
from simclr.loss import nt_xent
from simclr.pretraining_settings import check_micro_batch
from simclr.training.interrupts import Interrupted
from helpers import assert_close_step_results, assert_same_step_results, relative_error
from test_distributed_mpi import TESTS, mpiexec, needs_mpi
from test_train import assert_same_run, parameters, resume, run

TOLERANCE = 1e-10
IMAGES = 8                     # per step; both views of each, 8 x 8 px


@pytest.fixture(autouse=True)
def one_cpu_thread(threads):
    """One CPU thread: every sum in one order (the ranks of LocalWorld are threads already)."""
    from nn.runtime import threads as cpu_threads
    cpu_threads.set_num_threads(1)


def _model():
    from simclr.model import SimCLR
    model = SimCLR(nn.resnet18(cifar_stem=True, width=0.0625, zero_init_residual=False, rng=0),
                   proj_dim=16, rng=numpy.random.default_rng(1))
    return model.to(dtype="float64")


def _views(images=IMAGES, steps=2):
    """Both views of `images` images for each of `steps` steps: (steps, 2, images, 3, 8, 8)."""
    return numpy.random.default_rng(3).random((steps, 2, images, 3, 8, 8))


class FixedViews:
    """An augmentation that returns given views, so that a test can choose each rank's."""

    def __init__(self, views):
        self.views = views                                    # (2, N, 3, H, W)

    def pair(self, images, rng, rows=None):
        return self.views[0], self.views[1]

    def pair_on_demand(self, images, rng, rows=None):
        return lambda start, stop: (self.views[0][start:stop], self.views[1][start:stop])


def _results(model, optimizer, losses):
    """What a test compares: the losses, the gradients before the last update, the buffers
    (running statistics and counts) and the weights after it."""
    return (numpy.array(losses), [p.grad.copy() for p in optimizer.params],
            {name: numpy.array(b) for name, b in model.named_buffers()},
            [p.data.copy() for p in model.parameters()])


def _micro_batched_steps(views, micro_batch, group=None):
    """training_step, as the program runs it, on each step's fixed views (this rank's)."""
    model = _model()
    if group is not None:
        synchronize_batch_norm(model, group)
    optimizer = LARS(model.named_parameters(), lr=0.0, weight_decay=1e-4)
    images = numpy.zeros((views.shape[2], 1, 1, 3), dtype=numpy.uint8)   # only their count
    losses = [float(pretraining.training_step(model, optimizer, FixedViews(step_views), images,
                                              None, 0.5, 0.5, group, None, micro_batch))
              for step_views in views]
    return _results(model, optimizer, losses)


def _grouped_batch_norm_steps(views, groups):
    """The reference: the full-batch step of the network whose batch norm normalises each
    group of images (a list of image indices) by its own statistics, as one graph."""
    model = _model()
    optimizer = LARS(model.named_parameters(), lr=0.0, weight_decay=1e-4)
    n = views.shape[2]
    losses = []
    for step_views in views:
        all_views = step_views.reshape((2 * n,) + step_views.shape[2:])       # (2N, 3, H, W)
        rows = [numpy.concatenate([group, group + n]) for group in groups]    # both views
        z = cat([model(Tensor(all_views[r])) for r in rows])                  # groups' order
        z = z[numpy.argsort(numpy.concatenate(rows))]                          # batch's order
        loss = nt_xent(z, 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.lr = 0.5
        optimizer.step()
        losses.append(float(loss.data))
    return _results(model, optimizer, losses)


def _compare(ours, reference):
    """Losses, buffers to 1e-10 relative; gradients and weights relative to the largest of all
    (a bias before a batch norm has a gradient of 0 analytically: its own relative error means
    nothing)."""
    assert relative_error(ours[0], reference[0]) < TOLERANCE, "loss"
    assert_close_step_results(ours, reference, TOLERANCE)


def _groups_of(micro_batch, images=IMAGES):
    return [numpy.arange(start, start + micro_batch) for start in range(0, images, micro_batch)]


@pytest.mark.parametrize("micro_batch", [2, 4])
def test_a_micro_batched_step_equals_the_full_batch_step_with_batch_norm_per_group(micro_batch):
    """Two LARS steps: the loss, every gradient, the weights, the running statistics and
    num_batches_tracked (once per micro-batch: the first pass leaves them alone)."""
    views = _views()
    _compare(_micro_batched_steps(views, micro_batch),
             _grouped_batch_norm_steps(views, _groups_of(micro_batch)))


def test_a_micro_batch_of_the_whole_batch_is_the_plain_step_bit_for_bit():
    views = _views()
    plain, whole = _micro_batched_steps(views, None), _micro_batched_steps(views, IMAGES)
    assert_same_step_results(plain, whole)


def test_micro_batches_differ_from_the_plain_step_only_through_batch_norms_groups():
    """The check above has something to see: with M < N the step is not the plain one (batch
    norm's groups), and the plain step is the reference with one group."""
    views = _views(steps=1)
    plain = _micro_batched_steps(views, None)
    _compare(plain, _grouped_batch_norm_steps(views, _groups_of(IMAGES)))
    assert relative_error(_micro_batched_steps(views, 2)[0], plain[0]) > 1e-6


def _rank_groups(micro_batch, size, images=IMAGES):
    """The k-th micro-batch of every rank's share, together: batch norm's groups when the
    ranks share its statistics."""
    share = images // size
    return [numpy.concatenate([numpy.arange(rank * share + start, rank * share + start
                                            + micro_batch) for rank in range(size)])
            for start in range(0, share, micro_batch)]


def test_two_ranks_each_micro_batching_their_share_equal_one_process():
    """Two ranks (threads) of 4 images, M = 2 on each, global batch norm, gathered negatives:
    the loss of the global batch, gradients, running statistics and weights of one process
    with the groups of 2 x 2 images that the ranks' micro-batches make together."""
    views = _views()
    ranks = LocalWorld(2).run(lambda comm: _micro_batched_steps(
        views[:, :, comm.rank * 4:(comm.rank + 1) * 4], 2, comm))
    reference = _grouped_batch_norm_steps(views, _rank_groups(2, 2))
    mean_loss = numpy.mean([r[0] for r in ranks], axis=0)
    for rank in ranks:
        _compare((mean_loss,) + rank[1:], reference)


@needs_mpi
def test_two_mpi_ranks_each_micro_batching_their_share_equal_one_process(tmp_path):
    """The same as above over real MPI processes (tests/mpi/micro_batch_steps.py)."""
    finished = mpiexec(2, os.path.join(TESTS, "mpi", "micro_batch_steps.py"), str(tmp_path))
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [numpy.load(tmp_path / f"rank{rank}.npz") for rank in range(2)]
    reference = _grouped_batch_norm_steps(_views(), _rank_groups(2, 2))
    mean_loss = numpy.mean([r["losses"] for r in ranks], axis=0)
    count = len(reference[1])
    for r in ranks:
        _compare((mean_loss, [r[f"grad{i}"] for i in range(count)],
                  {name: r[f"buffer:{name}"] for name in reference[2]},
                  [r[f"weight{i}"] for i in range(len(reference[3]))]), reference)


def test_micro_batch_mistakes_are_one_line_naming_the_flag():
    with pytest.raises(UsageError, match=r"^--micro-batch must be at least 1, got 0$"):
        check_micro_batch(0, 16)
    with pytest.raises(UsageError, match=r"^--micro-batch 5 does not divide --batch-size 16: "
                                         r"give a divisor of 16$"):
        check_micro_batch(5, 16)
    with pytest.raises(UsageError, match=r"^--micro-batch 16 does not divide the 8 images of "
                                         r"each of the 2 ranks \(--batch-size 16\): give a "
                                         r"divisor of 8$"):
        check_micro_batch(16, 16, ranks=2)
    check_micro_batch(4, 16, ranks=2)
    check_micro_batch(None, 16)


@needs_mpi
def test_two_ranks_refuse_a_micro_batch_that_does_not_divide_a_ranks_share(tmp_path):
    bad = mpiexec(2, "-m", "simclr.train", "--dataset", "synthetic", "--synthetic-size", "48",
                  "--arch", "resnet18", "--width", "0.0625", "--epochs", "1", "--batch-size",
                  "16", "--micro-batch", "16", "--distributed", "--out", str(tmp_path / "bad"),
                  timeout=120)
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.startswith("python -m")]
    assert lines == ["python -m simclr.train: error: --micro-batch 16 does not divide the 8 "
                     "images of each of the 2 ranks (--batch-size 16): give a divisor of 8"]


def test_the_program_refuses_a_micro_batch_that_does_not_divide_the_batch(tmp_path, capsys):
    status = train.main(["--dataset", "synthetic", "--synthetic-size", "48", "--batch-size",
                         "16", "--micro-batch", "3", "--out", str(tmp_path / "run")])
    assert status == 2
    err = capsys.readouterr().err
    assert err == ("python -m simclr.train: error: --micro-batch 3 does not divide "
                   "--batch-size 16: give a divisor of 16\n")


# ----- the program -------------------------------------------------------------------------

def _losses(out):
    return [r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]


def _arrays(draws):
    """The arrays of one SimCLRAugment.draw (nested tuples; blur None when off), in order."""
    if draws is None:
        return []
    if isinstance(draws, tuple):
        return [array for part in draws for array in _arrays(part)]
    return [numpy.asarray(draws)]


def test_the_views_of_a_step_are_drawn_once_whatever_the_micro_batch(tmp_path, monkeypatch):
    """The random streams of a run do not depend on M: every step draws its two views' random
    parameters once, for the whole batch, the same with M = 4, 16 or none. With M < N the views
    are made M images at a time, in both passes (pair_on_demand: the same views each time,
    tested below), never the whole batch's at once."""
    from simclr.augment import SimCLRAugment
    real_draw, real_apply = SimCLRAugment.draw, SimCLRAugment.apply
    drawn, made = [], []

    def recording_draw(self, rng, count, height, width):
        draws = real_draw(self, rng, count, height, width)
        drawn.append((count, [a.copy() for a in _arrays(draws)]))
        return draws

    def recording_apply(self, images, *draws):
        made.append(len(images))
        return real_apply(self, images, *draws)
    monkeypatch.setattr(SimCLRAugment, "draw", recording_draw)
    monkeypatch.setattr(SimCLRAugment, "apply", recording_apply)
    draws, sizes = {}, {}
    for micro_batch in (None, 4, 16):
        drawn.clear(), made.clear()
        extra = [] if micro_batch is None else ["--micro-batch", str(micro_batch)]
        run(tmp_path / f"m{micro_batch}", "--max-steps", "2", *extra)
        draws[micro_batch], sizes[micro_batch] = list(drawn), list(made)
    batch = 16
    assert [count for count, _ in draws[None]] == [batch] * 4       # 2 steps x 2 views
    assert sizes[None] == sizes[16] == [batch] * 4                  # M = N: the plain step
    assert sizes[4] == [4] * (2 * 2 * 4 * 2)   # steps x passes x micro-batches x views
    for micro_batch in (4, 16):
        assert [count for count, _ in draws[micro_batch]] == [batch] * 4
        for (_, ours), (_, plain) in zip(draws[micro_batch], draws[None]):
            assert len(ours) == len(plain)
            assert all(numpy.array_equal(a, b) for a, b in zip(ours, plain))


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
@pytest.mark.parametrize("rows", [None, (6, 20)], ids=["one process", "rank's rows"])
def test_pair_on_demand_makes_pairs_views_bit_for_bit(preset, rows):
    """The views of images start..stop-1, made when asked (in any order, twice), are those
    that two calls of the augmentation make for the whole batch (and so pair's): the two passes of a micro-batched step see the same
    views, and the same as the plain step's. With rows, the images are a rank's share."""
    from simclr.augment import SimCLRAugment
    augment = SimCLRAugment.preset(preset, size=16)
    images = numpy.random.default_rng(0).integers(0, 256, (7, 20, 20, 3), dtype=numpy.uint8)
    rng = numpy.random.default_rng(5)
    whole = augment(images, rng, rows), augment(images, rng, rows)    # two views, one by one
    assert all(numpy.array_equal(a, b) for a, b in
               zip(whole, augment.pair(images, numpy.random.default_rng(5), rows)))
    views = augment.pair_on_demand(images, numpy.random.default_rng(5), rows)
    for bounds in ([(0, 3), (3, 6), (6, 7)], [(6, 7), (0, 7), (2, 5)]):
        for start, stop in bounds:
            for ours, theirs in zip(views(start, stop), whole):
                assert ours.dtype == theirs.dtype == numpy.float32
                assert numpy.array_equal(ours, theirs[start:stop])


def test_a_micro_batched_run_resumes_bitwise_and_may_change_m_on_resume(tmp_path):
    """Stopped after 2 of 6 steps and resumed with the same M: the run that never stopped, bit
    for bit. Resumed with another M: the run goes on to its end with the new M saved (batch
    norm's groups change, so its later losses are close to, not equal to, the first run's)."""
    run(tmp_path / "whole", "--micro-batch", "4")
    run(tmp_path / "parts", "--micro-batch", "4", "--max-steps", "2")
    resume(tmp_path / "parts")
    assert_same_run(tmp_path / "whole", tmp_path / "parts")
    run(tmp_path / "changed", "--micro-batch", "4", "--max-steps", "2")
    resume(tmp_path / "changed", "--micro-batch", "8")
    assert json.load(open(tmp_path / "changed" / "config.json"))["micro_batch"] == 8
    whole, changed = _losses(tmp_path / "whole"), _losses(tmp_path / "changed")
    assert len(changed) == 6 and changed[:2] == whole[:2]
    assert changed[2:] != whole[2:] and relative_error(changed, whole) < 0.1


def test_ctrl_c_inside_a_micro_batched_step_saves_that_whole_step_and_resumes_exactly(
        tmp_path, monkeypatch):
    """SIGINT arrives between the two passes of step 4: the step is finished (every
    micro-batch), saved, and the resumed run is the run that never stopped, bit for bit."""
    run(tmp_path / "whole", "--micro-batch", "4")
    real_loss, calls = pretraining.nt_xent, []

    def interrupted_loss(*args):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args)
    monkeypatch.setattr(pretraining, "nt_xent", interrupted_loss)
    with pytest.raises(Interrupted) as stopped:
        run(tmp_path / "parts", "--micro-batch", "4")
    assert stopped.value.saved
    monkeypatch.setattr(pretraining, "nt_xent", real_loss)
    assert parameters(tmp_path / "parts")[2] == 4
    resume(tmp_path / "parts")
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


# Kernel launches of one micro-batch of a micro-batched ResNet-50 step on the rehearsal (CIFAR
# stem): its forward pass without the graph, its forward and backward with it, its views made
# in each pass, its share of the loss and LARS. 1,271 a micro-batch (2,542 for a step of two,
# 2026-12-07), about a third more than a plain step of the same images (963,
# tests/test_device_path.py), the first pass's.
RESNET50_MICRO_BATCH_LAUNCH_BUDGET = 1350


def test_a_micro_batched_resnet50_step_takes_the_device_path_per_micro_batch_without_syncs():
    """--backend cupy runs the same code: on the rehearsal, a step of 4 images in micro-batches
    of 2 never waits for the device, and launches at most the budget per micro-batch."""
    from bench.rehearsal import rehearsal
    from test_device_path import _step_parts
    with rehearsal() as device:
        model, optimizer, augment, images = _step_parts(device)
        for step in range(2):  # the first step makes the momentum buffers
            before = device.snapshot()
            loss = pretraining.training_step(model, optimizer, augment, images,
                                             numpy.random.default_rng(step), 0.1, 0.5,
                                             micro_batch=2)
        launches, syncs, _ = (now - then for now, then in zip(device.snapshot(), before))
        assert syncs == 0, f"the step waited for the device: {device.sync_sites}"
        assert launches <= 2 * RESNET50_MICRO_BATCH_LAUNCH_BUDGET, \
            sorted(device.by_name.items(), key=lambda kv: -kv[1])[:20]
        assert numpy.isfinite(float(loss))


def test_bench_micro_batch_tabulates_the_micro_batched_step_beside_the_plain_ones(capsys):
    """python -m bench.micro_batch on a tiny model: one row per batch with images/s and peak
    memory of the micro-batched step, the plain step of B and the plain step of M."""
    from bench import micro_batch
    assert micro_batch.main(["--archs", "resnet18", "--width", "0.0625", "--batches", "8",
                             "--micro-batch", "4", "--plain-up-to", "8", "--steps", "1",
                             "--warmup", "0", "--threads", "1"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith("| resnet18")]
    assert len(row) == 1 and "failed" not in row[0] and row[0].count("%") == 1
    assert row[0].rstrip(" |").endswith("x")
