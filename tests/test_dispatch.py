"""Every op family's one dispatcher, `implementation()` (nn/functional/dispatch.py): the
reference inside use_reference(), the CPU room's kernel for NumPy arrays, the CUDA room's for
device arrays (here the rehearsal's, bench/rehearsal.py); and linear, whose reference runs
none of the threaded products."""
import numpy
import pytest

import nn.functional as F
from autograd import Tensor
from bench.rehearsal import rehearsal
from nn.functional import conv, loss, normalization, pooling
from nn.functional.dispatch import on_gpu, use_reference
from nn.functional.linear import LinearReference
from nn.functional.linear import implementation as linear_implementation
from nn.runtime import parallel

# family: (its dispatcher for an input x, reference, CPU kernel, CUDA kernel)
FAMILIES = {
    "conv2d": (lambda x: conv.implementation(x, Tensor(numpy.zeros((2, 3, 1, 1))), (1, 1),
                                             (0, 0)),
               "Conv2dReference", "Conv2dGemm", "Conv2dCuda"),
    "batch_norm": (normalization.implementation,
                   "BatchNormReference", "BatchNormBlocked", "BatchNormCuda"),
    "linear": (linear_implementation, "LinearReference", "LinearThreaded", "LinearCuda"),
    "max_pool2d": (pooling.implementation,
                   "MaxPool2dReference", "MaxPool2dChannelsLast", "MaxPool2dCuda"),
    "cross_entropy": (loss.implementation, "CrossEntropy", "CrossEntropy", "CrossEntropyCuda"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_dispatcher_picks_the_reference_or_its_devices_kernel(family):
    dispatch, reference, cpu, cuda = FAMILIES[family]
    x = Tensor(numpy.zeros((2, 3, 4, 4)))
    assert not on_gpu(x) and dispatch(x).__name__ == cpu
    with use_reference():
        assert dispatch(x).__name__ == reference
    with rehearsal() as device:
        on_device = Tensor(device.xp.zeros((2, 3, 4, 4)))
        assert on_gpu(on_device) and on_gpu(on_device.data)
        assert dispatch(on_device).__name__ == cuda
        with use_reference():
            assert dispatch(on_device).__name__ == reference
        with use_reference(False):
            assert dispatch(on_device).__name__ == cuda


def test_the_linear_reference_runs_none_of_the_threaded_products(monkeypatch):
    """Inside use_reference(), F.linear's forward and backward are LinearReference's plain
    products: with nn.runtime.parallel's products made to fail, they still run (and outside
    use_reference() the same call fails, so the products are the threaded kernel's)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a threaded product ran")
    for name in ("matmul", "matmul_transposed"):
        monkeypatch.setattr(parallel, name, refuse)
    rng = numpy.random.default_rng(0)
    x, w, b = (Tensor(rng.standard_normal(shape), requires_grad=True)
               for shape in ((5, 3), (4, 3), (4,)))
    with use_reference():
        y = F.linear(x, w, b)
        assert y._node.function is LinearReference
        upstream = rng.standard_normal(y.shape)
        y.backward(upstream)
    numpy.testing.assert_allclose(y.data, x.data @ w.data.T + b.data, rtol=1e-14)
    numpy.testing.assert_allclose(w.grad, upstream.T @ x.data, rtol=1e-14)
    with pytest.raises(AssertionError, match="threaded product"):
        F.linear(x, w, b)
