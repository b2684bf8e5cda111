"""conv2d: gradients against finite differences, every kernel against the reference (the
channels-last im2col of cpu/conv.py and Winograd's, with and without every split forced),
forward and backward against PyTorch, and the errors a user can cause."""
import numpy
import pytest

from autograd import Tensor, gradcheck, to_numpy
import nn.functional.cpu.conv as conv_kernel
from nn.functional.dispatch import use_reference
from nn.functional.conv import (Conv2dReference, col2im, conv2d, implementation, im2col)
from nn.runtime import threads as cpu_threads
from nn.functional.cpu.conv import Conv2dGemm
from nn.functional.cpu.winograd import Conv2dWinograd
from nn.functional.windows import pair
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error

# (input shape, weight shape, stride, padding, with bias)
CONFIGS = {
    "1x1": ((2, 3, 4, 5), (4, 3, 1, 1), 1, 0, True),
    "1x1_stride2": ((2, 3, 5, 5), (2, 3, 1, 1), 2, 0, False),
    "3x3_pad1": ((2, 2, 5, 5), (3, 2, 3, 3), 1, 1, True),
    "3x3_stride2_pad1_odd_7x9": ((1, 2, 7, 9), (3, 2, 3, 3), 2, 1, False),
    "7x7_stride2_pad3_stem": ((1, 2, 9, 7), (2, 2, 7, 7), 2, 3, True),
    "2x3_kernel_stride_2x1_pad_1x0": ((2, 2, 6, 7), (3, 2, 2, 3), (2, 1), (1, 0), True),
    # 16+ channels, stride 1: the backward by the flipped kernel (cpu/conv.py)
    "3x3_pad1_16_channels": ((3, 16, 5, 4), (3, 16, 3, 3), 1, 1, False),
    "2x3_kernel_pad_1x2_16_channels": ((2, 16, 4, 5), (5, 16, 2, 3), 1, (1, 2), True),
    # 3x3, stride 1, even sizes of at most WINOGRAD_MAX_PIXELS: cpu/winograd.py on the CPU
    "3x3_pad1_winograd_4x6": ((2, 3, 4, 6), (5, 3, 3, 3), 1, 1, True),
    "3x3_pad1_winograd_8x8_16_channels": ((2, 16, 8, 8), (4, 16, 3, 3), 1, 1, False),
}
WINOGRAD_CONFIGS = ["3x3_pad1_winograd_4x6", "3x3_pad1_winograd_8x8_16_channels"]


def _inputs(xp, config, dtype="float64"):
    x_shape, w_shape, _, _, with_bias = config
    x = randn(xp, *x_shape, dtype=dtype, seed=1, requires_grad=True)
    weight = randn(xp, *w_shape, dtype=dtype, seed=2, requires_grad=True, scale=0.5)
    bias = randn(xp, w_shape[0], dtype=dtype, seed=3, requires_grad=True) if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("name", CONFIGS)
def test_conv2d_gradients_match_finite_differences(xp, name):
    config = CONFIGS[name]
    x, weight, bias = _inputs(xp, config)
    stride, padding = config[2], config[3]
    if bias is None:
        gradcheck(lambda x, w: conv2d(x, w, stride=stride, padding=padding), [x, weight])
    else:
        gradcheck(lambda x, w, b: conv2d(x, w, b, stride=stride, padding=padding),
                  [x, weight, bias])


