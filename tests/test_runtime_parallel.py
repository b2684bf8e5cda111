"""nn/runtime/parallel.py, whole-array operations cut by threads.py: products, sums of
products in runs, add, total, copy and column_sum, each against the NumPy expression it
stands for. Most run under `split_everything` (conftest.py): 1 or 3 threads with every split
forced onto small arrays, so the paths that only big arrays take in training run here."""
import numpy
import pytest

from nn.runtime import parallel, threads


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("M", [13, 3], ids=["split-rows", "split-columns"])
def test_split_products_equal_numpys(split_everything, dtype, M):
    """matmul cuts the rows of a (13 > 7 columns) or the columns of b (3 < 7); matmul_transposed
    sums pieces of 13 rows (13 >= 5 + 7) or computes rows of the result (3 < 5 + 7)."""
    rng = numpy.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(dtype) for shape in ((M, 5), (5, 7)))
    g = rng.standard_normal((M, 7)).astype(dtype)
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    numpy.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=tolerance)
    out = numpy.empty((M, 7), dtype)
    assert parallel.matmul(a, b, out) is out
    numpy.testing.assert_allclose(out, a @ b, rtol=tolerance)
    numpy.testing.assert_allclose(parallel.matmul_transposed(g, a), g.T @ a, rtol=tolerance)


# ----- a short sum, in runs -----------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.usefixtures("threads")  # restores the thread count (a parameter would hide threads)
def test_a_short_weight_gradient_adds_products_of_64_rows_in_order(n):
    """512 rows (a 1x1 conv of 8 images of 8x8), whatever the threads: eight products of 64
    rows, added in order, as PyTorch adds its images' (one product over 256 rows per thread
    erred 2.2-2.7x more than PyTorch's: tests/test_float32_accuracy.py)."""
    threads.set_num_threads(n)
    rng = numpy.random.default_rng(0)
    g = rng.standard_normal((512, 64)).astype("float32")
    x = (rng.standard_normal((512, 256)) + 10).astype("float32")
    expected = g[:64].T @ x[:64]
    for start in range(64, 512, 64):
        expected += g[start:start + 64].T @ x[start:start + 64]
    numpy.testing.assert_array_equal(parallel.matmul_transposed(g, x), expected)


