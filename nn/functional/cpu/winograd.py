"""A 3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3): 2.25x fewer
multiplications than im2col + GEMM. Read nn/functional/conv.py and cpu/conv.py first;
conv2d runs this for the 3x3 convolutions where it is faster (conv.implementation).

The 1-D idea (Winograd 1980; for convnets, Lavin and Gray 2016, "Fast Algorithms for
Convolutional Neural Networks"). Two outputs of a 3-tap filter g over four inputs d,
    y0 = d0 g0 + d1 g1 + d2 g2,   y1 = d1 g0 + d2 g1 + d3 g2      (6 multiplications),
are also y = A^T [(G g) * (B^T d)] with 4 multiplications (the * is elementwise):

    B^T = [[1,  0, -1,  0],     G = [[  1,    0,    0],     A^T = [[1, 1,  1,  0],
           [0,  1,  1,  0],          [1/2,  1/2,  1/2],            [0, 1, -1, -1]]
           [0, -1,  1,  0],          [1/2, -1/2,  1/2],
           [0,  1,  0, -1]]          [  0,    0,    1]]

(expand it: every product cancels but the six above). Nested in 2-D, a 2x2 tile of the
output comes from the 4x4 tile of the padded input that covers its windows:
    Y = A^T [U * V] A,   U = G g G^T (4x4, per filter and channel),   V = B^T d B (4x4).
Summed over the input channels c, each of the 16 positions xi = (i, j) of the 4x4 is a
matrix product over c: M[xi](tiles, F) = V[xi](tiles, C) @ U[xi]^T(C, F), U[xi] (F, C). So
a convolution is
    1. input tiles:  V = B^T d B for every tile (tiles overlap by 2 pixels), (16, T, C);
    2. 16 products:  M[xi] = V[xi] @ U[xi]^T, T C F multiply-adds each: 16 per 2x2 outputs
                     and channel pair, where im2col's product does 4 * 9 = 36 (the 2.25x);
    3. output:       Y = A^T M A, each 4x4 tile of M -> 2x2 output pixels.
The transforms only add and subtract (and halve, in G), so float32 loses little: the result
is as close to the exact sum as im2col's (tests/test_winograd.py holds it to that).

Backward. dx is the convolution of the output gradient with the kernel flipped and its
channels swapped (as in conv.py), so it is the same three steps. dW follows from Y being
linear in U: dU[xi] = Z[xi]^T @ V[xi] (F, C), summed over tiles, with Z = A dY A^T the
output gradient's 2x2 tiles taken to 4x4; then dW = G^T dU G for each filter and channel.

How it runs. A 2-D transform M t M^T of every tile t is one matrix product: with the tile
flattened to a column, it is (M (x) M) @ t, the Kronecker product (x) a 16x16 (or 4x16,
16x4, 16x9) matrix. So each transform copies the tiles of a few images into a scratch
array, one row per position in the tile (as im2col copies windows), and multiplies it by
the small matrix; BLAS does the adds in one pass, where NumPy would make one pass per term.
The images are split over the threads in pieces of at most TILE_BUFFER_BYTES (threads.split);
the 16 products over the threads by xi. Only even H and W (ResNet's 32, 16, 8, 4);
conv.implementation checks.
"""
import numpy

from autograd import Function
from nn.runtime import parallel
from nn.runtime.scratch import buffer, padded_images
from nn.runtime.threads import for_pieces, map_ranges

from ..windows import check_conv_inputs
from .conv import channels_last

B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))
FLIP = (3, 1, 2, 0)  # G[:, ::-1] = G[FLIP, :]: see filter_tiles
TILE_BUFFER_BYTES = 2**20  # a piece of a transform: the tiles of at most this many bytes


