"""The CUDA room's ops (nn/functional/cuda/) on NumPy arrays, where their kernels run as their
NumPy twins: each computes what the CPU room's kernel computes, in float64, on every route it
has; and a data-parallel batch norm takes the global batch's statistics by the same algorithm
on both devices (nn.distributed.global_moments).

A GPU test (tests/test_cuda_kernels.py) holds the CUDA itself to the twins."""
import numpy
import pytest

from autograd import Tensor
from nn.distributed import LocalWorld
from nn.functional.cpu.batch_norm import BatchNormBlocked
from nn.functional.cpu.conv import Conv2dGemm
from nn.functional.cpu.linear import LinearThreaded
from nn.functional.cpu.pooling import MaxPool2dChannelsLast
from nn.functional.cuda import conv as cuda_conv
from nn.functional.cuda.batch_norm import BatchNormCuda
from nn.functional.cuda.conv import Conv2dCuda
from nn.functional.cuda.linear import LinearCuda
from nn.functional.cuda.pooling import MaxPool2dCuda
from helpers import randn, relative_error


def _run(op, inputs, upstream_seed=7, **settings):
    """op applied to fresh copies of `inputs` (arrays), then backward with a random upstream:
    [output, gradient of each input]."""
    tensors = [Tensor(a.copy(), requires_grad=True) for a in inputs]
    out = op.apply(*tensors, **settings)
    out.backward(numpy.random.default_rng(upstream_seed).standard_normal(out.shape))
    return [out.data] + [t.grad for t in tensors]


# (C, F, kernel, stride, padding, H): every backward route of the GEMM convolution
CONVOLUTIONS = {
    "pointwise": (16, 6, 1, 1, 0, 5),
    "pointwise, strided": (16, 6, 1, 2, 0, 7),
    "flipped kernel": (16, 5, 3, 1, 1, 6),
    "col2im, strided": (16, 5, 3, 2, 1, 7),
    "col2im, few channels": (3, 4, 3, 1, 1, 6),
    "col2im, 7x7": (3, 4, 7, 2, 3, 9),
}


@pytest.mark.parametrize("chunks", ["one chunk", "a chunk an image"])
@pytest.mark.parametrize("case", sorted(CONVOLUTIONS))
def test_the_gpu_convolution_equals_the_cpu_one_on_every_route(case, chunks, monkeypatch):
    """Conv2dCuda (im2col and col2im by their kernels' twins) against the CPU's Conv2dGemm:
    output and the three gradients, whichever backward route the geometry takes, and however
    the images are cut into chunks."""
    if chunks != "one chunk":
        monkeypatch.setattr(cuda_conv, "CHUNK_BYTES", 1)
        monkeypatch.setattr(cuda_conv, "MIN_CHUNK_ROWS", 1)
    C, F, k, s, p, H = CONVOLUTIONS[case]
    rng = numpy.random.default_rng(0)
    inputs = [rng.standard_normal((3, C, H, H)), rng.standard_normal((F, C, k, k)),
              rng.standard_normal(F)]
    settings = dict(stride=(s, s), padding=(p, p))
    gpu, cpu = (_run(op, inputs, **settings) for op in (Conv2dCuda, Conv2dGemm))
    for name, ours, theirs in zip(["y", "dx", "dW", "db"], gpu, cpu):
        assert relative_error(ours, theirs) < 1e-12, name


def test_the_gpu_chunks_hold_columns_of_chunk_bytes_and_min_chunk_rows():
    x = numpy.zeros((64, 4, 4, 512), numpy.float32)               # 16 rows an image
    geometry = ((3, 3), (1, 1), (1, 1), (4, 4))
    assert cuda_conv.image_chunks(x, geometry) == [(0, 64)]       # 18 MiB of columns: one
    x = numpy.zeros((700, 32, 32, 64), numpy.float32)             # 2.25 MiB of columns an image
    assert cuda_conv.image_chunks(x, ((3, 3), (1, 1), (1, 1), (32, 32)))[:2] == [(0, 227),
                                                                                (227, 454)]


@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (2, 2, 0)])
def test_the_gpu_max_pool_equals_the_cpu_one_nan_included(kernel, stride, padding):
    """MaxPool2dCuda against MaxPool2dChannelsLast, a NaN and ties in the input: the output
    (NaN reaching it) and where each window's gradient goes."""
    x = numpy.random.default_rng(0).standard_normal((2, 3, 7, 7)).round(1)   # ties
    x[0, 1, 2, 3] = numpy.nan
    settings = dict(kernel_size=(kernel, kernel), stride=(stride, stride),
                    padding=(padding, padding))
    gpu, cpu = (_run(op, [x], **settings) for op in (MaxPool2dCuda, MaxPool2dChannelsLast))
    numpy.testing.assert_array_equal(gpu[0], cpu[0])
    numpy.testing.assert_array_equal(gpu[1], cpu[1])