def test_runs_are_taken_only_while_short_and_their_partial_products_small():
    """run_rows' rule (its docstring): SUM_RUNS runs of at least MIN_RUN_ROWS rows, none where
    that makes one run, runs of MAX_RUN_ROWS rows or more, or over RUNS_BYTES of partials."""
    assert parallel.run_rows(512, 64 * 256 * 4) == 64
    assert parallel.run_rows(100, 4) == 64                         # runs of 64 and 36
    assert parallel.run_rows(64, 4) is None                        # one run
    assert parallel.run_rows(2040, 4) == 255                       # 8 runs, just under 256 rows
    assert parallel.run_rows(2041, 4) is None                      # runs of 256 rows, as BLAS's
    assert parallel.run_rows(65536, 64 * 256 * 4) is None          # runs as long as BLAS's
    assert parallel.run_rows(512, 2**20 // 8) == 64                # 8 partials of 1 MiB in all
    assert parallel.run_rows(512, 2**20 // 8 + 1) is None          # ... one byte more
    assert parallel.run_rows(1024, 2048 * 512 * 4) is None         # 32 MiB of partials


@pytest.mark.parametrize("M", [512, 100])
def test_runs_of_a_short_sum_equal_numpys(split_everything, M):
    """512 rows: 8 whole runs; 100 rows: a run of 64 and the 36 left over."""
    rng = numpy.random.default_rng(1)
    g, x = (rng.standard_normal((M, n)) for n in (3, 5))
    assert parallel.run_rows(M, 3 * 5 * 8) is not None             # the runs are taken
    numpy.testing.assert_allclose(parallel.matmul_transposed(g, x), g.T @ x, rtol=1e-12)


# ----- sums and copies ----------------------------------------------------------------------

def test_split_add_keeps_the_layout_of_channels_last_views(split_everything):
    rng = numpy.random.default_rng(0)
    a = numpy.moveaxis(rng.standard_normal((5, 4, 3, 2)), -1, 1)  # (5, 2, 4, 3), channels last
    b = numpy.moveaxis(rng.standard_normal((5, 4, 3, 2)), -1, 1)
    total = parallel.add(a, b)
    numpy.testing.assert_array_equal(total, a + b)
    assert total.strides == a.strides
    assert parallel.add(numpy.float64(2), numpy.float64(3)) == 5


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


def test_add_and_copy_of_rows_without_elements(split_everything):
    """(5, 0) arrays, rows of no bytes (a split once divided by a row's size)."""
    empty = numpy.ones((5, 0))
    assert parallel.add(empty, empty).shape == (5, 0)
    assert parallel.copy(empty).shape == (5, 0)
    assert parallel.total([empty, empty, empty]).shape == (5, 0)


# ----- column_sum ---------------------------------------------------------------------------

@pytest.mark.parametrize("M", [0, 1, 33, 64, 65, 100, 512, 1000])
def test_column_sum_is_exact_where_every_partial_sum_is(M):
    """Integers: every sum is exact in float32, so any row lost or added twice (a short last run,
    fewer rows than a run) shows. The dtype is kept."""
    rows = numpy.random.default_rng(M).integers(-1000, 1000, (M, 5)).astype("float32")
    summed = parallel.column_sum(rows)
    assert summed.dtype == numpy.float32 and summed.shape == (5,)
    numpy.testing.assert_array_equal(summed, rows.astype("int64").sum(axis=0))


@pytest.mark.parametrize("M", [512, 4096, 65536])
def test_column_sum_errs_as_the_float64_sum_rounded_to_float32(M):
    """The docstring's claim: float32 sums of 64 rows, added in float64 and rounded once, err
    like a correctly rounded sum (within one float32 ulp of the float64 sum), where adding row
    after row in float32 (numpy.cumsum's last row) errs by several ulps, more as M grows."""
    rows = (numpy.random.default_rng(0).standard_normal((M, 16)) + 10).astype("float32")
    exact = rows.astype("float64").sum(axis=0)
    ulp = numpy.spacing(exact.astype("float32")).astype("float64")
    summed = parallel.column_sum(rows)
    assert summed.dtype == numpy.float32
    assert (numpy.abs(summed - exact) / ulp).max() <= 1
    assert (numpy.abs(numpy.cumsum(rows, axis=0)[-1] - exact) / ulp).max() > 2


def test_column_sum_of_float64_rows_stays_float64():
    rows = numpy.random.default_rng(0).standard_normal((1000, 7))
    summed = parallel.column_sum(rows)
    assert summed.dtype == numpy.float64
    numpy.testing.assert_allclose(summed, rows.sum(axis=0), rtol=1e-12, atol=1e-12)


IMPORT_CHANGES_NOTHING = """
import autograd.engine as engine
before = dict(engine._passes)
import nn, nn.functional, nn.optim, nn.runtime, nn.distributed
print(engine._passes == before, engine._passes["add"] is engine._plain_sum)
nn.runtime.use_threaded_gradients()
print(engine._passes["add"] is nn.runtime.parallel.add,
      engine._passes["copy"] is nn.runtime.parallel.copy)
"""


def test_importing_nn_leaves_the_engine_alone_until_a_program_asks_for_threads():
    """In a fresh process, importing nn (every package of it) changes none of the engine's
    gradient passes; use_threaded_gradients() then installs parallel's add and copy."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", IMPORT_CHANGES_NOTHING], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "True"]


def test_use_threaded_gradients_installs_parallel_add_and_copy_and_takes_them_back():
    """The engine then sums the gradients that meet at a tensor with parallel.add (to the last
    bit the NumPy sum, on every core), and enabled=False puts the plain expressions back."""
    from autograd import Tensor
    from autograd import engine
    previous = parallel.use_threaded_gradients(False)
    try:
        assert engine._passes["add"] is engine._plain_sum
        assert parallel.use_threaded_gradients() == (engine._plain_sum, engine._plain_copy)
        assert (engine._passes["add"], engine._passes["copy"]) == (parallel.add, parallel.copy)
        x = Tensor(numpy.arange(6.0).reshape(3, 2), requires_grad=True)
        (x * 2.0 + x * x).backward(numpy.ones((3, 2)))
        numpy.testing.assert_array_equal(x.grad, 2.0 + 2 * x.data)
    finally:
        engine.set_gradient_passes(*previous)
