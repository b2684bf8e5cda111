"""The GPU path, as far as a machine without a GPU can know it (the rest is in the gpu tests).

- The rehearsal (bench/rehearsal.py) catches what it claims to: NumPy functions on
  device arrays, host arrays mixed in, reads on the host (counted as synchronisations).
- A SimCLR training step takes the device path end to end within a launch budget, with no
  synchronisation inside it; training, a checkpoint, resuming and linear evaluation run
  through `--backend cupy` on the rehearsal.
- Our CUDA kernels' NumPy twins compute what the CPU's kernels and references compute; every
  kernel compiles with nvcc for sm_90 (where nvcc is installed); every name the code asks
  CuPy for exists in the installed CuPy (where CuPy is installed, GPU or not).
"""
import ast
import json
import os
import shutil
import subprocess

import numpy
import pytest

from autograd import Tensor
from bench.rehearsal import HostTouched, rehearsal
from helpers import randn, relative_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Kernel launches of one ResNet-50 SimCLR step (CIFAR stem, both views augmented), counted on
# the rehearsal: 7,880 before the GPU kernels of batch norm, LARS and the colour distortion,
# 1,233 with them (137 of them the two views' augmentation), 944 with the augmentation, im2col,
# col2im and cross-entropy kernels (5 for the augmentation); 947 since the launch checks
# (arguments made contiguous and of their kernel's type before a launch; the device rooms that
# followed changed none); 963 with NT-Xent computed in blocks of rows (simclr/loss.py).
RESNET50_STEP_LAUNCH_BUDGET = 1100


# ----- the rehearsal itself -----------------------------------------------------------------

def test_the_rehearsal_refuses_numpy_functions_and_host_arrays_and_counts_reads():
    with rehearsal() as device:
        x = device.xp.ones((2, 3), dtype=numpy.float32)
        with pytest.raises(HostTouched, match="numpy.concatenate"):
            numpy.concatenate([x, x])
        with pytest.raises(HostTouched, match="numpy.sum"):
            numpy.sum(x)
        with pytest.raises(HostTouched, match="host"):
            x + numpy.ones((2, 3), dtype=numpy.float32)
        with pytest.raises(HostTouched, match="host"):
            x[numpy.array([0, 1])]
        assert device.syncs == 0
        assert float(x.sum()) == 6.0 and device.syncs == 1     # a read is a synchronisation
        assert (2.0 * x).tolist() == [[2.0] * 3] * 2 and device.syncs == 2


def _mask_assign(xp, x):
    x[x > 2] = 0


# Each reads the device on the host (CuPy waits for the device): one sync each.
HOST_READS = {
    "a boolean mask": lambda xp, x: x[x > 2], "an assignment through a mask": _mask_assign,
    "xp.nonzero": lambda xp, x: xp.nonzero(x), "the nonzero method": lambda xp, x: x.nonzero(),
    "xp.flatnonzero": lambda xp, x: xp.flatnonzero(x),
    "xp.argwhere": lambda xp, x: xp.argwhere(x),
    "xp.where of a condition alone": lambda xp, x: xp.where(x > 2),
    "xp.unique": lambda xp, x: xp.unique(x), ".item()": lambda xp, x: x.sum().item(),
    "float()": lambda xp, x: float(x.sum()), "int()": lambda xp, x: int(x.sum()),
    "bool()": lambda xp, x: bool(x.any()), "an if": lambda xp, x: 1 if x.all() else 0,
    "a format": lambda xp, x: f"{x.sum():.1f}", ".get()": lambda xp, x: x.get(),
    "xp.asnumpy": lambda xp, x: xp.asnumpy(x), ".tolist()": lambda xp, x: x.tolist(),
    "an index taken from the device": lambda xp, x: "abcdef"[x.argmax()],
    "synchronize": lambda xp, x: xp.cuda.Device().synchronize(),
}
# Each stays on the device: no sync.
DEVICE_ONLY = {
    "an integer gather": lambda xp, x: x[xp.asarray([0, 1])],
    "xp.where of three": lambda xp, x: xp.where(x > 2, x, 0.0),
    "a reduction": lambda xp, x: x.sum(), "a view": lambda xp, x: x.T[1:],
    "a comparison": lambda xp, x: x == 2,
}


