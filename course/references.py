"""NT-Xent as one Function with a hand-written backward: the course's reference.

The library computes SimCLR's loss (simclr/loss.py) from Tensor ops, normalize, a matmul and
cross_entropy, and lets the engine chain their backward passes. A student writes it as one op,
so the kit keeps that op here, marked for the handout like the library's references; the
kit's tests hold it to simclr.loss.nt_xent, forward and gradient.

For z (2N, d), views i and i+N of image i, temperature T:

    u_i = z_i / ||z_i||                             unit rows
    s_ik = u_i . u_k / T  (k != i),  s_ii masked    (2N, 2N) logits
    p_ik = exp(s_ik) / sum_{k'} exp(s_ik')          each row's softmax
    L = -(1 / 2N) sum_i log p_{i, pos(i)},  pos(i) = i + N mod 2N

Backward, with g the upstream scalar:

    dL/ds_ik = g (p_ik - [k = pos(i)]) / (2N)                           (2N, 2N), call it D
    dL/du    = (D + D^T) u / T     u_i meets u_k twice: in s_ik and in s_ki
    dL/dz_i  = (dL/du_i - u_i (u_i . dL/du_i)) / ||z_i||   (normalisation's Jacobian)
"""
from autograd import Function, array_module

MASK = -1e9  # added to the self-similarities s_ii, as simclr/loss.py does


class NTXent(Function):
    """The SimCLR loss of projections z (2N, d) at temperature T, as one op (module docstring)."""

    @staticmethod
    def forward(ctx, z, temperature=0.5):
        xp = array_module(z)
        two_n = z.shape[0]
        norm = xp.sqrt((z * z).sum(axis=1, keepdims=True))           # (2N, 1)
        u = z / norm                                                  # (2N, d)
        logits = u @ u.T / temperature + xp.eye(two_n, dtype=z.dtype) * MASK
        shifted = logits - logits.max(axis=1, keepdims=True)         # stable softmax
        exp = xp.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        positives = (xp.arange(two_n) + two_n // 2) % two_n          # pos(i)
        log_p = shifted[xp.arange(two_n), positives] - xp.log(total[:, 0])
        ctx.temperature = temperature
        ctx.save_for_backward(u, norm, exp / total, positives)
        return -log_p.mean()

    @staticmethod
    def backward(ctx, grad):
        # course: begin nt-xent-backward
        u, norm, softmax, positives = ctx.saved
        xp = array_module(u)
        two_n = u.shape[0]
        d_logits = softmax.copy()                                     # (2N, 2N)
        d_logits[xp.arange(two_n), positives] -= 1                    # p - onehot(pos)
        d_logits *= grad / two_n
        d_u = (d_logits + d_logits.T) @ u / ctx.temperature           # (2N, d)
        along_u = (d_u * u).sum(axis=1, keepdims=True)                # (2N, 1)
        return (d_u - u * along_u) / norm
        # course: end nt-xent-backward
