"""autograd.parallel (work split over threads and cache-sized blocks), the ops that use it
(conv2d, batch norm fused with ReLU and a residual, linear) with the splitting forced on, and
autograd.memory. The forced splitting (`split_everything`) makes even tiny arrays go through
several threads and many blocks, so the paths that only big arrays take in training run here."""
import os

import numpy
import pytest

import nn.functional as F
from autograd import Tensor, gradcheck, parallel, to_numpy
from autograd.memory import reuse_freed_memory
from nn.functional import conv, normalization
from nn.functional.im2col import Conv2dIm2col
from nn.functional.normalization import _batch_moments, _Blocks, batch_norm_reference
from nn.functional.pooling import max_pool2d
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error


@pytest.fixture
def threads():
    """Restores the thread count after the test."""
    before = parallel.get_num_threads()
    yield
    parallel.set_num_threads(before)


def use_threads(n):
    """set_num_threads(n), skipping the test where NumPy's BLAS is not OpenBLAS (one thread)."""
    parallel.set_num_threads(n)
    if parallel.get_num_threads() != n:
        pytest.skip("NumPy's BLAS is not OpenBLAS here: autograd.parallel runs one thread")


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def split_everything(request, monkeypatch, threads):
    """n threads, no minimum work per thread, blocks of 2 rows of 8 bytes, conv chunks of one
    image, batch-norm tiles of 24 bytes: every split a big array would see, on a small one."""
    parallel.set_num_threads(request.param)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 16)
    monkeypatch.setattr(conv, "CHUNK_BYTES", {"cpu": 1, "cuda": 1})
    monkeypatch.setattr(conv, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(parallel, "MIN_PIECE", 1)
    monkeypatch.setattr(normalization, "TILE_BYTES", 24)
    return request.param


# ----- the module itself --------------------------------------------------------------------

def test_small_work_stays_in_the_calling_thread(threads):
    use_threads(2)
    small = parallel.MIN_BYTES_PER_THREAD  # one thread's worth of bytes in all
    pieces = lambda rows: parallel.for_rows(lambda start, stop: (start, stop), rows, 1,
                                            numpy.zeros(1))
    assert pieces(small) == [(0, small)]
    assert len(pieces(4 * small)) > 1


def test_run_uses_the_pool_and_propagates_errors(monkeypatch, threads):
    use_threads(2)
    seen = parallel.run(lambda start, stop: (start, stop, parallel.thread_index()),
                        [(0, 5), (5, 9)])
    assert seen == [(0, 5, 0), (5, 9, 1)]

    def fail(start, stop):
        raise ArithmeticError(f"rows {start}..{stop}")
    with pytest.raises(ArithmeticError, match="rows"):
        parallel.run(fail, [(0, 5), (5, 9)])


def test_a_split_inside_a_split_runs_serially(monkeypatch, threads):
    """A nested split would wait for a pool thread that is itself waiting: it must not split."""
    parallel.set_num_threads(2)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)
    array = numpy.zeros(1)
    inner = parallel.for_rows(
        lambda start, stop: parallel.for_rows(lambda a, b: (a, b), 8, 1, array), 8, 1, array)
    assert len(inner) > 1 and all(ranges == [(0, 8)] for ranges in inner)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("M", [13, 3], ids=["split-rows", "split-columns"])
def test_split_products_equal_numpys(split_everything, dtype, M):
    rng = numpy.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(dtype) for shape in ((M, 5), (5, 7)))
    g = rng.standard_normal((M, 7)).astype(dtype)
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    numpy.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=tolerance)
    out = numpy.empty((M, 7), dtype)
    assert parallel.matmul(a, b, out) is out
    numpy.testing.assert_allclose(parallel.matmul_transposed(g, a), g.T @ a, rtol=tolerance)


@pytest.mark.parametrize("n", [1, 2])
def test_a_short_weight_gradient_adds_products_of_64_rows_in_order(threads, n):
    """512 rows (a 1x1 conv of 8 images of 8x8), whatever the threads: eight products of 64
    rows, added in order, as PyTorch adds its images' (one product over 256 rows per thread
    erred 2.2-2.7x more than PyTorch's: tests/test_float32_accuracy.py)."""
    use_threads(n)
    rng = numpy.random.default_rng(0)
    g = rng.standard_normal((512, 64)).astype("float32")
    x = (rng.standard_normal((512, 256)) + 10).astype("float32")
    expected = g[:64].T @ x[:64]
    for start in range(64, 512, 64):
        expected += g[start:start + 64].T @ x[start:start + 64]
    numpy.testing.assert_array_equal(parallel.matmul_transposed(g, x), expected)


