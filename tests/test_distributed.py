"""Data-parallel training: W ranks with B images each equal one process with W B images.

In a world of threads (nn.distributed.LocalWorld), so that a test can see every rank at once:
the collectives, the all-gather's gradient, global batch norm, NT-Xent over gathered keys, and
whole training steps (loss, gradients, running statistics, weights after three LARS steps) in
float64 to 1e-10 relative. tests/test_distributed_mpi.py runs the same equivalence over real
MPI processes.

The three bugs that the most used SimCLR implementations shipped are written into the
sensitivity checks here (test_sensitivity_*): each runs one of them, in the test, and shows
that the check holding the library to the right answer fails on it. They test the tests, not
the library: a regression of the library fails the equivalence and gradient tests themselves.
"""
import numpy
import pytest

import nn
import nn.functional as F
from autograd import Tensor, numerical_grad
from nn.distributed import AllGather, LocalWorld, average_gradients
from nn.layers import synchronize_batch_norm
from helpers import relative_error

TOLERANCE = 1e-10


@pytest.fixture(autouse=True)
def one_cpu_thread(threads):
    """The ranks are threads already; one CPU thread each keeps every sum in one order."""
    from nn.runtime import threads as cpu_threads
    cpu_threads.set_num_threads(1)


def test_collectives_of_a_world_of_threads():
    def rank_work(comm):
        a = numpy.full(3, comm.rank + 1.0)
        comm.allreduce(a)
        gathered = comm.allgather(numpy.full((2, 1), comm.rank))
        return a, gathered, comm.any(comm.rank == 2), comm.any(False)
    for a, gathered, any_true, any_false in LocalWorld(3).run(rank_work):
        assert a.tolist() == [6.0] * 3
        assert gathered[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
        assert any_true and not any_false


def test_an_exception_in_one_rank_releases_the_others_and_reaches_the_caller():
    def rank_work(comm):
        if comm.rank == 1:
            raise ArithmeticError("rank 1 failed")
        comm.allreduce(numpy.zeros(1))  # would wait forever for rank 1
    with pytest.raises(ArithmeticError, match="rank 1"):
        LocalWorld(2).run(rank_work)


def _over_ranks(world, x_full, loss_of_rank):
    """sum_r loss_of_rank(r, all_gather(x_r)) and its gradient with respect to x_full, the
    rows of every rank stacked, computed by `world`'s ranks."""
    size = world.size
    shards = numpy.split(x_full, size)

    def rank_work(comm):
        x = Tensor(shards[comm.rank].copy(), requires_grad=True)
        loss = loss_of_rank(comm, x)
        loss.backward()
        return float(loss.data), x.grad
    results = world.run(rank_work)
    return sum(r[0] for r in results), numpy.concatenate([r[1] for r in results])


def _gathered_loss(weights, gather=AllGather):
    def loss_of_rank(comm, x):
        keys = gather.apply(x, group=comm)                     # (W B, d)
        return (keys * Tensor(weights[comm.rank])).sum() + (x * x).sum()
    return loss_of_rank


def test_all_gather_sends_every_ranks_use_of_its_keys_back_to_them():
    """gradcheck of sum_r loss_r(all_gather(x_r)): each x_r's gradient is the sum over all
    ranks of what their losses send it (the all-gather's backward is a reduce-scatter)."""
    rng = numpy.random.default_rng(0)
    x_full, weights = rng.standard_normal((6, 4)), rng.standard_normal((3, 6, 4))
    value, grad = _over_ranks(LocalWorld(3), x_full, _gathered_loss(weights))
    expected = weights.sum(axis=0) + 2 * x_full                # d/dx of the sum over ranks
    assert relative_error(grad, expected) < 1e-12

    def total(x):  # the sum of the ranks' losses, by central differences below
        return Tensor(numpy.array(_over_ranks(LocalWorld(3), x.data, _gathered_loss(weights))[0]))
    (numeric,) = numerical_grad(total, [Tensor(x_full.copy(), requires_grad=True)],
                                numpy.array(1.0))
    assert relative_error(grad, numeric) < 1e-7


def test_sensitivity_the_all_gathers_gradient_check_fails_on_a_local_slice_backward():
    """The bug lightly and Spijkervet/SimCLR shipped, written here: backward = the output
    gradient's own slice, without the other ranks' contributions. The expected gradient of
    test_all_gather_sends_every_ranks_use_of_its_keys_back_to_them is then far off."""
    class LocalSliceAllGather(AllGather):
        @staticmethod
        def backward(ctx, grad):
            start = ctx.group.rank * ctx.rows
            return grad[start:start + ctx.rows]
    rng = numpy.random.default_rng(0)
    x_full, weights = rng.standard_normal((6, 4)), rng.standard_normal((3, 6, 4))
    _, grad = _over_ranks(LocalWorld(3), x_full, _gathered_loss(weights, LocalSliceAllGather))
    assert relative_error(grad, weights.sum(axis=0) + 2 * x_full) > 0.1


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("fused", ["none", "residual+relu"])
def test_global_batch_norm_equals_batch_norm_of_the_global_batch(size, fused):
    """Output, dx, the summed dgamma and dbeta shares, and the running statistics of every
    rank, against one process's batch norm of all the ranks' rows."""
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((4 * size, 5, 3, 2)) * 3 + 10 * rng.standard_normal((1, 5, 1, 1))
    residual, upstream = (rng.standard_normal(x.shape) for _ in range(2))
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    relu = "relu" in fused

    def run(xs, residuals, upstreams, group):
        tensors = [Tensor(a.copy(), requires_grad=True) for a in (xs, gamma, beta, residuals)]
        mean, var = numpy.zeros(5), numpy.ones(5)
        out = F.batch_norm(tensors[0], mean, var, tensors[1], tensors[2], training=True,
                           residual=tensors[3] if relu else None, relu=relu, group=group)
        out.backward(upstreams)
        return [out.data, tensors[0].grad, tensors[1].grad, tensors[2].grad, mean, var]
    whole = run(x, residual, upstream, None)
    ranks = LocalWorld(size).run(lambda comm: run(
        *(numpy.split(a, size)[comm.rank] for a in (x, residual, upstream)), comm))
    for index, name in enumerate(["y", "dx"]):
        assert relative_error(numpy.concatenate([r[index] for r in ranks]), whole[index]) \
            < TOLERANCE, name
    for index, name in ((2, "dgamma"), (3, "dbeta")):      # each rank's share, added up
        assert relative_error(sum(r[index] for r in ranks), whole[index]) < TOLERANCE, name
    for r in ranks:
        for index, name in ((4, "running_mean"), (5, "running_var")):
            assert relative_error(r[index], whole[index]) < TOLERANCE, name


def _model(rng_seed=0):
    from simclr.model import SimCLR
    model = SimCLR(nn.resnet18(cifar_stem=True, width=0.0625, zero_init_residual=False, rng=0),
                   proj_dim=16, rng=numpy.random.default_rng(rng_seed))
    return model.to(dtype="float64")


def _steps(views, group=None, steps=3, offset_positives=True):
    """`steps` SimCLR steps of a tiny ResNet-18 on fixed views (2, B, 3, H, W) (this rank's,
    with `group`): the losses, the gradients before the last update, the running
    statistics and the weights after it."""
    from nn.optim import LARS
    from simclr import loss as simclr_loss
    model = _model()
    if group is not None:
        synchronize_batch_norm(model, group)
    optimizer = LARS(model.named_parameters(), lr=0.5, weight_decay=1e-4)
    losses = []
    for _ in range(steps):
        z = model(Tensor(numpy.concatenate(views)))
        if offset_positives or group is None:
            loss = simclr_loss.nt_xent(z, 0.5, group)
        else:  # positives at i +- N in the gathered keys, as if this rank were rank 0
            loss = _nt_xent_without_the_rank_offset(z, 0.5, group)
        optimizer.zero_grad()
        loss.backward()
        if group is not None:
            average_gradients(optimizer.params, group)
        grads = [p.grad.copy() for p in optimizer.params]
        optimizer.step()
        losses.append(float(loss.data))
    buffers = {name: b.copy() for name, b in model.named_buffers()
               if name.endswith(("running_mean", "running_var"))}
    return losses, grads, buffers, [p.data.copy() for p in model.parameters()]


def _nt_xent_without_the_rank_offset(z, temperature, group):
    from nn.distributed import all_gather
    n = z.shape[0] // 2
    u = F.normalize(z, dim=1)
    keys = all_gather(u, group)
    logits = (u @ keys.T) * (1.0 / temperature)
    mask = numpy.zeros(logits.shape)
    mask[:, :2 * n] = numpy.eye(2 * n) * -1e9
    positives = numpy.concatenate([numpy.arange(n, 2 * n), numpy.arange(0, n)])
    return F.cross_entropy(logits + Tensor(mask), positives)


def _views(size, images=2):
    """Both views of size * images images: (2, size * images, 3, 8, 8)."""
    return numpy.random.default_rng(3).random((2, size * images, 3, 8, 8))


def _compare(ranks, whole):
    """Every rank's results against one process's. Gradients and weights are compared
    relative to the largest of all (a bias before a batch norm has a gradient of 0
    analytically, 1e-19 in rounding, and stays at 1e-16 of its start: a relative error of
    such an array means nothing)."""
    losses, grads, buffers, weights = whole
    scale = max(numpy.abs(g).max() for g in grads)
    weight_scale = max(numpy.abs(w).max() for w in weights)
    assert relative_error(numpy.mean([r[0] for r in ranks], axis=0), losses) < TOLERANCE
    for _, rank_grads, rank_buffers, rank_weights in ranks:
        for name, array in rank_buffers.items():
            assert relative_error(array, buffers[name]) < TOLERANCE, name
        for ours, theirs in zip(rank_grads, grads):
            assert numpy.abs(ours - theirs).max() < TOLERANCE * scale
        for ours, theirs in zip(rank_weights, weights):
            assert numpy.abs(ours - theirs).max() < TOLERANCE * weight_scale


def _rank_views(views, size, rank):
    return views[:, rank * views.shape[1] // size:(rank + 1) * views.shape[1] // size]


@pytest.mark.parametrize("size", [2, 3])
def test_a_data_parallel_step_equals_one_process_with_the_global_batch(size):
    """Three LARS steps of W ranks with B images each against one process with W B: the
    loss (the mean of the ranks'), every gradient after the average, the running statistics
    and the weights, in float64 to 1e-10."""
    views = _views(size)
    whole = _steps(views)
    ranks = LocalWorld(size).run(lambda comm: _steps(_rank_views(views, size, comm.rank), comm))
    _compare(ranks, whole)


def test_sensitivity_the_equivalence_fails_on_positives_without_the_rank_offset():
    """solo-learn's and lightly's bug, written here: every rank's positives at i +- N of the
    gathered keys, which are rank 0's rows. The loss of the global batch is then another, and
    the comparison of test_a_data_parallel_step_equals_one_process_with_the_global_batch
    fails."""
    views = _views(2)
    whole = _steps(views, steps=1)
    ranks = LocalWorld(2).run(lambda comm: _steps(_rank_views(views, 2, comm.rank), comm,
                                                  steps=1, offset_positives=False))
    assert abs(numpy.mean([r[0][0] for r in ranks]) - whole[0][0]) > 1e-3
    with pytest.raises(AssertionError):
        _compare(ranks, whole)


@pytest.mark.parametrize("bug", ["summed", "left alone"])
def test_sensitivity_the_equivalence_fails_on_gradients_summed_or_left_alone(monkeypatch, bug):
    """Gradients not averaged over the ranks, written here: summed (without the division by
    the number of ranks, W times the global batch's) or left alone (each rank's own). The
    comparison of test_a_data_parallel_step_equals_one_process_with_the_global_batch fails."""
    from nn.distributed import collectives
    views = _views(2)
    whole = _steps(views, steps=1)
    real = collectives.average_gradients

    def summed(parameters, group, bucket_bytes=collectives.BUCKET_BYTES):
        real(parameters, group, bucket_bytes)
        for param in parameters:
            if param.grad is not None:
                param.grad = param.grad * group.size

    def left_alone(parameters, group, bucket_bytes=collectives.BUCKET_BYTES):
        pass
    monkeypatch.setitem(globals(), "average_gradients",
                        summed if bug == "summed" else left_alone)
    ranks = LocalWorld(2).run(lambda comm: _steps(_rank_views(views, 2, comm.rank), comm,
                                                  steps=1))
    error = relative_error(ranks[0][1][0], whole[1][0])
    assert error > (0.5 if bug == "summed" else 0.1)   # summed: twice the gradient
    with pytest.raises(AssertionError):
        _compare(ranks, whole)


def test_average_gradients_packs_buckets_and_hands_back_views_of_them():
    from nn.module import Parameter
    shapes = [(3, 4), (5,), (2, 2), (20,)]

    def rank_work(comm):
        params = [Parameter(numpy.zeros(shape)) for shape in shapes]
        for param in params:
            param.grad = numpy.full(param.shape, comm.rank + 1.0)
        params[1].grad = None                                 # no gradient: left alone
        buckets = average_gradients(params, comm, bucket_bytes=128)
        return buckets, [p.grad for p in params]
    for buckets, grads in LocalWorld(2).run(rank_work):
        assert buckets == 2                                   # 96 + 32 bytes, then 160
        assert grads[1] is None
        for grad, shape in zip(grads[:1] + grads[2:], shapes[:1] + shapes[2:]):
            assert grad.shape == shape and grad.flags.c_contiguous
            assert (grad == 1.5).all()                        # (1 + 2) / 2
