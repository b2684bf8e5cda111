"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR."""
import numpy

import nn.functional as F
from autograd import Tensor
from nn.distributed.collectives import all_gather


def nt_xent(z, temperature=0.5, group=None):
    """The SimCLR contrastive loss of projections `z`, shape (2N, d).

    Rows i and i+N are the two views of image i. With unit rows u = z / ||z||:

        logits = u u^T / temperature                                       (2N, 2N)
        loss_i = -log( exp(logits[i, pos(i)]) / sum_{k != i} exp(logits[i, k]) )

    where pos(i) = i+N for i < N and i-N otherwise; the loss is the mean of loss_i over the
    2N rows (the paper's definition; the official code reports the sum of the two halves'
    means, which is twice this). The self-similarity logits[i, i] is removed from the
    softmax by subtracting 1e9, as the official code does.

    group: a data-parallel run's communicator. Each rank's rows are then compared with every
    rank's (all_gather, whose backward returns every rank's use of these keys): the keys
    are the (2N W, d) rows of all W ranks in rank order, this rank's at offset rank * 2N, where
    its positives and its self-similarities lie. The loss is the mean over this rank's rows;
    the mean of the ranks' losses is the loss of the global batch of N W images.
    """
    if z.ndim != 2 or z.shape[0] % 2 or z.shape[0] < 4:
        raise ValueError(f"nt_xent expects z of shape (2N, d) with N >= 2 (two views of N images), "
                         f"got shape {z.shape}")
    two_n = z.shape[0]
    n = two_n // 2
    xp = z.xp
    u = F.normalize(z, dim=1)
    keys, offset = u, 0
    if group is not None and group.size > 1:
        keys, offset = all_gather(u, group), group.rank * two_n        # (2N W, d)
    logits = (u @ keys.T) * (1.0 / temperature)                       # (2N, 2N W)
    self_mask = xp.zeros((two_n, keys.shape[0]), dtype=z.dtype)
    self_mask[:, offset:offset + two_n] = xp.eye(two_n, dtype=z.dtype) * z.dtype.type(-1e9)
    self_mask = Tensor(self_mask)
    positives = offset + xp.concatenate([xp.arange(n, two_n), xp.arange(0, n)])  # its other view
    # these targets are valid by construction, and checking them would make a GPU wait for
    # the host every step
    return F.cross_entropy(logits + self_mask, positives, check_targets=False)


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
