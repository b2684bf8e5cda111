"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR.

    nt_xent(z, temperature, group)   the loss as training calls it: F.normalize, then BlockedNTXent
    BlockedNTXent                    its cross-entropy, computed a block of rows at a time
    nt_xent_reference(z, temperature)  the same loss row by row in float64 NumPy: the oracle

The loss is a softmax over every pair of rows, so written as whole-array ops it holds several
(2N, K) matrices (logits, a mask, the softmax, its gradient): at 2N = 8,192 rows one float32
matrix is 256 MiB. With the encoder run in micro-batches (simclr/pretraining.py,
backward_in_micro_batches) those matrices, not the encoder, would set a step's peak memory.
BlockedNTXent holds R rows of one at a time.
"""
import numpy

import nn.functional as F
from autograd import Function, array_module
from nn.distributed.collectives import all_gather

# a block of logits takes at most this many bytes: on a CPU, about what its caches hold; on a
# GPU more (its memory is large, and each block costs a dozen kernel launches: at N = 4,096
# and K = 8,192, 4 blocks instead of 64) ...
BLOCK_BYTES = {"cpu": 4 * 2**20, "gpu": 64 * 2**20}
MIN_BLOCK_ROWS = 16       # ... unless that is fewer rows than this (a thin product is slow)


def nt_xent(z, temperature=0.5, group=None):
    """The SimCLR contrastive loss of projections `z`, shape (2N, d).

    Rows i and i+N are the two views of image i. With unit rows u = z / ||z||:

        logits = u u^T / temperature                                       (2N, 2N)
        loss_i = -log( exp(logits[i, pos(i)]) / sum_{k != i} exp(logits[i, k]) )

    where pos(i) = i+N for i < N and i-N otherwise; the loss is the mean of loss_i over the
    2N rows (the paper's definition; the official code reports the sum of the two halves'
    means, which is twice this). The self-similarity logits[i, i] is removed from the
    softmax (the official code subtracts 1e9 from it; BlockedNTXent sets it to -inf: either
    way its exponential is exactly 0).

    group: a data-parallel run's communicator. Each rank's rows are then compared with every
    rank's (all_gather, whose backward returns every rank's use of these keys): the keys
    are the (2N W, d) rows of all W ranks in rank order, this rank's at offset rank * 2N, where
    its positives and its self-similarities lie. The loss is the mean over this rank's rows;
    the mean of the ranks' losses is the loss of the global batch of N W images.

    The logits are never held whole: BlockedNTXent computes them a block of rows at a time.
    """
    if z.ndim != 2 or z.shape[0] % 2 or z.shape[0] < 4:
        raise ValueError(f"nt_xent expects z of shape (2N, d) with N >= 2 (two views of N images), "
                         f"got shape {z.shape}")
    u = F.normalize(z, dim=1)
    if group is not None and group.size > 1:
        keys = all_gather(u, group)                                   # (2N W, d)
        offset = group.rank * z.shape[0]                              # this rank's rows in keys
        return BlockedNTXent.apply(u, keys, temperature=temperature, offset=offset)
    # u is both the queries and the keys: the engine adds the two gradients it gets for it
    return BlockedNTXent.apply(u, u, temperature=temperature, offset=0)


def block_rows(rows, keys, itemsize, device="cpu"):
    """The rows R of one block of logits (R, keys): as many as the device's BLOCK_BYTES holds,
    at least MIN_BLOCK_ROWS, at most `rows` (a small batch is one block)."""
    return max(1, min(rows, max(MIN_BLOCK_ROWS, BLOCK_BYTES[device] // (keys * itemsize))))


class BlockedNTXent(Function):
    """NT-Xent's cross-entropy of unit rows u (2N, d) against keys (K, d), R rows at a time.

    Row i's logits are s_ik = u_i . k_k / T over the K keys, except its own similarity: the
    query is also key offset + i (offset 0 on one process, where the keys are u itself; rank r
    of a data-parallel run finds its rows at offset 2N r of the gathered keys), whose logit is
    -inf. Its positive is key pos(i) = offset + (i + N) mod 2N. Then

        lse_i = log sum_k exp(s_ik)        (the row's maximum m_i taken out first:
                                            m_i + log sum_k exp(s_ik - m_i), never overflowing)
        L     = (1/2N) sum_i (lse_i - s_i,pos(i))

    Gradient, for an upstream gradient g (a scalar), with p_ik = exp(s_ik - lse_i) the softmax:
    dL/ds_ik = g (p_ik - [k = pos(i)]) / 2N =: G_ik (a cross-entropy's); and s = u K^T / T, so

        dL/du = G K / T        dL/dK = G^T u / T.

    Why blocks: written as whole-array ops, the logits, their softmax and G are (2N, K)
    matrices, and the backward pass needs them all. Here the rows go in blocks of R
    (block_rows: BLOCK_BYTES of logits, by device): forward keeps each row's lse_i (2N,) and
    nothing of the block; backward recomputes the block's logits, makes G_b from lse_b, and
    adds its share to both gradients. The price is one extra (R, d) x (d, K) product per
    block in backward; the memory is O(R K + (2N + K) d) instead of O(2N K).

    One process passes the same Tensor as u and as keys: each appears in s twice, as a query
    (row i) and as a key (column i), and the engine adds the two gradients, dL/du + dL/dK.
    """

    @staticmethod
    def forward(ctx, u, keys, temperature, offset):
        xp = array_module(u, keys)
        blocks = _Blocks(xp, u, keys, temperature, offset)
        lse = xp.empty(u.shape[0], dtype=u.dtype)                     # (2N,)
        positive = xp.empty(u.shape[0], dtype=u.dtype)                # (2N,): s_i,pos(i)
        for start, stop in blocks.bounds:
            logits = blocks.logits(start, stop)                       # (R, K)
            positive[start:stop] = logits[blocks.positives(start, stop)]
            largest = logits.max(axis=1)                              # (R,)
            logits -= largest[:, None]
            xp.exp(logits, out=logits)
            lse[start:stop] = largest + xp.log(logits.sum(axis=1))
        ctx.save_for_backward(u, keys, lse)
        ctx.temperature, ctx.offset = temperature, offset
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad):
        u, keys, lse = ctx.saved
        xp = array_module(u, keys)
        blocks = _Blocks(xp, u, keys, ctx.temperature, ctx.offset)
        scale = grad * (1.0 / (u.shape[0] * ctx.temperature))         # g / (2N T), on the device
        grad_u = xp.empty_like(u) if ctx.needs_input_grad[0] else None
        grad_keys = xp.zeros_like(keys) if ctx.needs_input_grad[1] else None
        for start, stop in blocks.bounds:
            logits = blocks.logits(start, stop)
            logits -= lse[start:stop, None]
            block = xp.exp(logits, out=logits)                        # (R, K): p, 0 at self
            block[blocks.positives(start, stop)] -= 1                 # p - onehot(pos)
            block *= scale                                            # G_b / T
            if grad_u is not None:
                xp.matmul(block, keys, out=grad_u[start:stop])        # (R, K) x (K, d)
            if grad_keys is not None:
                grad_keys += block.T @ u[start:stop]                  # (K, R) x (R, d)
        return grad_u, grad_keys


class _Blocks:
    """The blocks of rows of u (2N, d) against keys (K, d): `bounds`, the (start, stop) of each
    (R rows by block_rows, the last maybe fewer); each block's logits; the positives' places.

    Every block's logits fill one (R, K) buffer in turn: a new array per block would hold two
    blocks at once, the last one's until the next is made. The index arrays are made once."""

    def __init__(self, xp, u, keys, temperature, offset):
        two_n = u.shape[0]
        rows = block_rows(two_n, keys.shape[0], u.dtype.itemsize,
                          "cpu" if xp is numpy else "gpu")
        self.bounds = [(start, min(start + rows, two_n)) for start in range(0, two_n, rows)]
        self.buffer = xp.empty((rows, keys.shape[0]), dtype=u.dtype)
        self.xp, self.u, self.keys, self.scale = xp, u, keys, 1.0 / temperature
        self.index = xp.arange(two_n)
        self.own = self.index + offset                   # (2N,): row i's own key, offset + i
        self.positive = xp.concatenate([self.own[two_n // 2:], self.own[:two_n // 2]])  # pos(i)

    def logits(self, start, stop):
        """Rows start..stop of u K^T / T, (R, K) in the buffer, each row's own logit -inf."""
        logits = self.xp.matmul(self.u[start:stop], self.keys.T, out=self.buffer[:stop - start])
        logits *= self.scale                                          # (R, d) x (d, K) / T
        logits[self.index[:stop - start], self.own[start:stop]] = -numpy.inf
        return logits

    def positives(self, start, stop):
        """Where rows start..stop of the block's logits hold their positives: (rows, columns)."""
        return self.index[:stop - start], self.positive[start:stop]


def nt_xent_reference(z, temperature=0.5):
    """The same loss written row by row in float64 NumPy: the oracle for tests and teaching."""
    z = numpy.asarray(z, dtype=numpy.float64)
    two_n = z.shape[0]
    u = z / numpy.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(two_n):
        positive = (i + two_n // 2) % two_n
        others = [k for k in range(two_n) if k != i]
        logits = numpy.array([u[i] @ u[k] / temperature for k in others])
        log_denominator = logits.max() + numpy.log(numpy.exp(logits - logits.max()).sum())
        total += log_denominator - u[i] @ u[positive] / temperature
    return total / two_n