@pytest.mark.parametrize("what", sorted(HOST_READS) + sorted(DEVICE_ONLY))
def test_the_rehearsal_counts_every_read_on_the_host_as_a_sync_and_nothing_else(what):
    """CuPy waits for the device wherever the host needs a value: a scalar, a copy, or the
    size of a result that depends on the data (a mask, nonzero). The rehearsal counts each
    and names the line that asked."""
    with rehearsal() as device:
        x = device.xp.asarray(numpy.arange(6.0).reshape(2, 3))
        before = device.syncs
        (HOST_READS.get(what) or DEVICE_ONLY[what])(device.xp, x)
        assert device.syncs - before == (what in HOST_READS), device.sync_sites
        assert all(__file__ in site for site in device.sync_sites), device.sync_sites


def test_the_rehearsal_counts_a_launch_per_operation_and_none_for_views():
    with rehearsal() as device:
        x = device.xp.zeros((4, 4))                              # a fill: one launch
        launches = device.launches
        y = x.T.T.reshape(16)[::2]                               # views: none
        assert device.launches == launches
        z = (y * 2 + 1).sum()                                    # three
        assert device.launches == launches + 3 and z.ndim == 0   # CuPy's sums are 0-d arrays
        assert type(z).__module__.startswith("cupy")


# ----- a training step on the device path -------------------------------------------------

def _step_parts(device, arch="resnet50"):
    from simclr.augment import SimCLRAugment
    from simclr.model import build_model
    from simclr.pretraining import build_optimizer
    config = {"arch": arch, "width": 0.125, "cifar_stem": True, "seed": 0, "head": "nonlinear",
              "proj_dim": 16, "optimizer": "lars", "weight_decay": 1e-6}
    model = build_model(config, 32).to(device="cuda")
    images = device.xp.asarray(numpy.random.default_rng(0).integers(0, 256, (4, 32, 32, 3),
                                                                    dtype=numpy.uint8))
    return model, build_optimizer(config, model), SimCLRAugment.preset("cifar"), images


def test_a_resnet50_step_takes_the_device_path_within_its_launch_budget_without_syncs():
    from simclr.pretraining import training_step
    with rehearsal() as device:
        model, optimizer, augment, images = _step_parts(device)
        for step in range(2):  # the first step makes the momentum buffers
            before = device.snapshot()
            loss = training_step(model, optimizer, augment, images,
                                 numpy.random.default_rng(step), 0.1, 0.5)
        launches, syncs, _ = (now - then for now, then in zip(device.snapshot(), before))
        assert syncs == 0, f"the step waited for the device: {device.sync_sites}"
        assert launches <= RESNET50_STEP_LAUNCH_BUDGET, sorted(device.by_name.items(),
                                                              key=lambda kv: -kv[1])[:20]
        assert numpy.isfinite(float(loss))
        assert all(type(p.data).__module__.startswith("cupy") for p in model.parameters())


def test_train_checkpoint_resume_and_linear_eval_run_through_backend_cupy(tmp_path, capsys):
    from simclr import linear_eval, train
    tiny = ["--dataset", "synthetic", "--synthetic-size", "48", "--arch", "resnet18",
            "--width", "0.0625", "--batch-size", "16", "--epochs", "2", "--backend", "cupy",
            "--val-fraction", "0.25", "--knn-every", "1"]
    with rehearsal() as device:
        assert train.main(tiny + ["--out", str(tmp_path / "run"), "--max-steps", "2"]) == 0
        assert train.main(["--resume", str(tmp_path / "run")]) == 0
        assert linear_eval.main(["--checkpoint", str(tmp_path / "run"), "--dataset",
                                 "synthetic", "--synthetic-size", "48", "--val-fraction", "0.25",
                                 "--epochs", "1", "--backend", "cupy"]) == 0
        assert device.launches > 0
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert any("knn_accuracy" in r for r in records)
    capsys.readouterr()


