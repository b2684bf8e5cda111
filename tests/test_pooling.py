"""max_pool2d, avg_pool2d, adaptive_avg_pool2d: gradients against finite differences, the
argmax routing of max pooling (its reference and its kernel alike, and the kernel held to the
reference), forward and backward against PyTorch, bad settings, and max pooling of channels-last
input split over the CPU's threads."""
import numpy
import pytest

from autograd import Tensor, gradcheck, to_numpy
from nn.functional.dispatch import use_reference
from nn.functional.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error

# (input shape, kernel_size, stride, padding)
WINDOWS = {
    "kernel3_stride2_pad1_stem": ((2, 2, 7, 9), 3, 2, 1),
    "kernel2": ((1, 2, 6, 8), 2, None, 0),
    "kernel_2x3_stride_1x2_pad_1x1": ((1, 2, 5, 7), (2, 3), (1, 2), (1, 1)),
}
POOLS = {"max_pool2d": max_pool2d, "avg_pool2d": avg_pool2d}


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("pool", POOLS)
def test_pool_gradients_match_finite_differences(xp, pool, window):
    # random normal inputs: no ties, so the max is differentiable at these points
    x_shape, kernel, stride, padding = WINDOWS[window]
    x = randn(xp, *x_shape, seed=1, requires_grad=True)
    gradcheck(lambda x: POOLS[pool](x, kernel, stride, padding), [x])


def test_adaptive_avg_pool2d_gradient_matches_finite_differences(xp):
    x = randn(xp, 2, 3, 5, 4, seed=1, requires_grad=True)
    gradcheck(lambda x: adaptive_avg_pool2d(x, 1), [x])


@pytest.mark.parametrize("reference", [False, True], ids=["kernel", "reference"])
@pytest.mark.parametrize("window", WINDOWS)
def test_max_pool2d_reference_gradients_match_finite_differences(xp, window, reference):
    x_shape, kernel, stride, padding = WINDOWS[window]
    x = randn(xp, *x_shape, seed=1, requires_grad=True)
    with use_reference(reference):
        gradcheck(lambda x: max_pool2d(x, kernel, stride, padding), [x])


