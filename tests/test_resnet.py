"""ResNet-18/34/50: torchvision's structure, parameter counts and names, parity with a PyTorch
ResNet in training and evaluation mode, an end-to-end gradient check, initialisation."""
import numpy
import pytest

import nn
from autograd import Tensor, gradcheck, to_numpy
from helpers import import_torch, randn, relative_error

BUILDERS = {18: nn.resnet18, 34: nn.resnet34, 50: nn.resnet50}
# Parity with PyTorch through a whole ResNet, relative to the largest magnitude of each array.
# The oracle is PyTorch in float64 on the same (float32-representable) weights and inputs, so a
# float32 check measures our rounding alone. Training-mode gradients of a float32 ResNet-50 are
# ill-conditioned: batch-norm backward through 48 normalised layers amplifies rounding to about
# 1e-4 (PyTorch's own float32 result differs from its float64 one by 6e-4 on these models), so
# they get 1e-3; ResNet-18 stays near 1e-5. Narrow ResNet-50s are used in float32: a ReLU input
# within rounding of 0 can fall on the other side of the kink and move a gradient by percents,
# and the more units, the likelier such an element (none occurs with these sizes and seeds).
# Whole-network parity. float64: every element, relative to the largest magnitude.
# float32: relative error of the whole array in the L2 norm. Elementwise float32 comparisons of a
# deep ReLU network are ill-conditioned: a pre-activation within rounding (~1e-6) of 0 lands on
# the other side of the kink in one of the two runs and changes the gradient of everything below
# it (measured: one such flip in ResNet-18 gives a 6e-3 max-relative, 1.9e-3 norm-relative
# input-gradient difference; PyTorch's own float32 gradients differ from its float64 ones by up to
# 2e-1). Training-mode batch norm over the few values per channel of a batch of 2 amplifies this
# further (a ResNet-50 input gradient differed by 4.8e-2). Each op's float32 parity is checked
# elementwise to 1e-5 in its own test; here float32 guards against dtype leaks and gross errors.
RESNET_TOLERANCE = {"float64": 1e-9, "float32": 1e-3}
FLOAT32_GRADIENT_NORM_TOLERANCE = {"eval": 1e-2, "train": 1e-1}


def norm_relative_error(ours, theirs):
    ours, theirs = numpy.asarray(to_numpy(ours), "float64"), numpy.asarray(theirs, "float64")
    return float(numpy.linalg.norm(ours - theirs) / max(numpy.linalg.norm(theirs), 1e-300))

def count_parameters(model):
    return sum(p.size for p in model.parameters())


def test_resnet18_has_torchvision_parameter_count():
    assert count_parameters(nn.resnet18(rng=0)) == 11_176_512  # torchvision, without fc


def test_resnet50_has_torchvision_parameter_count():
    assert count_parameters(nn.resnet50(rng=0)) == 23_508_032  # torchvision, without fc


@pytest.mark.parametrize("depth, cifar_stem, num_classes, width", [
    (18, False, None, 0.25), (34, True, 10, 0.25), (50, False, 1000, 0.25), (50, True, None, 0.5)])
