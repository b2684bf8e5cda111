"""NT-Xent: matches a row-by-row cross-entropy and PyTorch, has a correct gradient, behaves as the
paper says, and is computed in blocks of rows that never hold the (2N, K) logits."""
import math
import tracemalloc

import numpy
import pytest

from autograd import Tensor, gradcheck, to_numpy
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error
from simclr import loss as simclr_loss
from simclr.loss import BlockedNTXent, block_rows, nt_xent, nt_xent_reference


@pytest.mark.parametrize("n, d, temperature", [(2, 3, 0.5), (5, 8, 0.1), (8, 4, 1.0)])
def test_nt_xent_matches_brute_force_cross_entropy(xp, n, d, temperature):
    z = randn(xp, 2 * n, d, seed=n)
    ours = float(nt_xent(z, temperature).data)
    assert abs(ours - nt_xent_reference(z.numpy(), temperature)) < 1e-12


def test_nt_xent_gradient(xp):
    z = randn(xp, 6, 4, requires_grad=True)
    assert gradcheck(lambda z: nt_xent(z, 0.5), [z])


def test_nt_xent_of_random_projections_is_near_log_of_2n_minus_1(xp):
    n = 64
    z = randn(xp, 2 * n, 512, seed=3)  # random high-dimensional rows are nearly orthogonal
    assert abs(float(nt_xent(z, 0.5).data) - math.log(2 * n - 1)) < 0.05


def test_nt_xent_is_low_when_views_agree(xp):
    views = randn(xp, 8, 16, seed=4).data
    z = Tensor(xp.concatenate([views, views + 0.01 * views]))
    assert float(nt_xent(z, 0.1).data) < 0.1


def test_nt_xent_float32_stays_float32(xp):
    z = randn(xp, 8, 5, dtype="float32", requires_grad=True)
    loss = nt_xent(z, 0.5)
    loss.backward()
    assert loss.dtype == numpy.float32 and z.grad.dtype == numpy.float32


def test_nt_xent_rejects_an_odd_batch():
    with pytest.raises(ValueError, match=r"\(2N, d\).*\(5, 3\)"):
        nt_xent(Tensor(numpy.ones((5, 3))))


# ----- the blocked op: BlockedNTXent never holds the (2N, K) logits --------------------------

def small_blocks(monkeypatch):
    """Blocks of 3 rows: 2N = 10 rows go as 3, 3, 3 and an uneven 1."""
    monkeypatch.setattr(simclr_loss, "BLOCK_BYTES", {"cpu": 1, "gpu": 1})
    monkeypatch.setattr(simclr_loss, "MIN_BLOCK_ROWS", 3)


def test_block_rows_fill_the_budget_and_a_small_batch_is_one_block(monkeypatch):
    monkeypatch.setattr(simclr_loss, "BLOCK_BYTES", {"cpu": 4 * 2**20, "gpu": 64 * 2**20})
    monkeypatch.setattr(simclr_loss, "MIN_BLOCK_ROWS", 16)
    assert block_rows(8192, 8192, 4) == 128             # 128 rows of 8,192 float32: 4 MiB
    assert block_rows(8192, 8192, 4, "gpu") == 2048     # a GPU's blocks are larger
    assert block_rows(8, 8, 8) == 8                     # all of them
    assert block_rows(4096, 10**6, 4) == 16             # never fewer than MIN_BLOCK_ROWS


@pytest.mark.parametrize("blocks", ["one block", "blocks of 3"])
def test_nt_xent_in_blocks_matches_brute_force_and_has_a_correct_gradient(xp, blocks,
                                                                           monkeypatch):
    if blocks == "blocks of 3":
        small_blocks(monkeypatch)
    z = randn(xp, 10, 4, seed=5, requires_grad=True)
    assert abs(float(nt_xent(z, 0.3).data) - nt_xent_reference(z.numpy(), 0.3)) < 1e-12
    assert gradcheck(lambda z: nt_xent(z, 0.3), [z], seed=2)   # a random upstream gradient


