"""A launch of our CUDA kernels refuses what the kernel would read as garbage, before CUDA.

A kernel reads raw memory by its C parameter list; CuPy passes each array as an address and
each scalar as its bytes, and checks neither against the kernel. So Kernel.run checks, on the
CPU as on the GPU (and so on the CPU rehearsal of the device path, on every launch the real
code makes): an array of another dtype, an array not C-contiguous, a scalar of another type,
a wrong count, a launch CUDA would refuse; and it launches nothing when there is nothing to do.
Each error is one line naming the kernel, the argument by its C name, and what was expected.
"""
import numpy
import pytest

from bench.rehearsal import rehearsal
from nn.runtime import cuda as kernels
from nn.runtime.cuda import Kernel, check_launch, parameters_of

SOURCE = r"""
extern "C" __global__ void scale_rows(const data_t* x, data_t* y, const long long* rows,
                                      long long count, double factor, int flags) {
}
"""


@pytest.fixture
def scale_rows(monkeypatch):
    """A kernel registered for this test only: y[rows] = factor * x[rows]."""
    monkeypatch.setattr(kernels, "KERNELS", {})
    calls = []

    def twin(x, y, rows, count, factor, flags):
        calls.append(count)
        y[rows] = factor * x[rows]
    kernel = Kernel("scale_rows", SOURCE, twin)
    kernel.calls = calls
    return kernel


