"""autograd.parallel (work split over threads and cache-sized blocks), the ops that use it
(conv2d, max pooling, linear, the optimisers) with the splitting forced on, and autograd.memory.
The forced splitting (`split_everything`, in conftest.py) makes even tiny arrays go through
several threads and many blocks, so the paths that only big arrays take in training run here.
Batch norm's kernel has its own file, tests/test_batch_norm_blocks.py."""
import os

import numpy
import pytest

import nn.functional as F
from autograd import Tensor, gradcheck, parallel
from autograd.memory import reuse_freed_memory
from nn.functional.im2col import Conv2dIm2col
from nn.functional.pooling import max_pool2d
from helpers import import_torch, randn


def use_threads(n):
    """set_num_threads(n), skipping the test where NumPy's BLAS is not OpenBLAS (one thread)."""
    parallel.set_num_threads(n)
    if parallel.get_num_threads() != n:
        pytest.skip("NumPy's BLAS is not OpenBLAS here: autograd.parallel runs one thread")


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