def test_runs_are_taken_only_while_short_and_their_partial_products_small():
    assert parallel._run_rows(512, 64 * 256 * 4) == 64
    assert parallel._run_rows(100, 4) == 64                         # runs of 64 and 36
    assert parallel._run_rows(64, 4) is None                        # one run
    assert parallel._run_rows(65536, 64 * 256 * 4) is None          # runs as long as BLAS's
    assert parallel._run_rows(1024, 2048 * 512 * 4) is None         # 8 MiB of partials


@pytest.mark.parametrize("M", [512, 100])
def test_runs_of_a_short_sum_equal_numpys(split_everything, M):
    rng = numpy.random.default_rng(1)
    g, x = (rng.standard_normal((M, n)) for n in (3, 5))
    numpy.testing.assert_allclose(parallel.matmul_transposed(g, x), g.T @ x, rtol=1e-12)


def test_split_add_keeps_the_layout_of_channels_last_views(split_everything):
    rng = numpy.random.default_rng(0)
    a = numpy.moveaxis(rng.standard_normal((5, 4, 3, 2)), -1, 1)  # (5, 2, 4, 3), channels last
    b = numpy.moveaxis(rng.standard_normal((5, 4, 3, 2)), -1, 1)
    total = parallel.add(a, b)
    numpy.testing.assert_array_equal(total, a + b)
    assert total.strides == a.strides
    assert parallel.add(numpy.float64(2), numpy.float64(3)) == 5


def covers_in_order(ranges, length):
    return [r for start, stop in ranges for r in range(start, stop)] == list(range(length))


def test_shrinking_ranges_end_in_small_pieces():
    sizes = [stop - start for start, stop in parallel.shrinking_ranges(1000, 100, 2, 10)]
    assert sizes[:6] == [100] * 6  # 400+ left: pieces of the largest size
    assert sizes[6:9] == [100, 75, 57]  # then a quarter (2 threads) of what is left ...
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))
    assert min(sizes[:-1]) == 10 and sum(sizes) == 1000  # ... down to the smallest
    assert covers_in_order(parallel.shrinking_ranges(1000, 100, 2, 10), 1000)
    assert parallel.shrinking_ranges(5, 100, 2) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert parallel.shrinking_ranges(0, 100, 2) == []
    assert parallel.shrinking_ranges(3, 0, 2) == [(0, 1), (1, 2), (2, 3)]  # at least 1
    assert parallel.shrinking_ranges(10, 4, 1, 1) == [(0, 4), (4, 8), (8, 10)]  # one thread


def test_products_are_cut_into_pieces_of_about_piece_bytes(monkeypatch, threads):
    use_threads(2)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)
    monkeypatch.setattr(parallel, "PIECE_BYTES", 100)
    monkeypatch.setattr(parallel, "MIN_PIECE", 1)
    a = numpy.zeros((10, 1))
    pieces = parallel._pieces(500, 10, a)  # 5000 bytes: pieces of 100 bytes, then smaller
    assert covers_in_order(pieces, 500)
    sizes = [stop - start for start, stop in pieces]
    assert sizes[:40] == [10] * 40 and max(sizes) == 10 and min(sizes[:-1]) == 1
    assert len(parallel._pieces(3, 10, a)) == 3  # never more pieces than rows
    assert parallel._pieces(50, 1, a)[0] == (0, 13)  # at least PIECES_PER_THREAD per thread
    monkeypatch.setattr(parallel, "MIN_PIECE", 100)  # but never under MIN_PIECE rows ...
    assert [stop - start for start, stop in parallel._pieces(500, 10, a)] == [100] * 5
    assert parallel._pieces(150, 10, a) == [(0, 75), (75, 150)]  # ... unless a thread gets none
    parallel.set_num_threads(1)
    assert parallel._pieces(50, 10, a) == [(0, 50)]  # one thread: one piece


def test_for_rows_covers_the_rows_in_pieces(monkeypatch, threads):
    use_threads(2)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 4)
    seen = parallel.for_rows(lambda start, stop: (start, stop), 100, 1, numpy.zeros(1))
    assert covers_in_order(seen, 100) and len(seen) > 4  # shrinking pieces, returned in order
    assert all(stop - start >= 1 for start, stop in seen)
    parallel.set_num_threads(1)
    assert parallel.for_rows(lambda start, stop: (start, stop), 100, 1, numpy.zeros(1)) == \
        [(0, 100)]