def test_finetuning_on_the_device_reads_its_losses_a_few_steps_at_a_time_as_pretraining(
        tmp_path, monkeypatch, capsys):
    """Fine-tuning runs in pre-training's loop: its step leaves the loss and the count of
    correct predictions on the device (no synchronisation inside it), and the loop reads
    READ_EVERY steps' numbers in one transfer."""
    from simclr import finetune, finetuning
    from simclr.training import loop
    syncs, read = [], []
    real_step, real_log = finetuning.FineTuning.train_step, loop.log_steps

    def counted_step(run):
        before = device.syncs
        numbers = real_step(run)
        syncs.append(device.syncs - before)
        return numbers

    def counted_log(run, waiting, *rest):
        read.append([step for step, _ in waiting])
        return real_log(run, waiting, *rest)

    monkeypatch.setattr(finetuning.FineTuning, "train_step", counted_step)
    monkeypatch.setattr(loop, "log_steps", counted_log)
    monkeypatch.setitem(loop.READ_EVERY, "cuda", 3)
    argv = ["--from-scratch", "--arch", "resnet18", "--width", "0.0625", "--dataset",
            "synthetic", "--synthetic-size", "48", "--val-fraction", "0.25", "--label-fraction",
            "1", "--batch-size", "8", "--epochs", "2", "--backend", "cupy", "--out",
            str(tmp_path)]
    with rehearsal() as device:
        assert finetune.main(argv) == 0
    assert syncs == [0] * 8   # 36 labelled images: 4 steps an epoch
    assert read == [[1, 2, 3], [4], [5, 6, 7], [8]]  # and at each epoch's end
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records if "train_accuracy" in r] == list(range(1, 9))
    capsys.readouterr()


# ----- the twins: our CUDA kernels' NumPy versions, against the CPU -----------------------

@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", ["none", "relu", "residual+relu"])
def test_batch_norm_by_the_gpu_kernels_twins_equals_the_cpu_kernel(training, fused):
    """BatchNormCuda on NumPy arrays runs its kernels' twins: the same output, gradients and
    running statistics as the CPU's kernel, in float64."""
    from nn.functional.cpu.batch_norm import BatchNormBlocked
    from nn.functional.cuda.batch_norm import BatchNormCuda
    relu, res = "relu" in fused, "residual" in fused
    results = []
    for op in (BatchNormCuda, BatchNormBlocked):
        rng = numpy.random.default_rng(1)
        x = randn(numpy, 6, 5, 3, 4, scale=2.0, requires_grad=True)
        x.data += 10 * numpy.arange(5).reshape(1, 5, 1, 1)       # channels far from zero
        residual = randn(numpy, 6, 5, 3, 4, seed=2, requires_grad=True)
        weight, bias = (Tensor(rng.standard_normal(5), requires_grad=True) for _ in range(2))
        mean, var = rng.standard_normal(5), 0.5 + rng.random(5)
        out = op.apply(x, weight, bias, *([residual] if res else []), running_mean=mean,
                       running_var=var, use_batch_stats=training, momentum=0.1, eps=1e-5,
                       relu=relu)
        out.backward(numpy.random.default_rng(3).standard_normal(x.shape))
        results.append([out.data, mean, var, x.grad, weight.grad, bias.grad]
                       + ([residual.grad] if res else []))
    for name, twin, cpu in zip(["y", "mean", "var", "dx", "dgamma", "dbeta", "dres"], *results):
        assert relative_error(twin, cpu) < 1e-12, name