@pytest.mark.parametrize("memory", ["nchw", "channels-last"])
@pytest.mark.parametrize("window", WINDOWS)
def test_max_pool2d_kernel_equals_the_reference_bitwise_with_ties(xp, window, memory):
    """Small integers, so that most windows hold ties: the kernel must pick the same argmax
    as the reference, in either memory layout, and so give the same bits."""
    x_shape, kernel, stride, padding = WINDOWS[window]
    values = numpy.random.default_rng(3).integers(-2, 3, x_shape).astype("float64")
    if memory == "channels-last":
        values = numpy.ascontiguousarray(values.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    results = []
    for reference in (False, True):
        x = Tensor(xp.asarray(values), requires_grad=True)
        with use_reference(reference):
            out = max_pool2d(x, kernel, stride, padding)
            out.backward(randn(xp, *out.shape, seed=4).data)
        results.append((to_numpy(out.data), to_numpy(x.grad)))
    for kernel_result, reference_result in zip(*results):
        numpy.testing.assert_array_equal(kernel_result, reference_result)


@pytest.mark.parametrize("reference", [False, True], ids=["kernel", "reference"])
def test_max_pool2d_sends_gradient_of_a_tie_to_the_first_maximum(xp, reference):
    x = Tensor(xp.zeros((1, 1, 2, 4)), requires_grad=True)
    with use_reference(reference):
        max_pool2d(x, 2).backward(xp.asarray([[[[3.0, 5.0]]]]))
    expected = numpy.array([[[[3.0, 0, 5.0, 0], [0, 0, 0, 0]]]])
    assert numpy.array_equal(to_numpy(x.grad), expected)


def test_max_pool2d_overlapping_windows_accumulate_at_a_shared_argmax(xp):
    # kernel 3, stride 2 over 5 columns: both windows contain column 2, the maximum
    x = Tensor(xp.asarray([[[[0.0, 1.0, 9.0, 2.0, 3.0]]]]), requires_grad=True)
    out = max_pool2d(x, (1, 3), stride=(1, 2))
    assert numpy.array_equal(to_numpy(out.data), [[[[9.0, 9.0]]]])
    out.backward(xp.asarray([[[[2.0, 5.0]]]]))
    assert numpy.array_equal(to_numpy(x.grad), [[[[0, 0, 7.0, 0, 0]]]])


def test_max_pool2d_propagates_nan(xp):
    x = randn(xp, 1, 1, 4, 4)
    x.data[0, 0, 1, 3] = numpy.nan
    out = to_numpy(max_pool2d(x, 2).data)
    assert numpy.isnan(out[0, 0, 0, 1]) and numpy.isnan(out).sum() == 1


def test_max_pool2d_sends_the_gradient_of_a_nan_window_to_its_last_nan(xp):
    nan = numpy.nan
    x = Tensor(xp.asarray([[[[nan, 1.0, 2.0, 3.0], [5.0, nan, 0.0, 1.0]]]]), requires_grad=True)
    out = max_pool2d(x, 2)
    out.backward(xp.ones(out.shape))
    assert numpy.isnan(to_numpy(out.data)[0, 0, 0, 0]) and to_numpy(out.data)[0, 0, 0, 1] == 3.0
    # PyTorch's choice: every NaN takes over, so the last one in the window is the argmax
    assert numpy.array_equal(to_numpy(x.grad), [[[[0, 0, 0, 1.0], [0, 1.0, 0, 0]]]])


def _check_parity(torch, xp, ours_fn, torch_fn, x_shape, dtype):
    x = randn(xp, *x_shape, dtype=dtype, seed=2, requires_grad=True)
    x_torch = torch.tensor(to_numpy(x.data), requires_grad=True)
    out, out_torch = ours_fn(x), torch_fn(x_torch)
    upstream = randn(xp, *out.shape, dtype=dtype, seed=3).data
    out.backward(upstream)
    out_torch.backward(torch.tensor(to_numpy(upstream)))
    assert out.dtype == dtype and x.grad.dtype == dtype
    assert relative_error(out.data, out_torch.detach().numpy()) <= PARITY_TOLERANCE[dtype]
    assert relative_error(x.grad, x_torch.grad.numpy()) <= PARITY_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("pool", POOLS)
def test_pool_matches_pytorch(xp, pool, window, dtype):
    torch = import_torch()
    x_shape, kernel, stride, padding = WINDOWS[window]
    x_shape = (4, 3) + x_shape[2:]
    _check_parity(torch, xp, lambda x: POOLS[pool](x, kernel, stride, padding),
                  lambda x: getattr(torch.nn.functional, pool)(x, kernel, stride, padding),
                  x_shape, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_adaptive_avg_pool2d_matches_pytorch(xp, dtype):
    torch = import_torch()
    _check_parity(torch, xp, lambda x: adaptive_avg_pool2d(x, (1, 1)),
                  lambda x: torch.nn.functional.adaptive_avg_pool2d(x, (1, 1)),
                  (4, 3, 5, 6), dtype)


@pytest.mark.parametrize("pool", POOLS)
def test_pool_rejects_input_that_is_not_4d(xp, pool):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got shape \(3, 8, 8\)"):
        POOLS[pool](randn(xp, 3, 8, 8), 2)


@pytest.mark.parametrize("pool", POOLS)
def test_pool_rejects_padding_over_half_the_kernel(xp, pool):
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half of "
                                         r"kernel_size \(3, 3\)"):
        POOLS[pool](randn(xp, 1, 1, 8, 8), 3, stride=1, padding=2)


def test_pool_rejects_kernel_larger_than_input(xp):
    with pytest.raises(ValueError, match=r"kernel \(5, 5\) is larger than the padded input"):
        max_pool2d(randn(xp, 1, 1, 4, 4), 5)


def test_adaptive_avg_pool2d_supports_only_output_size_1(xp):
    with pytest.raises(NotImplementedError, match="only output_size 1"):
        adaptive_avg_pool2d(randn(xp, 1, 1, 4, 4), 2)


def test_max_pool2d_of_channels_last_input_split_over_threads_matches_pytorch(split_everything):
    """Under split_everything (1 or 3 threads, a piece per image): max pooling of a
    channels-last view (as conv2d's output), against the same op on NCHW memory, bit for bit,
    and against PyTorch."""
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