def torch_nt_xent(torch, z, temperature):
    """The loss composed in PyTorch: the self-similarity masked by -1e9, as the official code."""
    u = torch.nn.functional.normalize(z, dim=1)
    two_n = z.shape[0]
    logits = u @ u.T / temperature + torch.eye(two_n, dtype=z.dtype) * -1e9
    positives = torch.cat([torch.arange(two_n // 2, two_n), torch.arange(0, two_n // 2)])
    return torch.nn.functional.cross_entropy(logits, positives)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("blocks", ["one block", "blocks of 3"])
def test_nt_xent_matches_pytorch(xp, dtype, blocks, monkeypatch):
    torch = import_torch()
    if blocks == "blocks of 3":
        small_blocks(monkeypatch)
    z = randn(xp, 10, 6, dtype=dtype, seed=7, requires_grad=True)
    tz = torch.tensor(z.numpy(), requires_grad=True)
    ours, theirs = nt_xent(z, 0.2), torch_nt_xent(torch, tz, 0.2)
    assert relative_error(ours.data, theirs.detach().numpy()) <= PARITY_TOLERANCE[dtype]
    ours.backward(xp.asarray(numpy.array(0.7, dtype=dtype)))
    theirs.backward(torch.tensor(0.7, dtype=tz.dtype))
    assert relative_error(z.grad, tz.grad.numpy()) <= PARITY_TOLERANCE[dtype]


def composed_in_numpy(u, keys, temperature, offset, upstream):
    """The loss and (du, dkeys) of rows u against keys written whole in NumPy: the logits
    (2N, K) with u's own similarities at columns offset.. masked, a softmax, a cross-entropy."""
    two_n = len(u)
    logits = u @ keys.T / temperature
    logits[numpy.arange(two_n), offset + numpy.arange(two_n)] = -numpy.inf
    p = numpy.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    positives = offset + (numpy.arange(two_n) + two_n // 2) % two_n
    loss = -numpy.log(p[numpy.arange(two_n), positives]).mean()
    p[numpy.arange(two_n), positives] -= 1
    g = p * upstream / two_n / temperature                             # dL/d(u keys^T)
    return loss, g @ keys, g.T @ u


@pytest.mark.parametrize("blocks", ["one block", "blocks of 3"])
def test_rows_against_more_keys_than_rows_as_on_rank_1_of_3(xp, blocks, monkeypatch):
    """K = 3 x 2N keys, this rank's 10 rows at offset 10 (the other ranks' keys around them):
    loss and both gradients as the whole-matrix formula, and a gradcheck of both inputs."""
    if blocks == "blocks of 3":
        small_blocks(monkeypatch)
    rng = numpy.random.default_rng(9)
    rows = rng.standard_normal((10, 5))
    rows /= numpy.linalg.norm(rows, axis=1, keepdims=True)
    others = rng.standard_normal((20, 5))
    keys_values = numpy.concatenate([others[:10], rows, others[10:]])  # (30, 5)
    u = Tensor(xp.asarray(rows), requires_grad=True)
    keys = Tensor(xp.asarray(keys_values), requires_grad=True)
    loss = BlockedNTXent.apply(u, keys, temperature=0.4, offset=10)
    loss.backward(xp.asarray(numpy.array(1.3)))
    expected, du, dkeys = composed_in_numpy(rows, keys_values, 0.4, 10, 1.3)
    assert abs(float(loss.data) - expected) < 1e-12
    assert relative_error(u.grad, du) < 1e-12 and relative_error(keys.grad, dkeys) < 1e-12
    u.grad = keys.grad = None
    assert gradcheck(lambda u, k: BlockedNTXent.apply(u, k, temperature=0.4, offset=10),
                     [u, keys], seed=4)


def test_one_tensor_as_rows_and_keys_gets_both_gradients(xp):
    """On one process u is given twice; the engine adds its gradient as rows and as keys."""
    values = randn(xp, 8, 3, seed=6).data
    values /= xp.linalg.norm(values, axis=1, keepdims=True)
    shared = Tensor(values.copy(), requires_grad=True)
    BlockedNTXent.apply(shared, shared, temperature=0.5, offset=0).backward()
    rows, keys = Tensor(values.copy(), requires_grad=True), Tensor(values.copy(),
                                                                   requires_grad=True)
    BlockedNTXent.apply(rows, keys, temperature=0.5, offset=0).backward()
    assert relative_error(shared.grad, to_numpy(rows.grad + keys.grad)) < 1e-14


def test_nt_xent_keeps_no_matrix_of_the_batch_alive_and_peaks_below_it():
    """2N = 2,048 rows of d = 16, float32: a (2N, 2N) matrix would be 16 MiB. After forward
    only O(2N d) stays alive (u, the row's lse: under 1 MiB); forward and backward each peak at
    about one block (BLOCK_BYTES, 4 MiB), far below two (2N, 2N) matrices."""
    matrix = 2048 * 2048 * 4
    z = Tensor(numpy.random.default_rng(0).standard_normal((2048, 16)).astype(numpy.float32),
               requires_grad=True)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        loss = nt_xent(z, 0.5)
        alive, forward_peak = (m - start for m in tracemalloc.get_traced_memory())
        tracemalloc.reset_peak()
        loss.backward()
        backward_peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert alive < 2**20, f"{alive / 2**20:.1f} MiB alive after forward"
    for peak in (forward_peak, backward_peak):
        assert peak < min(simclr_loss.BLOCK_BYTES["cpu"] + 2**20, 2 * matrix), \
            f"peaks of {forward_peak / 2**20:.1f} and {backward_peak / 2**20:.1f} MiB"