@pytest.mark.parametrize("rows", [5, 700])
def test_the_gpu_linear_equals_the_cpu_one(rows):
    """LinearCuda against LinearThreaded: a short batch (its weight gradient in runs) and a
    long one, and inputs of three axes."""
    rng = numpy.random.default_rng(0)
    for x in (rng.standard_normal((rows, 9)), rng.standard_normal((2, rows, 9))):
        inputs = [x, rng.standard_normal((4, 9)), rng.standard_normal(4)]
        gpu, cpu = (_run(op, inputs) for op in (LinearCuda, LinearThreaded))
        for name, ours, theirs in zip(["y", "dx", "dW", "db"], gpu, cpu):
            assert relative_error(ours, theirs) < 1e-12, name


@pytest.mark.parametrize("size", [2, 3])
def test_global_batch_norm_takes_one_algorithm_on_both_devices(size):
    """Over a LocalWorld of `size` ranks, BatchNormCuda (its twins) and BatchNormBlocked give
    every rank the global batch's output, gradients and running statistics, as one process's
    batch norm of all the rows does; and the two devices' global statistics agree (one
    algorithm: each rank's mean and variance, combined by global_moments)."""
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((2 * size, 5, 3, 2)) * 3 + 10 * rng.standard_normal((1, 5, 1, 1))
    upstream = rng.standard_normal(x.shape)
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)

    def run(op, xs, upstreams, group):
        tensors = [Tensor(a.copy(), requires_grad=True) for a in (xs, gamma, beta)]
        mean, var = numpy.zeros(5), numpy.ones(5)
        out = op.apply(*tensors, running_mean=mean, running_var=var, use_batch_stats=True,
                       momentum=0.1, eps=1e-5, relu=True, group=group)
        out.backward(upstreams)
        return [out.data, tensors[0].grad, tensors[1].grad, tensors[2].grad, mean, var]
    whole = run(BatchNormBlocked, x, upstream, None)
    for op in (BatchNormCuda, BatchNormBlocked):
        ranks = LocalWorld(size).run(lambda comm: run(
            op, *(numpy.split(a, size)[comm.rank] for a in (x, upstream)), comm))
        for index, name in enumerate(["y", "dx"]):
            assert relative_error(numpy.concatenate([r[index] for r in ranks]),
                                  whole[index]) < 1e-10, (op.__name__, name)
        for index, name in ((2, "dgamma"), (3, "dbeta")):
            assert relative_error(sum(r[index] for r in ranks), whole[index]) < 1e-10, name
        for r in ranks:
            for index, name in ((4, "running_mean"), (5, "running_var")):
                assert relative_error(r[index], whole[index]) < 1e-10, (op.__name__, name)


def test_the_gpu_global_statistics_are_global_moments_of_each_ranks_own(monkeypatch):
    """BatchNormCuda over a group takes its statistics from nn.distributed.global_moments, the
    CPU kernel's algorithm: replacing global_moments changes what both devices compute."""
    from nn.functional.cpu import batch_norm as cpu_batch_norm
    from nn.functional.cuda import batch_norm as cuda_batch_norm
    seen = []

    def recorded(mean, var, count, group):
        seen.append(count)
        return mean, var, count                                   # this rank's alone
    for module in (cpu_batch_norm, cuda_batch_norm):
        monkeypatch.setattr(module, "global_moments", recorded)
    x = randn(numpy, 4, 3, 2, 2, scale=2.0).data
    for op in (BatchNormCuda, BatchNormBlocked):
        outputs = LocalWorld(2).run(lambda comm: op.apply(
            Tensor(numpy.split(x, 2)[comm.rank]), Tensor(numpy.ones(3)), Tensor(numpy.zeros(3)),
            running_mean=None, running_var=None, use_batch_stats=True, momentum=0.1, eps=1e-5,
            group=comm).data)
        alone = op.apply(Tensor(x[:2]), Tensor(numpy.ones(3)), Tensor(numpy.zeros(3)),
                         running_mean=None, running_var=None, use_batch_stats=True,
                         momentum=0.1, eps=1e-5).data
        assert relative_error(outputs[0], alone) < 1e-12, op.__name__
    assert seen == [8, 8, 8, 8]                    # 2 ranks of 8 values a channel, 2 devices