def test_lars_by_the_gpu_kernels_twins_equals_the_cpu_update():
    from nn.optim.lars_cuda import CHUNK, lars_step
    from nn.module import Parameter
    from nn.optim import LARS
    rng = numpy.random.default_rng(0)
    shapes = [(3, CHUNK + 5), (7,), (2 * CHUNK,), (4, 4)]       # several chunks, and one
    params = [Parameter(rng.standard_normal(shape)) for shape in shapes]
    for param in params:
        param.grad = rng.standard_normal(param.shape)
    params[3].grad[...] = 0                                     # a zero gradient: trust 1
    optimizer = LARS(params, lr=0.7, weight_decay=1e-3)
    weights = [p.data.copy() for p in params]
    velocities = [rng.standard_normal(shape) for shape in shapes]
    optimizer.momentum_buffers = [v.copy() for v in velocities]
    optimizer.step()                                            # the CPU's update, per parameter
    lars_step(weights, [p.grad for p in params], velocities, optimizer.excluded, 0.7, 0.9, 1e-3,
              0.001)
    for ours, theirs, v, buffer in zip(weights, params, velocities, optimizer.momentum_buffers):
        assert relative_error(ours, theirs.data) < 1e-13
        assert relative_error(v, buffer) < 1e-13


def test_the_colour_distortion_twin_equals_color_jitter_then_random_grayscale():
    from simclr.augment.color import color_jitter, draw_grayscale, draw_jitter, random_grayscale
    from simclr.augment.cuda import DISTORT, distortion_table
    images = numpy.random.default_rng(0).random((12, 3, 5, 6)).astype(numpy.float32)
    expected = random_grayscale(color_jitter(images, numpy.random.default_rng(1), 1.0),
                                numpy.random.default_rng(2))
    jitter = draw_jitter(numpy.random.default_rng(1), 12, 1.0)
    grayscale = draw_grayscale(numpy.random.default_rng(2), 12)
    assert jitter[0].any() and grayscale.any()
    out = numpy.empty_like(images)
    DISTORT.twin(images, out, distortion_table(*jitter, grayscale), 12, 30)
    numpy.testing.assert_array_equal(out, expected)


def test_the_crop_and_blur_twins_equal_the_cpu_augmentation():
    """crop_resize_flip's and blur's twins (run on NumPy arrays) give what SimCLRAugment's
    CPU steps give for the same draws, bitwise."""
    from simclr.augment import cuda
    from simclr.augment.blur import apply_blur, draw_blur
    from simclr.augment.crop import (draw_flips, horizontal_flip, resized_crop,
                                     sample_crop_boxes, to_float_nchw)
    from simclr.augment._batch import apply_to_chosen
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 256, (10, 20, 24, 3), dtype=numpy.uint8)
    boxes, flips = sample_crop_boxes(rng, 10, 20, 24), draw_flips(rng, 10)
    assert flips.any() and not flips.all()
    expected = apply_to_chosen(resized_crop(to_float_nchw(images), boxes, (16, 16)), flips,
                               horizontal_flip)
    views = cuda.crop_resize_flip(images, boxes, flips, (16, 16))
    numpy.testing.assert_array_equal(views, expected)
    chosen, sigma = draw_blur(rng, 10)
    assert chosen.any() and not chosen.all()
    numpy.testing.assert_array_equal(cuda.blur(views, chosen, sigma),
                                     apply_blur(views, chosen, sigma))


def test_augmentation_on_the_device_path_is_four_launches_a_view():
    from simclr.augment import SimCLRAugment
    with rehearsal() as device:
        images = device.xp.asarray(numpy.random.default_rng(0).integers(
            0, 256, (6, 40, 40, 3), dtype=numpy.uint8))
        before = device.launches
        views = SimCLRAugment.preset("imagenet", size=32)(images, numpy.random.default_rng(1))
        assert device.launches - before == 4, device.by_name
        assert views.shape == (6, 3, 32, 32) and type(views).__module__.startswith("cupy")