class Conv2dWinograd(Function):
    """The 3x3, stride-1, padding-1 convolution of even-sized images by F(2x2, 3x3): forward
    by the three steps of the module docstring, dx by the same steps with the kernel
    flipped and its channels swapped, dW from x's tiles, kept from the forward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(1, 1)):
        check_conv_inputs(x, weight, bias)
        tiles = input_tiles(channels_last(x))                        # (16, T, C)
        ctx.save_for_backward(tiles, weight)
        filters = filter_tiles(weight).transpose(0, 2, 1)            # (16, C, F)
        out = convolve(tiles, filters, x.shape[2:])                  # (N, H, W, F)
        if bias is not None:
            out += bias
        return out.transpose(0, 3, 1, 2)                             # (N, F, H, W) view

    @staticmethod
    def backward(ctx, grad):
        tiles, weight = ctx.saved                                    # (16, T, C), (F, C, 3, 3)
        grad_last = channels_last(grad)                              # (N, H, W, F)
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = convolve(input_tiles(grad_last),
                              filter_tiles(weight, flipped=True),    # (16, F, C)
                              grad.shape[2:]).transpose(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad(tiles, grad_last)
        if len(ctx.needs_input_grad) == 3 and ctx.needs_input_grad[2]:
            grad_bias = parallel.column_sum(grad_last.reshape(-1, grad_last.shape[3]))
        return (grad_x, grad_w, grad_bias)[:len(ctx.needs_input_grad)]


def _kron(matrix, dtype):
    """M (x) M for a 2-D transform of tiles: row (i, j), column (p, q) holds M[i, p] M[j, q], so
    that M t M^T of a tile t, flattened row by row, is one product (M (x) M) @ t."""
    m = numpy.asarray(matrix, dtype=dtype)
    return numpy.kron(m, m)


def _by_images(fn, images, image_bytes, array):
    """fn(start, stop) for pieces of the images (image_bytes each) in the threads, each piece's
    tiles at most TILE_BUFFER_BYTES."""
    for_pieces(fn, images, image_bytes, array, TILE_BUFFER_BYTES)


def _products(fn, array, total_bytes):
    """fn(start, stop) over the 16 tile positions xi, one at a time: the threads take them as
    they come free."""
    map_ranges(fn, [(k, k + 1) for k in range(16)], total_bytes, array)


def _overlapping_tiles(padded, out):
    """out[p, q, n, a, b] = padded[n, 2a + p, 2b + q] for p, q < 4: the 4x4 tiles of the padded
    images (n, Hp, Wp, C), two pixels apart, copied once (as im2col copies windows)."""
    s_n, s_h, s_w, s_c = padded.strides
    tiles = numpy.lib.stride_tricks.as_strided(padded, out.shape,
                                            (s_h, s_w, s_n, 2 * s_h, 2 * s_w, s_c))
    numpy.copyto(out, tiles)


def filter_tiles(weight, flipped=False):
    """U = G g G^T for each filter and channel: weight (F, C, 3, 3) -> (16, F, C), one product
    (G (x) G) @ g with the kernels as the columns of a (9, F C) matrix (a free view).

    flipped=True: the tiles of the kernels flipped in space, with F and C swapped (the
    convolution that gives dx), without copying the weight: flipping g flips G's columns, and
    G with its columns reversed is G with rows 0 and 3 swapped, so the flipped kernel's tile
    at xi = (i, j) is U[(P i, P j)] transposed (P: 0 <-> 3). The rows of G (x) G are taken in
    that order, and the result (16, F, C) is each position's (F, C) operand."""
    F, C = weight.shape[:2]
    kernels = weight.reshape(F * C, 9).T                                 # (9, F C) view
    transform = _kron(G, weight.dtype)                              # (16, 9)
    if flipped:
        transform = transform[[4 * FLIP[i] + FLIP[j] for i in range(4) for j in range(4)]]
    U = numpy.empty((16, F * C), dtype=weight.dtype)

    def filters(start, stop):  # the threads take the filters start..stop-1
        numpy.matmul(transform, kernels[:, start * C:stop * C], out=U[:, start * C:stop * C])
    for_pieces(filters, F, 16 * C * weight.itemsize, weight)
    return U.reshape(16, F, C)


