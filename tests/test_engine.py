"""The backward pass: accumulation, graph order, freeing, no_grad, devices, dtypes, errors."""
import sys

import numpy
import pytest

from autograd import Tensor, no_grad, set_gradient_passes
from conftest import GPU
from helpers import randn


def test_gradient_of_a_tensor_used_twice_is_the_sum(xp):
    x = Tensor(xp.asarray([2.0, -1.0]), requires_grad=True)
    y = x * x + x  # dy/dx = 2x + 1
    y.backward(xp.asarray([1.0, 1.0]))
    assert x.grad.tolist() == [5.0, -1.0]


def test_gradients_accumulate_across_backward_calls(xp):
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    assert x.grad.tolist() == [6.0, 6.0]


def test_deep_graph_does_not_hit_the_recursion_limit():
    x = Tensor(numpy.ones(3), requires_grad=True)
    y = x
    for _ in range(3 * sys.getrecursionlimit()):
        y = y * 1.0 + 0.0
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_diamond_graph_visits_each_node_once():
    x = Tensor(numpy.array([3.0]), requires_grad=True)
    a = x * 2.0
    b = a * a + a.exp()  # two paths from a
    b.backward(numpy.array([1.0]))
    expected = (2 * 6.0 + numpy.exp(6.0)) * 2.0
    numpy.testing.assert_allclose(x.grad, [expected])


def test_graph_is_freed_after_backward():
    x = Tensor(numpy.ones(2), requires_grad=True)
    y = (x * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="freed"):
        y.backward()


def test_no_grad_records_no_graph():
    x = Tensor(numpy.ones(2), requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf


def test_only_leaves_keep_grad_and_detach_cuts_the_graph():
    x = Tensor(numpy.ones(2), requires_grad=True)
    hidden = x * 2.0
    out = (hidden * hidden.detach()).sum()  # the detached factor is a constant 2
    out.backward()
    assert hidden.grad is None
    assert x.grad.tolist() == [4.0, 4.0]


def test_backward_of_a_non_scalar_needs_a_gradient():
    y = Tensor(numpy.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"only on a scalar.*\(2, 3\)"):
        y.backward()


def test_backward_gradient_of_wrong_shape_is_refused():
    y = Tensor(numpy.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        y.backward(numpy.ones(3))


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(numpy.arange(3), requires_grad=True)


def test_matmul_shape_mismatch_names_both_shapes():
    a, b = Tensor(numpy.ones((2, 3))), Tensor(numpy.ones((4, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\)"):
        a @ b


def test_mixing_float32_and_float64_is_an_error():
    a = Tensor(numpy.ones(2, dtype="float32"))
    with pytest.raises(TypeError, match="float32 and float64"):
        a + Tensor(numpy.ones(2))


def test_float32_stays_float32_through_ops_and_gradients(xp):
    x = randn(xp, 3, 4, dtype="float32", requires_grad=True)
    w = randn(xp, 4, 2, dtype="float32", requires_grad=True, seed=1)
    y = ((x @ w) * 2 + 1.5).exp().sqrt().log() ** 2 / 3.0 - x.mean()
    assert y.dtype == numpy.float32
    y.sum().backward()
    assert x.grad.dtype == numpy.float32 and w.grad.dtype == numpy.float32


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="CuPy or a CUDA GPU is not available")
def test_mixing_devices_is_an_error():
    import cupy
    a = Tensor(numpy.ones(2))
    b = Tensor(cupy.ones(2))
    with pytest.raises(RuntimeError, match="two devices"):
        a + b


def test_cuda_device_without_cupy_says_how_to_install(monkeypatch):
    from autograd import backend
    monkeypatch.setattr(backend, "_cupy", False)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[cuda12\]'"):
        Tensor(numpy.ones(2)).to("cuda")


def test_numpy_returns_a_host_copy(xp):
    t = Tensor(xp.asarray([1.0, 2.0]))
    host = t.numpy()
    assert isinstance(host, numpy.ndarray) and host.tolist() == [1.0, 2.0]
    host[0] = 5.0
    assert t.data[0] == 1.0


def test_the_engine_sums_and_copies_gradients_by_the_passes_installed():
    """A program installs threaded passes (nn.runtime.use_threaded_gradients); the engine only
    calls them: a leaf's first gradient by `copy` (a new array, never the one handed to it),
    two gradients of one tensor by `add`."""
    calls = []

    def add(a, b):
        calls.append("add")
        return a + b

    def copy(a):
        calls.append("copy")
        return a.copy()
    previous = set_gradient_passes(add=add, copy=copy)
    try:
        x = Tensor(numpy.ones(3), requires_grad=True)
        y = x * 2.0
        (y + y).backward(numpy.ones(3))
        assert calls == ["add", "copy"] and x.grad.tolist() == [4.0, 4.0, 4.0]
        assert set_gradient_passes(None, None) == (add, copy)
        z = Tensor(numpy.ones(3), requires_grad=True)
        upstream = numpy.ones(3)
        z.backward(upstream)
        assert z.grad is not upstream and calls == ["add", "copy"]  # the plain passes ran
    finally:
        set_gradient_passes(*previous)
    from nn.runtime import parallel
    assert set_gradient_passes(*previous) == (parallel.add, parallel.copy)  # as conftest set