def test_total_adds_in_list_order_whatever_the_split(split_everything):
    rng = numpy.random.default_rng(0)
    parts = [rng.standard_normal((7, 3)).astype("float32") for _ in range(5)]
    expected = parts[0] + parts[1]
    for part in parts[2:]:
        expected = expected + part  # the same order, so the same rounding: equal bits
    numpy.testing.assert_array_equal(parallel.total(parts), expected)
    single = parallel.total(parts[:1])
    numpy.testing.assert_array_equal(single, parts[0])
    assert single is not parts[0]  # a new array, never an alias of an input
    assert parallel.total([numpy.float32(1), numpy.float32(2)]) == 3


def test_copy_of_a_strided_view_is_contiguous_and_equal(split_everything):
    x = numpy.arange(5 * 6 * 4 * 3.0).reshape(5, 6, 4, 3)
    view = x[:, ::2, ::2]
    copied = parallel.copy(view)
    numpy.testing.assert_array_equal(copied, view)
    assert copied.flags.c_contiguous and not numpy.shares_memory(copied, x)


def _split_product_in_a_child(queue):
    a = numpy.arange(12.0).reshape(6, 2)
    queue.put(parallel.matmul(a, a.T).tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_pool_of_its_own(monkeypatch, threads):
    """After fork the parent's pool threads do not exist in the child: work handed to them
    would wait forever. The child must start its own pool."""
    import multiprocessing
    parallel.set_num_threads(2)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)
    parallel.matmul(numpy.ones((4, 2)), numpy.ones((2, 3)))  # the parent's pool is in use
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_split_product_in_a_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's thread pool")
    a = numpy.arange(12.0).reshape(6, 2)
    assert queue.get(timeout=5) == (a @ a.T).tolist()


def test_blas_description_names_openblas_or_is_none():
    description = parallel.blas_description()
    assert description is None or "OpenBLAS" in description


def test_set_num_threads_rejects_nonsense():
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="positive int"):
            parallel.set_num_threads(bad)


def test_reuse_freed_memory_is_idempotent():
    first = reuse_freed_memory()
    assert isinstance(first, bool) and reuse_freed_memory() == first


# ----- the ops, split -----------------------------------------------------------------------

@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0),
                                                     (5, 1, 2)])
def test_conv2d_split_over_threads_and_chunks_matches_the_reference(split_everything, kernel,
                                                                    stride, padding):
    x = randn(numpy, 5, 3, 7, 6, requires_grad=True)
    w = randn(numpy, 4, 3, kernel, kernel, seed=1, requires_grad=True)
    x_ref, w_ref = (Tensor(t.data.copy(), requires_grad=True) for t in (x, w))
    upstream = numpy.random.default_rng(2).standard_normal(
        F.conv2d(x, w, stride=stride, padding=padding).shape)
    F.conv2d(x, w, stride=stride, padding=padding).backward(upstream)
    Conv2dIm2col.apply(x_ref, w_ref, stride=(stride, stride),
                       padding=(padding, padding)).backward(upstream)
    numpy.testing.assert_allclose(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(w.grad, w_ref.grad, rtol=1e-10, atol=1e-12)


def test_max_pool2d_of_channels_last_input_split_over_threads_matches_pytorch(split_everything):
    rng = numpy.random.default_rng(0)
    x_last = rng.standard_normal((4, 9, 11, 5))                    # (N, H, W, C) memory
    upstream = rng.standard_normal((4, 5, 5, 6))
    x = Tensor(x_last.transpose(0, 3, 1, 2), requires_grad=True)   # as conv2d's output
    out = max_pool2d(x, 3, 2, 1)
    out.backward(upstream)
    nchw = Tensor(numpy.ascontiguousarray(x.data), requires_grad=True)
    max_pool2d(nchw, 3, 2, 1).backward(upstream)                  # the same op on NCHW memory
    numpy.testing.assert_array_equal(nchw.grad, x.grad)
    torch = import_torch()
    x_torch = torch.tensor(numpy.ascontiguousarray(x.data), requires_grad=True)
    out_torch = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1)
    out_torch.backward(torch.tensor(upstream))
    numpy.testing.assert_array_equal(out.data, out_torch.detach().numpy())
    numpy.testing.assert_allclose(x.grad, x_torch.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_linear_split_matches_finite_differences(split_everything):
    x = randn(numpy, 9, 4, requires_grad=True)
    w, b = randn(numpy, 3, 4, seed=1, requires_grad=True), randn(numpy, 3, seed=2,
                                                                requires_grad=True)
    assert gradcheck(F.linear, [x, w, b])


def batch_norm_inputs(xp, shape, dtype="float64"):
    rng = numpy.random.default_rng(5)
    channels = shape[1]
    x = randn(xp, *shape, dtype=dtype, scale=2.0, requires_grad=True)
    residual = randn(xp, *shape, dtype=dtype, seed=9, requires_grad=True)
    weight = Tensor(xp.asarray((1.5 + 0.3 * rng.standard_normal(channels)).astype(dtype)),
                    requires_grad=True)
    bias = Tensor(xp.asarray(rng.standard_normal(channels).astype(dtype)), requires_grad=True)
    stats = (xp.asarray(rng.standard_normal(channels).astype(dtype)),
             xp.asarray((0.5 + rng.random(channels)).astype(dtype)))
    return x, residual, weight, bias, stats


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", ["relu", "residual", "residual+relu"])
def test_fused_batch_norm_gradients_match_finite_differences(xp, split_everything, training,
                                                             fused):
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(xp, (4, 3, 5, 3))
    relu = "relu" in fused
    if "residual" in fused:
        assert gradcheck(lambda x, r, w, b: F.batch_norm(x, mean, var, w, b, training=training,
                                                         residual=r, relu=relu),
                         [x, residual, weight, bias])
    else:
        assert gradcheck(lambda x, w, b: F.batch_norm(x, mean, var, w, b, training=training,
                                                      relu=relu), [x, weight, bias])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_matches_pytorch(xp, split_everything, dtype, training):
    """relu(bn(x) + residual) and its four gradients, against PyTorch's separate ops."""
    torch = import_torch()
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(xp, (6, 4, 5, 5), dtype)
    x.data += 0.5
    tx, tr, tw, tb = (torch.tensor(to_numpy(t.data), requires_grad=True)
                      for t in (x, residual, weight, bias))
    t_mean, t_var = (torch.from_numpy(to_numpy(s).copy()) for s in (mean, var))
    ours = F.batch_norm(x, mean, var, weight, bias, training=training, momentum=0.3,
                        residual=residual, relu=True)
    theirs = torch.relu(torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb,
                                                       training=training, momentum=0.3) + tr)
    upstream = numpy.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    ours.backward(xp.asarray(upstream))
    theirs.backward(torch.from_numpy(upstream))
    pairs = [("output", ours.data, theirs), ("running_mean", mean, t_mean),
             ("running_var", var, t_var)]
    pairs += [(f"gradient of {name}", mine.grad, t.grad)
              for name, mine, t in (("x", x, tx), ("residual", residual, tr),
                                    ("weight", weight, tw), ("bias", bias, tb))]
    for what, mine, t in pairs:
        error = relative_error(mine, t.detach().numpy())
        assert error <= PARITY_TOLERANCE[dtype], f"{what}: relative error {error:.3g} ({dtype})"