# ----- the CUDA sources and CuPy's names ----------------------------------------------------

def _names_called_on(module_name, paths):
    """Every dotted name `module_name.a.b` the code under `paths` uses (xp.zeros,
    xp.linalg.norm, xp.cuda.Device, ...)."""
    names = set()
    for path in paths:
        for root, _, files in os.walk(path):
            for file in files:
                if file.endswith(".py"):
                    tree = ast.parse(open(os.path.join(root, file)).read())
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Attribute):
                            parts = []
                            while isinstance(node, ast.Attribute):
                                parts.append(node.attr)
                                node = node.value
                            if isinstance(node, ast.Name) and node.id == module_name:
                                names.add(".".join(reversed(parts)))
    return names


def test_every_name_the_code_asks_of_xp_and_cupyx_exists_in_cupy():
    """Where CuPy is installed (it imports without a GPU), every xp.<name> that autograd/,
    nn/ and simclr/ use exists in it: a NumPy-only function would pass every CPU test and
    fail on the first GPU run."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    import cupyx
    paths = [os.path.join(REPO, folder) for folder in ("autograd", "nn", "simclr")]
    missing = []
    for module, names in ((cupy, _names_called_on("xp", paths)),
                          (cupyx, _names_called_on("cupyx", paths))):
        for name in sorted(names):
            value = module
            for part in name.split("."):
                value = getattr(value, part, None)
            if value is None:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, missing
    assert "zeros" in _names_called_on("xp", paths)  # the scan sees the code


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (7, 2, 3), (2, 3, 0)])
def test_the_im2col_and_col2im_twins_equal_the_cpu_copies(kernel, stride, padding):
    """cuda/conv.py's kernels' twins against cpu/conv.py's copies: the column matrix, and its
    adjoint <im2col(x), c> = <x, col2im(c)>."""
    from nn.functional.cpu.conv import _columns
    from nn.functional.cuda import conv as cuda_conv
    rng = numpy.random.default_rng(0)
    x_last = rng.standard_normal((3, 9, 8, 5))
    Ho, Wo = ((9 + 2 * padding - kernel) // stride + 1, (8 + 2 * padding - kernel) // stride + 1)
    geometry = ((kernel, kernel), (stride, stride), (padding, padding), (Ho, Wo))
    cols = numpy.empty((3 * Ho * Wo, kernel * kernel * 5))
    cuda_conv.IM2COL.twin(x_last, cols, 3, 9, 8, 5, kernel, kernel, stride, stride, padding,
                          padding, Ho, Wo)
    numpy.testing.assert_array_equal(cols, _columns(x_last, geometry, 0, 3, 3))
    upstream = rng.standard_normal(cols.shape)
    grad_padded = numpy.empty((3, 9 + 2 * padding, 8 + 2 * padding, 5))
    cuda_conv.COL2IM.twin(upstream, grad_padded, 3, *grad_padded.shape[1:], kernel, kernel,
                          stride, stride, Ho, Wo)
    grad = grad_padded[:, padding:padding + 9, padding:padding + 8]
    assert abs((cols * upstream).sum() - (x_last * grad).sum()) < 1e-10


def test_cross_entropy_by_the_gpu_kernels_twins_equals_the_cpu_op():
    from nn.functional.cuda.loss import CrossEntropyCuda
    from nn.functional.loss import CrossEntropy
    rng = numpy.random.default_rng(0)
    logits = rng.standard_normal((7, 11)) * 5
    target = rng.integers(0, 11, 7)
    results = []
    for op in (CrossEntropyCuda, CrossEntropy):
        z = Tensor(logits.copy(), requires_grad=True)
        loss = op.apply(z, target=target)
        (loss * 3.0).backward()
        results.append((loss.data, z.grad))
    for twin, cpu in zip(*results):
        assert relative_error(twin, cpu) < 1e-13