def input_tiles(x_last):
    """V = B^T d B for every 4x4 tile d of x_last (N, H, W, C) padded by 1: (16, T, C), the
    T = N H/2 W/2 tiles in the order (image, tile row, tile column)."""
    N, H, W, C = x_last.shape
    per_image = (H // 2) * (W // 2) * C                     # values of one image's tiles, per xi
    V = numpy.empty((16, N * per_image), dtype=x_last.dtype)
    transform = _kron(B_T, x_last.dtype)                             # (16, 16)

    def tile(start, stop):
        n = stop - start
        d = buffer("winograd tiles", (4, 4, n, H // 2, W // 2, C), x_last.dtype)
        _overlapping_tiles(padded_images(x_last[start:stop], (1, 1), n), d)
        numpy.matmul(transform, d.reshape(16, -1), out=V[:, start * per_image:stop * per_image])
    _by_images(tile, N, 16 * per_image * x_last.itemsize, x_last)
    return V.reshape(16, -1, C)


def _untile(M, out):
    """out = A^T m A for every 4x4 tile m of M (16, T, F): its 2x2 output pixels, into the
    channels-last out (N, H, W, F)."""
    N, H, W, F = out.shape
    per_image = (H // 2) * (W // 2) * F
    M = M.reshape(16, -1)
    transform = _kron(A_T, M.dtype)                                  # (4, 16)

    def untile(start, stop):
        n = stop - start
        y = buffer("winograd pixels", (2, 2, n, H // 2, W // 2, F), M.dtype)
        numpy.matmul(transform, M[:, start * per_image:stop * per_image], out=y.reshape(4, -1))
        # pixel (2a + p, 2b + q) of each image is y[p, q, image, a, b]
        pixels = out[start:stop].reshape(n, H // 2, 2, W // 2, 2, F).transpose(2, 4, 0, 1, 3, 5)
        numpy.copyto(pixels, y)
    _by_images(untile, N, 16 * per_image * M.itemsize, M)


def _gradient_tiles(grad_last):
    """Z = A dy A^T for every 2x2 tile dy of grad_last (N, H, W, F): (16, T, F)."""
    N, H, W, F = grad_last.shape
    per_image = (H // 2) * (W // 2) * F
    Z = numpy.empty((16, N * per_image), dtype=grad_last.dtype)
    transform = _kron(A_T, grad_last.dtype).T                        # (16, 4)

    def tile(start, stop):
        n = stop - start
        dy = buffer("winograd pixels", (2, 2, n, H // 2, W // 2, F), grad_last.dtype)
        numpy.copyto(dy, grad_last[start:stop].reshape(n, H // 2, 2, W // 2, 2, F)
                  .transpose(2, 4, 0, 1, 3, 5))
        numpy.matmul(transform, dy.reshape(4, -1), out=Z[:, start * per_image:stop * per_image])
    _by_images(tile, N, 16 * per_image * grad_last.itemsize, grad_last)
    return Z.reshape(16, -1, F)


def convolve(V, filters, image_size):
    """The 3x3 convolution (stride 1, padding 1) of the images whose input_tiles are V
    (16, T, C), for image_size (H, W): (N, H, W, F), channels last. filters (16, C, F): each
    position's operand, filter_tiles(weight).transpose(0, 2, 1) for the convolution by
    `weight`, filter_tiles(weight, flipped=True) for its dx."""
    H, W = image_size
    F = filters.shape[2]
    M = numpy.empty((16, V.shape[1], F), dtype=V.dtype)

    def multiply(start, stop):
        numpy.matmul(V[start:stop], filters[start:stop], out=M[start:stop])
    _products(multiply, V, V.nbytes + M.nbytes)
    out = numpy.empty((V.shape[1] // ((H // 2) * (W // 2)), H, W, F), dtype=V.dtype)
    _untile(M, out)
    return out


def weight_grad(V, grad_last):
    """dW (F, C, 3, 3) of the convolution of the images whose input_tiles are V (16, T, C),
    given the output gradient grad_last (N, H, W, F): dU[xi] = Z[xi]^T @ V[xi] (F, C) with
    Z = A dY A^T, then dW = G^T dU G."""
    F, C = grad_last.shape[3], V.shape[2]
    Z = _gradient_tiles(grad_last)                                      # (16, T, F)
    dU = numpy.empty((16, F, C), dtype=V.dtype)

    def multiply(start, stop):
        numpy.matmul(Z[start:stop].transpose(0, 2, 1), V[start:stop], out=dU[start:stop])
    _products(multiply, V, V.nbytes + Z.nbytes)
    dW = parallel.matmul(dU.reshape(16, F * C).T, _kron(G, V.dtype))  # (F C, 9): G^T dU G
    return dW.reshape(F, C, 3, 3)