@pytest.mark.parametrize("fused", ["none", "relu", "residual+relu"])
def test_fused_batch_norm_equals_the_tensor_op_reference(xp, split_everything, fused):
    """The fast op against batch_norm_reference (plain Tensor ops), values and all gradients."""
    x, residual, weight, bias, _ = batch_norm_inputs(xp, (5, 4, 3, 6))
    copies = [Tensor(t.data.copy(), requires_grad=True) for t in (x, residual, weight, bias)]
    relu, res = "relu" in fused, "residual" in fused
    fast = F.batch_norm(x, None, None, weight, bias, training=True,
                        residual=residual if res else None, relu=relu)
    slow = batch_norm_reference(copies[0], copies[2], copies[3],
                                residual=copies[1] if res else None, relu=relu)
    upstream = xp.asarray(numpy.random.default_rng(4).standard_normal(x.shape))
    fast.backward(upstream)
    slow.backward(upstream)
    assert relative_error(fast.data, slow.data) < 1e-12
    for name, mine, theirs in zip(("x", "residual", "weight", "bias"), (x, residual, weight, bias),
                                  copies):
        if name == "residual" and not res:
            continue
        assert relative_error(mine.grad, theirs.grad) < 1e-10, name


def test_blocked_moments_are_exact_for_data_far_from_zero(split_everything):
    """A mean 1000 times the spread: E[x^2] - E[x]^2 in float32 would lose every digit; the
    blocks' combined centred sums must match float64 to float32 precision."""
    rng = numpy.random.default_rng(0)
    rows = (1000 + rng.standard_normal((103, 3))).astype(numpy.float32)
    mean, var = _batch_moments(rows, _Blocks(rows))
    exact = rows.astype(numpy.float64)
    numpy.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-7)
    numpy.testing.assert_allclose(var, exact.var(axis=0), rtol=1e-5)


