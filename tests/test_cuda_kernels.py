"""Our CUDA kernels against their NumPy twins, on a GPU (marked gpu: skipped without one).

Each test runs the same call on CuPy arrays (the CUDA) and on NumPy copies of them (the twin)
and compares. float64 agrees to the last few roundings; float32 to a few roundings of the
data's scale (the sums are added in another order). tests/test_device_path.py holds the twins
to the CPU's kernels and references, on any machine.
"""
import numpy
import pytest

from autograd import Tensor, to_numpy
from conftest import GPU
from helpers import relative_error

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not GPU, reason="CuPy or a CUDA GPU is not available")]
TOLERANCE = {"float64": 1e-12, "float32": 2e-6}


def _on(xp, arrays):
    return [xp.asarray(a) for a in arrays]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", ["none", "relu", "residual+relu"])
def test_batch_norm_kernels_equal_their_twins(dtype, training, fused):
    import cupy

    from nn.functional.cuda.batch_norm import BatchNormCuda
    rng = numpy.random.default_rng(0)
    shape, C = (8, 40, 6, 5), 40
    x = (rng.standard_normal(shape) * 2 + 10 * rng.standard_normal((1, C, 1, 1))).astype(dtype)
    residual, upstream = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    gamma, beta = (rng.standard_normal(C).astype(dtype) for _ in range(2))
    stats = [rng.standard_normal(C), 0.5 + rng.random(C)]
    results = []
    for xp in (cupy, numpy):
        tensors = [Tensor(a, requires_grad=True) for a in _on(xp, [x, gamma, beta, residual])]
        mean, var = _on(xp, stats)
        res = tensors[3:] if "residual" in fused else []
        out = BatchNormCuda.apply(*tensors[:3], *res, running_mean=mean, running_var=var,
                                  use_batch_stats=training, momentum=0.1, eps=1e-5,
                                  relu="relu" in fused)
        out.backward(xp.asarray(upstream))
        results.append([out.data, mean, var] + [t.grad for t in tensors[:3] + res])
    for index, (gpu, twin) in enumerate(zip(*results)):
        assert relative_error(to_numpy(gpu), twin) <= TOLERANCE[dtype], index


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lars_kernels_equal_their_twins(dtype):
    import cupy

    from nn.optim.lars_cuda import CHUNK, lars_step
    rng = numpy.random.default_rng(1)
    shapes = [(3, CHUNK + 5), (7,), (2 * CHUNK,), (4, 4), (64, 3, 3, 3)]
    arrays = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    arrays[1][3][...] = 0                                        # a zero gradient
    excluded = [False, True, True, False, False]
    results = []
    for xp in (cupy, numpy):
        weights, grads, velocities = ([xp.asarray(a) for a in group] for group in arrays)
        lars_step(weights, grads, velocities, excluded, 0.7, 0.9, 1e-3, 0.001)
        results.append(weights + velocities)
    for gpu, twin in zip(*results):
        assert relative_error(to_numpy(gpu), twin) <= TOLERANCE[dtype]


def test_the_colour_distortion_kernel_equals_its_twin():
    import cupy

    from simclr.augment.color import draw_grayscale, draw_jitter
    from simclr.augment.cuda import distort_colors
    images = numpy.random.default_rng(2).random((64, 3, 32, 32)).astype(numpy.float32)
    draws = draw_jitter(numpy.random.default_rng(3), 64, 1.0) + (
        draw_grayscale(numpy.random.default_rng(4), 64),)
    gpu = to_numpy(distort_colors(cupy.asarray(images), *draws))
    twin = distort_colors(images, *draws)
    # the contrast's means are summed in another order: a rounding of a mean moves a pixel
    # by a rounding, and a clip or a hue sector boundary can turn that into a little more
    assert numpy.abs(gpu - twin).max() <= 1e-5
    assert (numpy.abs(gpu - twin) > 1e-6).mean() < 1e-3


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_simclr_augment_on_the_gpu_makes_the_cpu_views_of_a_seed(preset):
    """The four augmentation kernels against the CPU's NumPy steps, from the same seed: the
    same crops, flips, colours and blurs, to float32 rounding (a few pixels near a clip or a
    hue sector's edge may move by a rounding's consequence)."""
    import cupy

    from simclr.augment import SimCLRAugment
    augment = SimCLRAugment.preset(preset, size=32 if preset == "cifar" else 64)
    images = numpy.random.default_rng(6).integers(0, 256, (32, 48, 48, 3), dtype=numpy.uint8)
    gpu = to_numpy(augment(cupy.asarray(images), numpy.random.default_rng(7)))
    cpu = augment(images, numpy.random.default_rng(7))
    difference = numpy.abs(gpu - cpu)
    assert difference.max() <= 1e-4 and (difference > 1e-5).mean() < 1e-3


def test_a_resnet_training_step_on_the_gpu_equals_the_same_step_on_the_cpu_float64():
    """The whole step (augmentation excluded) on CuPy against NumPy, float64: every kernel of
    both paths in one comparison."""
    import cupy

    import nn
    from nn.optim import LARS
    from simclr.loss import nt_xent
    from simclr.model import SimCLR
    views = numpy.random.default_rng(5).random((8, 3, 16, 16))
    results = []
    for device in ("cuda", "cpu"):
        model = SimCLR(nn.resnet18(cifar_stem=True, width=0.25, zero_init_residual=True, rng=0),
                       rng=numpy.random.default_rng(1)).to(device=device, dtype="float64")
        optimizer = LARS(model.named_parameters(), lr=0.5, weight_decay=1e-4)
        xp = cupy if device == "cuda" else numpy
        for _ in range(2):
            loss = nt_xent(model(Tensor(xp.asarray(views))), 0.5)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append([float(loss.data)] + [to_numpy(p.data) for p in model.parameters()])
    # The head's first bias feeds batch norm, which subtracts the batch mean: its gradient is
    # zero in exact arithmetic, so it stays at zero up to rounding noise (about 1e-17) that
    # differs between the devices. Relative to its own size that noise is everything; each
    # parameter's error is measured against max(its largest magnitude, 1e-3) instead.
    for gpu, cpu in zip(*results):
        gpu, cpu = numpy.asarray(gpu, "float64"), numpy.asarray(cpu, "float64")
        assert numpy.abs(gpu - cpu).max() <= 1e-9 * max(numpy.abs(cpu).max(), 1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_kernels_equal_their_twins(dtype):
    import cupy

    from nn.functional.cuda.loss import CrossEntropyCuda
    rng = numpy.random.default_rng(8)
    logits = (rng.standard_normal((300, 600)) * 4).astype(dtype)
    target = rng.integers(0, 600, 300)
    results = []
    for xp in (cupy, numpy):
        z = Tensor(xp.asarray(logits), requires_grad=True)
        loss = CrossEntropyCuda.apply(z, target=xp.asarray(target))
        loss.backward(xp.asarray(numpy.array(2.0, dtype)))
        results.append((loss.data, z.grad))
    for gpu, twin in zip(*results):
        assert relative_error(to_numpy(gpu), twin) <= TOLERANCE[dtype]
