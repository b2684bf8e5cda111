"""Winograd's F(2x2, 3x3) convolution (nn/functional/cpu/winograd.py): the 1-D identity it
rests on, the convolution and its weight gradient against direct sums, its float32 accuracy
against im2col's, and which convolutions conv2d sends to it. (tests/test_conv.py holds it to
conv2d's reference, forward and backward.)"""
import numpy
import pytest

import nn.functional.cpu.winograd as winograd
from autograd import Tensor, to_numpy
from nn.functional.conv import conv2d, implementation
from nn.functional.cpu.conv import Conv2dGemm
from nn.functional.cpu.winograd import Conv2dWinograd
from helpers import relative_error

from test_conv import CONFIGS, WINOGRAD_CONFIGS


def direct_conv3x3(x_last, weight):
    """out[n, p, q, f] = sum_{c,i,j} weight[f, c, i, j] x_padded[n, p + i, q + j, c], in float64."""
    x_last, weight = numpy.asarray(x_last, "float64"), numpy.asarray(weight, "float64")
    N, H, W, C = x_last.shape
    padded = numpy.zeros((N, H + 2, W + 2, C))
    padded[:, 1:H + 1, 1:W + 1] = x_last
    return sum(numpy.einsum("npqc,fc->npqf", padded[:, i:i + H, j:j + W], weight[:, :, i, j])
               for i in range(3) for j in range(3))


def convolve(x_last, weight):
    return winograd.convolve(winograd.input_tiles(x_last),
                             winograd.filter_tiles(weight).transpose(0, 2, 1), x_last.shape[1:3])


def _arrays(xp, shape, filters, dtype, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)                         # (N, H, W, C)
    weight = (rng.standard_normal((filters, shape[3], 3, 3)) / 3).astype(dtype)
    return xp.asarray(x), xp.asarray(weight)


def test_f2x3_computes_two_outputs_of_a_3_tap_filter_with_4_multiplications():
    rng = numpy.random.default_rng(0)
    d, g = rng.standard_normal(4), rng.standard_normal(3)
    B_T, G, A_T = (numpy.array(m, dtype="float64") for m in (winograd.B_T, winograd.G,
                                                             winograd.A_T))
    products = (G @ g) * (B_T @ d)                               # the 4 multiplications
    direct = [d[0] * g[0] + d[1] * g[1] + d[2] * g[2], d[1] * g[0] + d[2] * g[1] + d[3] * g[2]]
    numpy.testing.assert_allclose(A_T @ products, direct, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (3, 8, 8, 16), (1, 2, 2, 5)])
def test_winograd_convolution_matches_the_direct_sum_float64(xp, shape):
    x, weight = _arrays(xp, shape, 7, "float64")
    out = convolve(x, weight)
    assert out.shape == shape[:3] + (7,) and out.dtype == numpy.float64
    assert relative_error(out, direct_conv3x3(to_numpy(x), to_numpy(weight))) <= 1e-14