def test_col2im_is_the_adjoint_of_im2col(xp):
    # <im2col(x), c> = <x, col2im(c)>: col2im is the transpose of the linear map im2col
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 3, 7, 8)))
    kh, kw, stride, Ho, Wo = 3, 2, (2, 3), 3, 3
    cols = xp.asarray(rng.standard_normal((2, 3 * kh * kw, Ho * Wo)))
    lhs = float((im2col(x, kh, kw, stride, Ho, Wo) * cols).sum())
    rhs = float((x * col2im(cols, x.shape, kh, kw, stride, Ho, Wo)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def _forward_backward(xp, config, reference=False):
    """conv2d of CONFIGS' inputs and an upstream gradient, by the reference or by whatever
    kernel conv2d picks: [output, dx, dW (, db)] as arrays."""
    tensors = [t for t in _inputs(xp, config) if t is not None]
    with use_reference(reference):
        out = conv2d(*tensors, stride=config[2], padding=config[3])
        out.backward(randn(xp, *out.shape, seed=4).data)
    return [out.data] + [t.grad for t in tensors]


@pytest.mark.parametrize("name", CONFIGS)
def test_conv2d_kernels_match_the_reference(xp, name):
    for fast, reference in zip(_forward_backward(xp, CONFIGS[name]),
                               _forward_backward(xp, CONFIGS[name], reference=True)):
        assert relative_error(fast, to_numpy(reference)) <= 1e-13


@pytest.mark.parametrize("name", CONFIGS)
def test_conv2d_kernels_split_every_way_match_the_reference(split_everything, name):
    """One image per chunk and per Winograd piece, product pieces of one row, on 1 and 3
    threads: the paths that only big batches take in training."""
    for fast, reference in zip(_forward_backward(numpy, CONFIGS[name]),
                               _forward_backward(numpy, CONFIGS[name], reference=True)):
        assert relative_error(fast, reference) <= 1e-13


def test_the_reference_is_what_use_reference_runs_and_it_is_gradient_checked():
    x, weight, bias = _inputs(numpy, CONFIGS["3x3_stride2_pad1_odd_7x9"])
    stride, padding = (2, 2), (1, 1)
    assert implementation(x, weight, stride, padding) is Conv2dGemm
    with use_reference():
        assert implementation(x, weight, stride, padding) is Conv2dReference
    gradcheck(lambda x, w: Conv2dReference.apply(x, w, stride=stride, padding=padding),
              [x, weight])
    # with a bias: its gradient checked directly, not only through the kernels' agreement
    x, weight, bias = _inputs(numpy, CONFIGS["2x3_kernel_stride_2x1_pad_1x0"])
    gradcheck(lambda x, w, b: Conv2dReference.apply(x, w, b, stride=(2, 1), padding=(1, 0)),
              [x, weight, bias])


@pytest.mark.parametrize("name", CONFIGS)
def test_conv2d_picks_winograd_exactly_for_the_winograd_configs(name):
    x, weight, _ = _inputs(numpy, CONFIGS[name])
    stride, padding = pair(CONFIGS[name][2], "stride", 1), pair(CONFIGS[name][3], "padding", 0)
    expected = Conv2dWinograd if name in WINOGRAD_CONFIGS else Conv2dGemm
    assert implementation(x, weight, stride, padding) is expected


def test_conv2d_output_has_channels_last_strides_and_feeds_the_next_conv_without_a_copy():
    x, weight, _ = _inputs(numpy, CONFIGS["3x3_pad1"])
    out = conv2d(x, weight, padding=1)
    assert out.data.transpose(0, 2, 3, 1).flags.c_contiguous
    assert numpy.shares_memory(conv_kernel.channels_last(out.data), out.data)


def test_conv2d_computes_only_requested_gradients(xp):
    x, weight, bias = _inputs(xp, CONFIGS["3x3_pad1"])
    x.requires_grad = False
    out = conv2d(x, weight, bias, padding=1)
    out.backward(randn(xp, *out.shape, seed=4).data)
    assert x.grad is None
    assert weight.grad.shape == weight.shape and bias.grad.shape == bias.shape


@pytest.mark.parametrize("H", [8, 9], ids=["whole-runs", "with-a-shorter-run"])
@pytest.mark.parametrize("k", [1, 3])  # 3x3 at 8x8: winograd.py's
def test_float32_bias_gradient_is_the_float64_sum_to_float32_rounding(H, k):
    """db sums runs of 64 rows in float32, then the runs in float64 (passes.column_sum): over
    8 x H x H pixels it errs by a few float32 roundings, and stays float32."""
    x = randn(numpy, 8, 4, H, H, dtype="float32", seed=1, requires_grad=True)
    weight = randn(numpy, 5, 4, k, k, dtype="float32", seed=2, requires_grad=True)
    bias = randn(numpy, 5, dtype="float32", seed=3, requires_grad=True)
    upstream = randn(numpy, 8, 5, H, H, dtype="float32", seed=4).data + 3
    conv2d(x, weight, bias, padding=k // 2).backward(upstream)
    assert bias.grad.dtype == numpy.float32
    exact = upstream.astype("float64").sum(axis=(0, 2, 3))
    assert relative_error(bias.grad, exact) < 2 * 2.0 ** -24


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CONFIGS)
def test_conv2d_matches_pytorch(xp, name, dtype):
    torch = import_torch()
    config = CONFIGS[name]
    x_shape, w_shape, stride, padding, with_bias = config
    x_shape = (3,) + x_shape[1:]  # a slightly larger batch than the gradchecks use
    x, weight, bias = _inputs(xp, (x_shape,) + config[1:], dtype)
    ours = [t for t in (x, weight, bias) if t is not None]
    theirs = [torch.tensor(to_numpy(t.data), requires_grad=True) for t in ours]

    out = conv2d(x, weight, bias, stride=stride, padding=padding)
    out_torch = torch.nn.functional.conv2d(*theirs, stride=stride, padding=padding)
    upstream = randn(xp, *out.shape, dtype=dtype, seed=5).data
    out.backward(upstream)
    out_torch.backward(torch.tensor(to_numpy(upstream)))

    assert out.dtype == dtype
    tolerance = PARITY_TOLERANCE[dtype]
    assert relative_error(out.data, out_torch.detach().numpy()) <= tolerance
    for mine, reference in zip(ours, theirs):
        assert mine.grad.dtype == dtype
        assert relative_error(mine.grad, reference.grad.numpy()) <= tolerance


def test_conv2d_rejects_input_that_is_not_4d(xp):
    x, weight = randn(xp, 3, 8, 8), randn(xp, 4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got shape \(3, 8, 8\)"):
        conv2d(x, weight)


def test_conv2d_channel_mismatch_names_both_shapes(xp):
    x, weight = randn(xp, 2, 3, 8, 8), randn(xp, 4, 5, 3, 3)
    with pytest.raises(ValueError) as error:
        conv2d(x, weight)
    assert "(2, 3, 8, 8)" in str(error.value) and "(4, 5, 3, 3)" in str(error.value)


def test_conv2d_rejects_kernel_larger_than_padded_input(xp):
    x, weight = randn(xp, 1, 2, 4, 4), randn(xp, 3, 2, 7, 7)
    with pytest.raises(ValueError, match=r"kernel \(7, 7\) is larger than the padded input "
                                         r"\(6, 6\)"):
        conv2d(x, weight, padding=1)


def test_conv2d_rejects_bias_of_wrong_shape(xp):
    x, weight, bias = randn(xp, 1, 2, 4, 4), randn(xp, 3, 2, 3, 3), randn(xp, 2)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\).*got shape \(2,\)"):
        conv2d(x, weight, bias)


def test_conv2d_rejects_mixed_precision(xp):
    x = randn(xp, 1, 2, 4, 4, dtype="float32")
    weight = randn(xp, 3, 2, 3, 3, dtype="float64")
    with pytest.raises(TypeError, match="input has dtype float32 but weight has dtype float64"):
        conv2d(x, weight)


@pytest.mark.parametrize("stride", [0, (1, 2, 3), 1.5])
def test_conv2d_rejects_bad_stride(xp, stride):
    x, weight = randn(xp, 1, 2, 4, 4), randn(xp, 3, 2, 3, 3)
    with pytest.raises((TypeError, ValueError), match="stride"):
        conv2d(x, weight, stride=stride)


def test_conv2d_rejects_non_tensor_input():
    with pytest.raises(TypeError, match="expected a Tensor"):
        conv2d(numpy.zeros((1, 2, 4, 4)), Tensor(numpy.zeros((3, 2, 3, 3))))


def _chunk_sizes(x_last, geometry):
    run, capacity = conv_kernel.image_chunks(x_last, geometry)
    sizes = [stop - start for start, stop in run(lambda start, stop: (start, stop))]
    assert sum(sizes) == x_last.shape[0] and capacity == max(sizes)
    return sizes


def test_chunks_have_at_least_min_chunk_rows_and_leave_every_thread_one(threads):
    """Each chunk's product packs the whole weight matrix again: at the last stages (16 rows
    of columns an image) chunks of at least MIN_CHUNK_ROWS rows, not of CHUNK_BYTES."""
    cpu_threads.set_num_threads(2)
    if cpu_threads.get_num_threads() != 2:
        pytest.skip("NumPy's BLAS is not OpenBLAS here: the CPU kernels run one thread")
    x = numpy.zeros((64, 4, 4, 512), numpy.float32)  # stage 4: 16 rows of 18 KiB per image
    geometry = ((3, 3), (1, 1), (1, 1), (4, 4))
    assert _chunk_sizes(x, geometry) == [32, 32]  # 512 rows each, over 4 MiB of columns
    assert _chunk_sizes(x[:40], geometry) == [20, 20]  # 40 images: 20 for each thread
    x = numpy.zeros((64, 32, 32, 64), numpy.float32)  # stage 1: 1024 rows per image
    sizes = _chunk_sizes(x, ((3, 3), (1, 1), (1, 1), (32, 32)))
    assert max(sizes) * 1024 * 9 * 64 * 4 <= conv_kernel.CHUNK_BYTES  # bounded by bytes
    assert len(sizes) >= 4  # at least two pieces a thread
