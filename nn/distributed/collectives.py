"""The collectives inside a data-parallel step: the ones the graph differentiates, and the
gradients' average after it.

Each rank computes a loss of its own shard, loss_r; the objective of all of them together is
sum_r loss_r, and every backward pass below is the gradient of that sum. The parameters'
gradients are then averaged (divided by the number of ranks): the gradient of the mean
of the ranks' losses, which is the loss of the global batch when each loss_r is the mean over
an equal shard. Three things must hold, and each is where a widely used SimCLR implementation
went wrong (tests/test_distributed.py has a test for each):

- all_gather's backward sums, over every rank, the gradient that rank's loss sends to this
  rank's rows (a reduce-scatter: all-reduce, then this rank's slice); returning only the
  local loss's gradient of the local slice drops every other rank's use of these keys;
- a rank's positives and self-similarities sit at rank * (its rows) + i in the gathered keys
  (simclr/loss.py adds the offset);
- the gradients are averaged over the ranks, not summed, nor left alone (off by the size).

Batch norm over the global batch is nn.functional.batch_norm's `group`: both its kernels, the
CPU's and the GPU's, take the global batch's mean and variance from every rank's own by
global_moments below in the forward pass, and all-reduce their two per-channel sums in the
backward. (nn.layers.synchronize_batch_norm sets the group of every batch-norm layer of a
model.)
"""
import numpy

from autograd import Function, Tensor, array_module

BUCKET_BYTES = 32 * 2**20  # average_gradients: one all-reduce per this many bytes of gradients


class AllGather(Function):
    """y = [x_0; x_1; ...; x_{W-1}] (every rank's x, stacked along axis 0 in rank order).

    Backward: dL/dx_r = (sum over ranks s of the gradient s sends to y)[rows of r]: an
    all-reduce of the output gradient, then this rank's slice."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.rows = group, x.shape[0]
        return group.allgather(x)

    @staticmethod
    def backward(ctx, grad):
        summed = grad.copy()
        ctx.group.allreduce(summed)
        start = ctx.group.rank * ctx.rows
        return summed[start:start + ctx.rows]


def all_gather(x, group):
    """Every rank's Tensor x (the same shape on each), concatenated along axis 0 in rank order,
    differentiably (see AllGather)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"all_gather: x is a {type(x).__name__}, expected a Tensor")
    return AllGather.apply(x, group=group)


def global_moments(mean, var, count, group):
    """The mean and biased variance (C,) of the global batch from each rank's own, over
    `count` values per channel on every rank: (mean, var, count * size), in float64. Batch
    norm's statistics on every device.

    One all-gather of every rank's (mean, M2 = count * var), combined in rank order by Chan,
    Golub and LeVeque's pairwise update (exact in exact arithmetic; in float64 nothing cancels,
    where sum(x^2) - n mean^2 would lose digits when the mean is large against the spread);
    every rank gets the same bits."""
    xp = array_module(mean)
    local = xp.stack([mean.astype(xp.float64), count * var.astype(xp.float64)])[None]  # (1, 2, C)
    ranks = group.allgather(local)                                         # (size, 2, C)
    total_mean, total_m2, total = ranks[0, 0], ranks[0, 1], count
    for rank in range(1, group.size):
        delta = ranks[rank, 0] - total_mean
        total_mean = total_mean + delta * (count / (total + count))
        total_m2 = total_m2 + ranks[rank, 1] + delta * delta * (total * count / (total + count))
        total += count
    return total_mean, total_m2 / total, total


def average_gradients(parameters, group, bucket_bytes=BUCKET_BYTES):
    """Replace every parameter's .grad by its average over the ranks, in a few large
    all-reduces: the gradients are packed, in order, into buckets of about bucket_bytes (one
    dtype each), each bucket summed in one collective, then divided by the number of ranks
    and handed back as views of the bucket (C-contiguous, of each gradient's shape).
    Parameters without a gradient are skipped (every rank must have the same ones)."""
    with_grad = [p for p in parameters if p.grad is not None]
    buckets, current, size = [], [], 0
    for param in with_grad:
        if current and (size + param.grad.nbytes > bucket_bytes
                        or param.grad.dtype != current[0].grad.dtype):
            buckets.append(current)
            current, size = [], 0
        current.append(param)
        size += param.grad.nbytes
    if current:
        buckets.append(current)
    for bucket in buckets:
        xp = array_module(bucket[0].grad)
        flat = xp.concatenate([param.grad.reshape(-1) for param in bucket])
        group.allreduce(flat)
        flat *= flat.dtype.type(1.0 / group.size)
        start = 0
        for param in bucket:
            param.grad = flat[start:start + param.grad.size].reshape(param.grad.shape)
            start += param.grad.size
    return len(buckets)


def same_on_every_rank(arrays, group):
    """Whether every rank holds the same values in `arrays` (host checksums, one collective):
    the start of a data-parallel run checks its freshly made weights with it."""
    sums = numpy.array([float(numpy.asarray(_host(a), numpy.float64).sum()) for a in arrays])
    gathered = group.allgather(sums[None])
    return bool((gathered == gathered[0]).all())


def _host(array):
    return array.get() if hasattr(array, "get") else array