def arguments(dtype=numpy.float32, n=6):
    x = numpy.arange(n, dtype=dtype)
    return [x, numpy.zeros_like(x), numpy.arange(0, n, 2), numpy.int64(n // 2),
            numpy.float64(2.0), numpy.int32(0)]


def check(kernel, args, grid=(1,), block=(256,), types=None):
    return check_launch(kernel, numpy, grid, block, args, types or {"data_t": numpy.float32})


def test_the_parameters_are_read_from_the_kernels_c_declaration(scale_rows):
    assert scale_rows.parameters == [
        ("x", "data_t", True), ("y", "data_t", True), ("rows", "long long", True),
        ("count", "long long", False), ("factor", "double", False), ("flags", "int", False)]


def test_a_well_typed_launch_runs_the_twin(scale_rows):
    args = arguments()
    scale_rows.run(numpy, (1,), (256,), args, {"data_t": numpy.float32})
    assert scale_rows.calls == [3] and list(args[1]) == [0, 0, 4, 0, 8, 0]


def test_a_float64_array_where_the_kernel_reads_float32_is_refused(scale_rows):
    args = arguments()
    args[1] = numpy.zeros(6)                                       # float64 gradient, say
    with pytest.raises(TypeError, match=r"kernel scale_rows: argument data_t\* y is an array "
                                        r"of float64, shape \(6,\); expected float32"):
        check(scale_rows, args)
    args = arguments()
    args[2] = args[2].astype(numpy.int32)                          # int32 indices for long long
    with pytest.raises(TypeError, match=r"argument long long\* rows is an array of int32"):
        check(scale_rows, args)


def test_a_non_contiguous_array_is_refused_not_copied(scale_rows):
    """A silent copy of an output would be written by the kernel and then thrown away."""
    args = arguments(n=12)
    args[1] = numpy.zeros((2, 6), numpy.float32)[:, ::2]          # a strided view, 6 elements
    with pytest.raises(ValueError, match=r"kernel scale_rows: argument data_t\* y \(shape "
                                         r"\(2, 3\), strides \(24, 8\)\) is not C-contiguous"):
        check(scale_rows, args)


def test_a_scalar_of_another_type_is_refused(scale_rows):
    for position, wrong, expected in [(3, 3, "int64"), (3, numpy.int32(3), "int64"),
                                      (4, 2.0, "float64"), (4, numpy.float32(2), "float64"),
                                      (5, True, "int32"), (5, numpy.zeros(1, numpy.int32),
                                                           "int32")]:
        args = arguments()
        args[position] = wrong
        name = scale_rows.parameters[position][0]
        with pytest.raises(TypeError, match=rf"kernel scale_rows: argument .* {name} is .*; "
                                            rf"expected a numpy.{expected} scalar"):
            check(scale_rows, args)


def test_a_host_array_is_refused_on_the_device_path(scale_rows):
    with rehearsal() as device:
        args = [device.xp.asarray(a) if isinstance(a, numpy.ndarray) else a
                for a in arguments()]
        args[0] = numpy.arange(6, dtype=numpy.float32)
        with pytest.raises(TypeError, match=r"kernel scale_rows: argument data_t\* x is a "
                                            r"numpy.ndarray of float32, shape \(6,\); "
                                            r"expected an array of cupy of float32"):
            check_launch(scale_rows, device.xp, (1,), (256,), args, {"data_t": "float32"})


def test_a_wrong_argument_count_is_refused(scale_rows):
    with pytest.raises(TypeError, match=r"kernel scale_rows: 5 arguments given; expected 6 "
                                        r"\(x, y, rows, count, factor, flags\)"):
        check(scale_rows, arguments()[:5])


def test_types_must_be_given_c_types_and_one_of_the_compiled_variants(scale_rows):
    """A set of types outside `variants` was never compiled by the tests (test_cuda_compile):
    refused, so that the rehearsal finds it rather than the GPU's compiler."""
    with pytest.raises(ValueError, match=r"kernel scale_rows: no dtype given for \['data_t'\]"):
        check(scale_rows, arguments(), types={"in_t": numpy.float32})
    with pytest.raises(TypeError, match=r"kernel scale_rows: data_t = float16"):
        check(scale_rows, arguments(numpy.float16), types={"data_t": numpy.float16})
    with pytest.raises(TypeError, match=r"kernel scale_rows: types data_t=int32 are not among "
                                        r"its variants"):
        check(scale_rows, arguments(numpy.int32), types={"data_t": numpy.int32})
    assert check(scale_rows, arguments(numpy.float64), types={"data_t": "float64"})


def test_an_empty_launch_does_nothing(scale_rows):
    """A grid or block with a dimension of 0 (no rows, say) never reaches CUDA, which would
    refuse it; the twin is not called either."""
    for grid, block in [((0,), (256,)), ((4, 0), (32, 8)), ((1,), (0,))]:
        assert check(scale_rows, arguments(), grid, block) is False
        assert scale_rows.run(numpy, grid, block, arguments(), {"data_t": "float32"}) is None
    assert scale_rows.calls == []
    with rehearsal() as device:
        args = [device.xp.asarray(a) if isinstance(a, numpy.ndarray) else a
                for a in arguments()]
        scale_rows.run(device.xp, (0,), (256,), args, {"data_t": "float32"})
        assert device.launches == 0 and scale_rows.calls == []
        scale_rows.run(device.xp, (1,), (256,), args, {"data_t": "float32"})
        assert device.launches == 1 and scale_rows.calls == [3]


def test_a_launch_cuda_would_refuse_is_refused(scale_rows):
    for grid, block, message in [((1,), (2048,), r"block \(2048,\); expected 1 to 3 ints"),
                                 ((1,), (64, 32), r"block \(64, 32\) has 2048 threads"),
                                 ((1, 70000), (256,), r"grid \(1, 70000\)"),
                                 ((-1,), (256,), r"grid \(-1,\)"),
                                 ((1, 1, 1, 1), (256,), r"grid \(1, 1, 1, 1\)")]:
        with pytest.raises(ValueError, match=rf"kernel scale_rows: {message}"):
            check(scale_rows, arguments(), grid, block)


def test_a_source_without_the_kernels_declaration_or_with_an_unknown_type_is_refused():
    with pytest.raises(ValueError, match=r'kernel lost: its source declares no extern "C" '
                                         r'__global__ void lost'):
        parameters_of("lost", SOURCE)
    with pytest.raises(ValueError, match=r"kernel f: parameter 'size_t n' has a type a launch "
                                         r"cannot check"):
        parameters_of("f", 'extern "C" __global__ void f(float* x, size_t n) {}')


def test_every_kernel_of_the_library_declares_parameters_a_launch_can_check():
    """Each library kernel's parameter list was read when it was defined (or its module would
    not import): arrays and scalars of the C types of C_TYPES or of its type names."""
    from test_cuda_compile import all_kernels
    for kernel in all_kernels().values():
        assert kernel.parameters, kernel.name
        assert all(c_type in kernels.DTYPES or c_type in kernel.type_names
                   for _, c_type, _ in kernel.parameters), kernel.name


def test_the_augmentation_kernels_take_a_batch_of_any_layout():
    """A channels-last batch seen as (N, 3, H, W) (a strided view) gives the views a
    C-contiguous copy gives: the kernels' outputs are allocated C-contiguous, as they write
    them, whatever the input's strides."""
    from simclr.augment import cuda
    from simclr.augment.color import draw_jitter
    rng = numpy.random.default_rng(0)
    images = rng.random((4, 12, 10, 3)).astype(numpy.float32).transpose(0, 3, 1, 2)
    assert not images.flags.c_contiguous
    copy = numpy.ascontiguousarray(images)
    chosen, sigma = numpy.array([1.0, 0.0, 1.0, 1.0]), numpy.array([0.5, 1.0, 1.5, 2.0])
    assert numpy.array_equal(cuda.blur(images, chosen, sigma), cuda.blur(copy, chosen, sigma))
    jitter = draw_jitter(rng, 4, 0.5, p=1.0) + (numpy.array([False, True, False, False]),)
    assert numpy.array_equal(cuda.distort_colors(images, *jitter),
                             cuda.distort_colors(copy, *jitter))


def test_lars_refuses_a_gradient_of_another_dtype_than_its_weights():
    """The LARS kernels reach the parameters through a table of addresses, which no launch
    check sees: lars_step checks each array itself (a float64 gradient of float32 weights
    would be read as float32s)."""
    from nn.optim.lars_cuda import lars_step
    weights = [numpy.ones((3, 4), numpy.float32), numpy.ones(5, numpy.float32)]
    velocities = [numpy.zeros_like(w) for w in weights]
    grads = [numpy.ones((3, 4), numpy.float32), numpy.ones(5)]
    with pytest.raises(TypeError, match=r"lars_step: gradient 1 \(shape \(5,\)\) is float64; "
                                        r"expected float32, the weights' dtype"):
        lars_step(weights, grads, velocities, [False, True], 0.1, 0.9, 1e-6, 0.001)
    grads[1] = numpy.ones(5, numpy.float32)
    lars_step(weights, grads, velocities, [False, True], 0.1, 0.9, 1e-6, 0.001)
    assert (velocities[1] > 0).all()


@pytest.mark.parametrize("stats_dtype", ["float32", "float64", None])
def test_batch_norm_of_float32_data_launches_compiled_variants_whatever_its_statistics(
        stats_dtype):
    """The running statistics keep their own dtype (float64 zeros where there are none):
    each pairing with the data's is among the variants the tests compile."""
    from autograd import Tensor
    from nn.functional.cuda.batch_norm import BatchNormCuda
    rng = numpy.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 3, 2, 2)).astype(numpy.float32), requires_grad=True)
    gamma, beta = (Tensor(numpy.ones(3, numpy.float32), requires_grad=True) for _ in range(2))
    stats = [None, None] if stats_dtype is None else [numpy.zeros(3, stats_dtype),
                                                      numpy.ones(3, stats_dtype)]
    out = BatchNormCuda.apply(x, gamma, beta, running_mean=stats[0], running_var=stats[1],
                              use_batch_stats=True, momentum=0.1, eps=1e-5)
    out.backward(numpy.ones(out.shape, numpy.float32))
    assert x.grad.dtype == numpy.float32 and numpy.isfinite(x.grad).all()