@pytest.mark.parametrize("far", ["none", "few", "many"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_centres_the_channels_far_from_zero_and_matches_pytorch(
        split_everything, far, training):
    """The three ways of normalization._Centring: no channel with mu^2 > var (nothing
    centred), a few (their columns redone apart) and many (whole blocks centred, c = 0 in
    the other channels). Each must give PyTorch's output and gradients in float64, running
    statistics included, and take the way it was meant to."""
    torch = import_torch()
    C = 34                                                     # C // FEW_CENTRED = 2
    offsets = numpy.zeros(C)
    offsets[{"none": [], "few": [5, 20], "many": list(range(0, C, 3))}[far]] = 10.0
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(numpy, (6, C, 3, 4))
    x.data += offsets.reshape(1, C, 1, 1) * x.data.std()
    if not training:                                           # running stats near the batch's
        mean[...] = x.data.mean(axis=(0, 2, 3))
        var[...] = x.data.var(axis=(0, 2, 3))
    centring = normalization._Centring(mean if not training else x.data.mean(axis=(0, 2, 3)),
                                       var if not training else x.data.var(axis=(0, 2, 3)),
                                       x.dtype, _Blocks(x.data.reshape(-1, C)))
    assert (centring.few is None, centring.everywhere) == {
        "none": (True, False), "few": (False, False), "many": (True, True)}[far]
    tx, tr, tw, tb = (torch.tensor(to_numpy(t.data), requires_grad=True)
                      for t in (x, residual, weight, bias))
    t_mean, t_var = (torch.from_numpy(s.copy()) for s in (mean, var))
    ours = F.batch_norm(x, mean, var, weight, bias, training=training, residual=residual,
                        relu=True)
    theirs = torch.relu(torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb,
                                                       training=training) + tr)
    upstream = numpy.random.default_rng(2).standard_normal(x.shape)
    ours.backward(upstream)
    theirs.backward(torch.from_numpy(upstream))
    pairs = [("output", ours.data, theirs), ("running_mean", mean, t_mean),
             ("running_var", var, t_var)]
    pairs += [(f"gradient of {name}", mine.grad, t.grad)
              for name, mine, t in (("x", x, tx), ("residual", residual, tr),
                                    ("weight", weight, tw), ("bias", bias, tb))]
    for what, mine, t in pairs:
        error = relative_error(mine, t.detach().numpy())
        assert error <= PARITY_TOLERANCE["float64"], f"{far} {what}: relative error {error:.3g}"


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_optimizer_steps_on_threads_equal_one_thread(split_everything, optimizer):
    from nn.module import Parameter
    from nn.optim import LARS, SGD

    def two_steps():
        rng = numpy.random.default_rng(0)
        params = [Parameter(rng.standard_normal(shape).astype("float32"))
                  for shape in ((6, 5), (7,), (3, 2, 2), (1,), (4, 4))]
        make = {"lars": lambda: LARS(params, lr=0.5, weight_decay=1e-3),
                "sgd": lambda: SGD(params, lr=0.5, momentum=0.9, nesterov=True)}[optimizer]
        opt = make()
        for _ in range(2):
            for index, param in enumerate(params):
                param.grad = None if index == 3 else rng.standard_normal(param.shape).astype(
                    "float32")  # parameter 3 has no gradient: left alone
            opt.step()
        return [param.data for param in params]
    threaded = two_steps()
    parallel.set_num_threads(1)
    for a, b in zip(threaded, two_steps()):
        numpy.testing.assert_array_equal(a, b)


def test_batch_norm_blocks_are_whole_tiles_then_the_rest(monkeypatch):
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 64)      # 8 rows of 8 bytes per block ...
    monkeypatch.setattr(normalization, "TILE_BYTES", 24)  # ... but a whole number of 3-row tiles
    rows = numpy.arange(46, dtype=numpy.float32).reshape(23, 2)
    blocks = _Blocks(rows)
    assert blocks.tile_rows == 3
    assert blocks.ranges == [(0, 6), (6, 12), (12, 18), (18, 21), (21, 23)]
    for start, stop in blocks.ranges:
        view = blocks.view(rows, start, stop)
        assert view.shape[1:] == blocks.tile(numpy.zeros(2, numpy.float32))[:view.shape[1]].shape
        assert numpy.shares_memory(view, rows)
        numpy.testing.assert_array_equal(view.reshape(-1, 2), rows[start:stop])


def test_batch_norm_rejects_a_residual_of_another_shape():
    x, residual, weight, bias, (mean, var) = batch_norm_inputs(numpy, (2, 3, 4, 4))
    with pytest.raises(ValueError, match="residual has shape"):
        F.batch_norm(x, mean, var, weight, bias, residual=Tensor(residual.data[:1]))
    with pytest.raises(TypeError, match="residual is a ndarray"):
        F.batch_norm(x, mean, var, weight, bias, residual=residual.data)