def test_state_dict_names_and_shapes_match_torchvision_structure(depth, cifar_stem, num_classes,
                                                                  width):
    import_torch()
    from bench.torch_resnet import torch_resnet

    ours = BUILDERS[depth](cifar_stem=cifar_stem, width=width, num_classes=num_classes, rng=0)
    theirs = torch_resnet(depth, cifar_stem, width, num_classes).state_dict()
    assert [(k, v.shape, str(v.dtype)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in theirs.items()]


def randomised_state(model, seed):
    """The model's state with batch-norm parameters and running statistics made random, so
    that parity tests see non-trivial scales, shifts and statistics."""
    rng = numpy.random.default_rng(seed)
    state = model.state_dict()
    for key, value in state.items():
        is_bn_weight = ("bn" in key or "downsample.1" in key) and key.endswith("weight")
        if is_bn_weight or key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 1.5, value.shape).astype(value.dtype)
        elif key.endswith(("running_mean", "bias")):
            state[key] = (0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
        elif key.endswith("num_batches_tracked"):
            state[key] = numpy.array(7, dtype="int64")
    return state


def run_both(torch, ours, theirs, x, upstream):
    """Forward and backward through our model and PyTorch's (in float64); returns our output
    and {name: array} of their output ("out"), input gradient ("x") and parameter gradients."""
    ours.zero_grad()
    theirs.zero_grad()
    out = ours(x)
    out.backward(upstream)
    x_torch = torch.tensor(to_numpy(x.data).astype("float64"), requires_grad=True)
    out_torch = theirs(x_torch)
    out_torch.backward(torch.tensor(to_numpy(upstream).astype("float64")))
    results = {name: p.grad.numpy() for name, p in theirs.named_parameters()}
    results.update(out=out_torch.detach().numpy(), x=x_torch.grad.numpy())
    return out, results


@pytest.mark.parametrize("depth, cifar_stem, width, dtype, num_classes", [
    (18, False, 1, "float64", 10),
    (18, True, 1, "float32", None),
    (18, True, 0.5, "float64", None),
    (18, False, 0.5, "float32", 10),
    (50, False, 1, "float64", None),
    (50, True, 0.25, "float64", 10),
    (50, True, 0.125, "float32", None),
    (50, False, 0.125, "float32", 10),
])
def test_resnet_matches_pytorch_in_train_and_eval_mode(xp, depth, cifar_stem, width, dtype,
                                                       num_classes):
    torch = import_torch()
    from bench.torch_resnet import torch_resnet

    size = 32 if cifar_stem else 64
    ours = BUILDERS[depth](cifar_stem=cifar_stem, width=width, num_classes=num_classes, rng=1)
    state = randomised_state(ours, seed=2)
    ours.load_state_dict(state)
    ours.to(device="cuda" if xp.__name__ == "cupy" else "cpu", dtype=dtype)
    theirs = torch_resnet(depth, cifar_stem, width, num_classes).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    their_buffers = dict(theirs.named_buffers())

    for mode, seed in (("train", 3), ("eval", 4)):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        tolerance = RESNET_TOLERANCE[dtype]
        error_of = relative_error if dtype == "float64" else norm_relative_error
        x = randn(xp, 2, 3, size, size, dtype=dtype, seed=seed, requires_grad=True)
        upstream = randn(xp, 2, ours.num_features if num_classes is None else num_classes,
                         dtype=dtype, seed=seed + 10).data
        out, theirs_out = run_both(torch, ours, theirs, x, upstream)
        assert out.dtype == numpy.dtype(dtype)
        assert error_of(out.data, theirs_out["out"]) <= tolerance, mode
        for name, b in ours.named_buffers():  # running statistics after this forward pass
            error = error_of(b, their_buffers[name].numpy())
            assert error <= tolerance, f"{mode}: buffer {name}: relative error {error:.3g}"
        if dtype == "float32":
            tolerance = FLOAT32_GRADIENT_NORM_TOLERANCE[mode]
        for name, grad in [("x", x.grad)] + [(n, p.grad) for n, p in ours.named_parameters()]:
            assert grad.dtype == numpy.dtype(dtype)
            error = error_of(grad, theirs_out[name])
            assert error <= tolerance, f"{mode}: gradient of {name}: relative error {error:.3g}"


@pytest.mark.parametrize("block", [nn.BasicBlock, nn.Bottleneck])
def test_tiny_resnet_passes_gradcheck_in_train_mode(xp, block):
    model = nn.ResNet(block, [1, 1, 1, 1], cifar_stem=True, width=1 / 16, num_classes=3, rng=0)
    # Random BN scales and shifts: with the initial 1 and 0, two batch norms of 3 values can
    # give outputs that cancel exactly in a residual sum, right on the ReLU's kink.
    model.load_state_dict(randomised_state(model, seed=6))
    model.to(device="cuda" if xp.__name__ == "cupy" else "cpu", dtype="float64").train()
    x = randn(xp, 3, 3, 6, 6, seed=5, requires_grad=True)  # layer4 sees 1x1 maps: 3 values
    checked = [model.layer1[0].last_bn.weight, model.fc.bias]
    assert gradcheck(lambda x, *parameters: model(x), [x] + checked)


def test_wrong_number_of_input_channels_names_expected_and_received_shape():
    model = nn.resnet18(cifar_stem=True, width=0.125, rng=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 1, 32, 32\)"):
        model(Tensor(numpy.zeros((2, 1, 32, 32), dtype="float32")))


@pytest.mark.parametrize("depth", [18, 50])
def test_zero_init_residual_zeroes_the_last_batch_norm_of_every_block(depth):
    model = BUILDERS[depth](width=0.25, zero_init_residual=True, rng=0)
    blocks = [m for m in model.modules() if isinstance(m, (nn.BasicBlock, nn.Bottleneck))]
    assert len(blocks) == (8 if depth == 18 else 16)
    last = {id(block.last_bn.weight) for block in blocks}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.ndim == 1:  # every batch-norm gamma
            expected = 0.0 if id(p) in last else 1.0
            assert numpy.all(p.data == expected), name


def test_same_seed_gives_same_weights_and_another_seed_different_ones():
    first = nn.resnet18(width=0.25, num_classes=10, rng=3).state_dict()
    again = nn.resnet18(width=0.25, num_classes=10, rng=numpy.random.default_rng(3)).state_dict()
    other = nn.resnet18(width=0.25, num_classes=10, rng=4).state_dict()
    assert all(numpy.array_equal(first[k], again[k]) for k in first)
    assert not numpy.array_equal(first["conv1.weight"], other["conv1.weight"])
    assert not numpy.array_equal(first["fc.weight"], other["fc.weight"])


def test_conv_weights_follow_kaiming_normal_fan_out():
    model = nn.resnet50(width=0.5, rng=0)
    weight = model.layer4[0].conv2.weight  # (256, 256, 3, 3): 590k draws
    fan_out = weight.shape[0] * 9
    assert abs(weight.data.std() / numpy.sqrt(2 / fan_out) - 1) < 0.01
    assert abs(weight.data.mean()) < 0.01 * weight.data.std()


@pytest.mark.parametrize("width, features", [(1, 2048), (0.25, 512), (0.1, 204), (1e-3, 4)])
def test_width_multiplies_every_channel_count(width, features):
    model = nn.resnet50(cifar_stem=True, width=width, rng=0)
    assert model.num_features == features
    assert model.conv1.out_channels == max(1, round(64 * width))
    if width < 1:
        h = model(Tensor(numpy.ones((2, 3, 8, 8), dtype="float32")))
        assert h.shape == (2, features)


def test_cifar_stem_has_a_parameter_free_maxpool_and_a_3x3_stride_1_conv():
    model = nn.resnet18(cifar_stem=True, width=0.25, rng=0)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.weight.shape == (16, 3, 3, 3) and model.conv1.stride == (1, 1)
    out = model.bn1(model.conv1(Tensor(numpy.ones((2, 3, 32, 32), "float32"))), relu=True)
    assert out.shape == (2, 16, 32, 32)


@pytest.mark.parametrize("kwargs, error", [
    ({"width": 0}, ValueError), ({"width": "2x"}, ValueError), ({"num_classes": 0}, ValueError),
    ({"rng": 1.5}, TypeError)])
def test_bad_resnet_settings_raise_clear_errors(kwargs, error):
    with pytest.raises(error, match=list(kwargs)[0]):
        nn.resnet18(**kwargs)


@pytest.mark.parametrize("depth, cifar_stem", [(18, False), (50, True)])
def test_resnet_by_its_kernels_equals_resnet_by_the_reference_ops(xp, depth, cifar_stem,
                                                                   monkeypatch):
    """The whole network in training mode, once by the kernels conv2d, batch_norm and
    max_pool2d pick and once inside use_reference(): the output, every parameter's gradient and
    every running statistic agree in float64. (The ImageNet stem brings the max-pool and the
    7x7 convolution; ResNet-18 at 16x16 reaches Winograd's 4x4 maps in its last stages.)"""
    from nn.functional import conv, normalization, pooling
    calls = {"conv2d": 0, "batch_norm": 0, "max_pool2d": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call
    monkeypatch.setattr(conv.Conv2dReference, "forward",
                        staticmethod(counted("conv2d", conv.Conv2dReference.forward)))
    monkeypatch.setattr(pooling.MaxPool2dReference, "forward",
                        staticmethod(counted("max_pool2d", pooling.MaxPool2dReference.forward)))
    monkeypatch.setattr(normalization.BatchNormReference, "forward",
                        staticmethod(counted("batch_norm",
                                             normalization.BatchNormReference.forward)))
    results = []
    for reference in (False, True):
        model = BUILDERS[depth](cifar_stem=cifar_stem, width=0.125, rng=0)
        model.to(device="cuda" if xp.__name__ == "cupy" else "cpu", dtype="float64").train()
        x = randn(xp, 2, 3, 16, 16, seed=1)
        with nn.functional.use_reference(reference):
            out = model(x)
            out.backward(randn(xp, *out.shape, seed=2).data)
        results.append({"output": out.data,
                        **{name: p.grad for name, p in model.named_parameters()},
                        **{name: b for name, b in model.named_buffers()
                           if name.endswith(("running_mean", "running_var"))}})
    convolutions = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert calls == {"conv2d": convolutions, "batch_norm": norms,
                     "max_pool2d": 0 if cifar_stem else 1}     # the reference ran, and only once
    kernels, references = results
    assert kernels.keys() == references.keys()
    for name in kernels:
        assert relative_error(kernels[name], to_numpy(references[name])) <= 1e-10, name
