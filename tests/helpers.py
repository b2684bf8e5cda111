"""Small shared helpers for the tests."""
import numpy
import pytest

from autograd import Tensor, to_numpy
from nn.functional.cpu import batch_norm_blocks, conv, winograd
from nn.functional.cuda import conv as cuda_conv
from nn.runtime import parallel, threads


def randn(xp, *shape, dtype="float64", seed=0, requires_grad=False, scale=1.0):
    """A Tensor of standard normal values (times `scale`), made on the host from `seed`."""
    values = numpy.random.default_rng(seed).standard_normal(shape) * scale
    return Tensor(xp.asarray(values.astype(dtype)), requires_grad=requires_grad)


def relative_error(ours, theirs):
    """max |ours - theirs| / max |theirs|: the error relative to the largest magnitude."""
    ours, theirs = numpy.asarray(to_numpy(ours), "float64"), numpy.asarray(theirs, "float64")
    assert ours.shape == theirs.shape, f"shapes differ: {ours.shape} vs {theirs.shape}"
    return float(numpy.abs(ours - theirs).max() / max(numpy.abs(theirs).max(), 1e-300))


# Parity tolerances against PyTorch, relative to the largest magnitude.
PARITY_TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def assert_same_step_results(a, b):
    """Two results (numbers, gradients, buffers by name, weights) of micro-batch tests are the
    same bit for bit (tests/test_micro_batch.py, tests/test_finetune_micro_batch.py)."""
    assert numpy.array_equal(a[0], b[0])
    for x, y in zip(a[1] + a[3] + list(a[2].values()), b[1] + b[3] + list(b[2].values())):
        assert numpy.array_equal(x, y)


def assert_close_step_results(ours, reference, tolerance):
    """Two results (numbers, gradients, buffers by name, weights) of micro-batch tests agree
    but for their numbers (each test checks its own): buffers to `tolerance` relative;
    gradients and weights relative to the largest of all (a bias before a batch norm has a
    gradient of 0 analytically: its own relative error means nothing)."""
    _, grads, buffers, weights = reference
    for name, buffer in buffers.items():
        assert relative_error(ours[2][name], buffer) < tolerance, name
    scale = max(numpy.abs(g).max() for g in grads)
    weight_scale = max(numpy.abs(w).max() for w in weights)
    for index, (mine, theirs) in enumerate(zip(ours[1], grads)):
        assert numpy.abs(mine - theirs).max() < tolerance * scale, f"gradient {index}"
    for index, (mine, theirs) in enumerate(zip(ours[3], weights)):
        assert numpy.abs(mine - theirs).max() < tolerance * weight_scale, f"weight {index}"


def import_torch():
    """torch, or skip the test (PyTorch is an oracle for tests only, never a dependency)."""
    return pytest.importorskip("torch", reason="PyTorch is not installed: parity test skipped")


def force_every_split(monkeypatch):
    """Every split a big array would see, forced onto small ones (nn/runtime, nn/functional/cpu,
    and the GPU convolution's chunks, nn/functional/cuda/conv.py): no minimum work per thread,
    pieces of one unit, batch-norm blocks of 2 rows of 8 bytes, product pieces of one row, conv
    chunks and Winograd pieces of one image, batch-norm tiles of 24 bytes."""
    monkeypatch.setattr(threads, "MIN_BYTES_PER_THREAD", 1)
    monkeypatch.setattr(threads, "MIN_PIECE_BYTES", 1)
    monkeypatch.setattr(threads, "PIECE_BYTES", 1)
    monkeypatch.setattr(batch_norm_blocks, "BLOCK_BYTES", 16)
    monkeypatch.setattr(parallel, "MIN_PIECE", 1)
    for module in (conv, cuda_conv):
        monkeypatch.setattr(module, "CHUNK_BYTES", 1)
        monkeypatch.setattr(module, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(winograd, "TILE_BUFFER_BYTES", 1)
    monkeypatch.setattr(batch_norm_blocks, "TILE_BYTES", 24)


def recording(calls, function):
    """`function`, appending (its arguments, its options, its result) to the list `calls` at
    every call: to check what a program measured, and on what."""
    def recorded(*args, **options):
        calls.append((args, options, function(*args, **options)))
        return calls[-1][2]
    return recorded


def knn_vote(train, train_labels, test, k, temperature, classes):
    """simclr.evaluate's k-NN vote written out plainly in float64, as an oracle: each test point
    takes its k most similar training points by cosine similarity, each adding
    exp(similarity / temperature) to its class. Returns the winning classes (N,) and whether
    each win is clear, its sum above the runner-up's by more than 1e-4 of it (float32 features
    could not move such a vote)."""
    train, test = (numpy.asarray(a, "float64") for a in (train, test))
    train = train / numpy.linalg.norm(train, axis=1, keepdims=True)
    test = test / numpy.linalg.norm(test, axis=1, keepdims=True)
    similarity = test @ train.T                                       # (N_test, N_train)
    votes = numpy.zeros((len(test), classes))
    for row, nearest in enumerate(numpy.argsort(-similarity, axis=1, kind="stable")[:, :k]):
        for index in nearest:
            votes[row, train_labels[index]] += numpy.exp(similarity[row, index] / temperature)
    best, runner_up = numpy.sort(votes, axis=1)[:, -1], numpy.sort(votes, axis=1)[:, -2]
    return votes.argmax(axis=1), best - runner_up > 1e-4 * best