def test_winograd_weight_gradient_is_the_adjoint_of_the_convolution(xp):
    # <conv(x, w), g> is linear in w, and its gradient is dW(x, g): <conv(x, w), g> = <w, dW>
    x, weight = _arrays(xp, (3, 6, 4, 5), 4, "float64", seed=1)
    upstream = xp.asarray(numpy.random.default_rng(2).standard_normal((3, 6, 4, 4)))
    grad_w = winograd.weight_grad(winograd.input_tiles(x), upstream)
    assert grad_w.shape == weight.shape
    lhs = float((direct_conv3x3(to_numpy(x), to_numpy(weight)) * to_numpy(upstream)).sum())
    rhs = float((weight * grad_w).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # and each entry: dW[f, c, i, j] = sum over pixels of x_padded[p + i, q + j, c] dy[p, q, f]
    padded = numpy.pad(to_numpy(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = numpy.stack([numpy.stack([numpy.einsum("npqc,npqf->fc", padded[:, i:i + 6, j:j + 4],
                                                      to_numpy(upstream)) for j in range(3)], -1)
                            for i in range(3)], -2)
    assert relative_error(grad_w, expected) <= 1e-13


def test_winograd_float32_is_about_as_accurate_as_im2col(xp):
    # the transforms add, subtract and halve; they should not cost float32 its precision
    x, weight = _arrays(xp, (8, 8, 8, 64), 64, "float32", seed=3)
    exact = direct_conv3x3(to_numpy(x), to_numpy(weight))
    fast = convolve(x, weight)
    im2col = Conv2dGemm.apply(Tensor(x.transpose(0, 3, 1, 2)), Tensor(weight), stride=(1, 1),
                              padding=(1, 1)).data.transpose(0, 2, 3, 1)   # (N, H, W, F)
    tiles = winograd.input_tiles(x)
    assert fast.dtype == tiles.dtype == numpy.float32                  # no float64 inside
    assert winograd.weight_grad(tiles, fast).dtype == numpy.float32
    assert winograd.filter_tiles(weight, flipped=True).dtype == numpy.float32
    assert relative_error(fast, exact) <= 4 * relative_error(im2col, exact) + 1e-7


def test_flipped_filter_tiles_are_the_tiles_of_the_flipped_kernel(xp):
    # dx convolves by the kernel flipped in space, channels swapped: filter_tiles(flipped=True)
    # gets its tiles from the unflipped weight by reordering G (x) G's rows
    _, weight = _arrays(xp, (1, 2, 2, 5), 3, "float64", seed=7)
    flipped = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, F, 3, 3)
    expected = winograd.filter_tiles(flipped).transpose(0, 2, 1)        # (16, F, C) operands
    assert relative_error(winograd.filter_tiles(weight, flipped=True), to_numpy(expected)) <= 1e-15


def test_transforms_in_one_image_pieces_give_the_same_result(xp, monkeypatch):
    x, weight = _arrays(xp, (5, 4, 4, 8), 6, "float64", seed=4)
    upstream = xp.asarray(numpy.random.default_rng(5).standard_normal((5, 4, 4, 6)))
    whole = [convolve(x, weight).copy(),
             winograd.weight_grad(winograd.input_tiles(x), upstream)]
    monkeypatch.setattr(winograd, "TILE_BUFFER_BYTES", 1)        # one image per piece
    pieces = [convolve(x, weight),
              winograd.weight_grad(winograd.input_tiles(x), upstream)]
    for a, b in zip(whole, pieces):
        assert relative_error(b, to_numpy(a)) <= 1e-14


@pytest.mark.parametrize("name", WINOGRAD_CONFIGS)
def test_conv2d_by_winograd_matches_conv2d_by_im2col(name, monkeypatch):
    from test_conv import _inputs
    import nn.functional.conv as conv_module
    config = CONFIGS[name]
    results = []
    for max_pixels in (conv_module.WINOGRAD_MAX_PIXELS, 0):      # 0: im2col for every size
        monkeypatch.setattr(conv_module, "WINOGRAD_MAX_PIXELS", max_pixels)
        tensors = [t for t in _inputs(numpy, config) if t is not None]
        out = conv2d(*tensors, stride=config[2], padding=config[3])
        out.backward(numpy.random.default_rng(6).standard_normal(out.shape))
        results.append([out.data] + [t.grad for t in tensors])
    for by_winograd, by_im2col in zip(*results):
        assert relative_error(by_winograd, by_im2col) <= 1e-13


def test_conv2d_sends_only_resnet50s_last_two_stages_to_winograd():
    def uses(N, H, W, C, kernel=3, stride=1, padding=1):
        x = Tensor(numpy.zeros((N, C, H, W), numpy.float32))
        weight = Tensor(numpy.zeros((C, C, kernel, kernel), numpy.float32))
        return implementation(x, weight, (stride,) * 2, (padding,) * 2) is Conv2dWinograd
    assert uses(64, 8, 8, 256) and uses(64, 4, 4, 512)            # stages 3 and 4
    assert not uses(64, 16, 16, 128) and not uses(64, 32, 32, 64)  # stages 2 and 1: im2col
    assert not uses(64, 8, 8, 256, stride=2)                     # strided
    assert not uses(64, 5, 5, 16)                                # odd size
    assert not uses(64, 8, 8, 16, kernel=1, padding=0)           # 1x1
    assert not uses(64, 8, 8, 16, padding=0)                     # unpadded
    assert not uses(64, 8, 8, 16, kernel=5, padding=2)           # 5x5
