"""The projection head g of z = g(h) (simclr/model.py), each variant against its composition
written out by hand, and the part of it that fine-tuning keeps (--from-head-layer).

The heads, as docs/SIMCLR.md (Encoder and heads; Differences, item 8) states them:
    none        z = h
    linear      z = h W^T + b
    nonlinear   z = relu(BN(h W1^T + b1)) W2^T + b2, BN with its own scale and shift, and no
                batch norm after the last layer
Dense weights start as N(0, 0.01^2) and biases at 0.
"""
import numpy
import pytest

import nn
from autograd import Tensor
from helpers import import_torch
from simclr.model import SimCLR, build_finetune_model

FEATURES, PROJECTION, BATCH = 24, 8, 32


class GivenFeatures(nn.Module):
    """An encoder that hands its input on as the representation h (N, num_features), so that
    the head sees exactly the h a test chooses."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def model_with(head, seed=0):
    return SimCLR(GivenFeatures(FEATURES), head=head, proj_dim=PROJECTION,
                  rng=numpy.random.default_rng(seed)).to(dtype="float64")


def representations(seed=1):
    return numpy.random.default_rng(seed).standard_normal((BATCH, FEATURES)) * 2.0 + 0.5


def project(model, h):
    return model(Tensor(h)).data


def perturb(model, seed=2):
    """Every parameter moved off its starting value (biases off 0, BN's scale off 1), so that
    each one's place in the composition shows in z."""
    rng = numpy.random.default_rng(seed)
    for parameter in model.parameters():
        parameter.data += rng.standard_normal(parameter.shape) * 0.3


def batch_norm(a, mean, var, scale, shift, eps=1e-5):
    return (a - mean) / numpy.sqrt(var + eps) * scale + shift


def test_no_head_is_the_identity():
    model = model_with("none")
    h = representations()
    numpy.testing.assert_array_equal(project(model, h), h)
    assert list(model.head.parameters()) == []


def test_the_linear_head_is_one_dense_layer_with_a_bias():
    model = model_with("linear")
    layer = model.head
    assert isinstance(layer, nn.Linear) and layer.weight.shape == (PROJECTION, FEATURES)
    assert (layer.bias.data == 0).all() and 0.008 < layer.weight.data.std() < 0.012
    perturb(model)
    h = representations()
    numpy.testing.assert_allclose(project(model, h), h @ layer.weight.data.T + layer.bias.data,
                                  rtol=1e-12, atol=1e-12)


def test_the_nonlinear_head_is_linear_batch_norm_relu_linear():
    model = model_with("nonlinear")
    first, norm, relu, last = layers = list(model.head.children())
    assert [type(layer) for layer in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert first.weight.shape == (FEATURES, FEATURES) and norm.num_features == FEATURES
    assert last.weight.shape == (PROJECTION, FEATURES)
    assert (norm.eps, norm.momentum) == (1e-5, 0.1)
    for dense in (first, last):
        assert (dense.bias.data == 0).all() and 0.008 < dense.weight.data.std() < 0.012
    perturb(model)
    h = representations()
    w1, b1, w2, b2 = first.weight.data, first.bias.data, last.weight.data, last.bias.data
    scale, shift = norm.weight.data, norm.bias.data

    a = h @ w1.T + b1                                        # (N, D)
    mean, var = a.mean(axis=0), a.var(axis=0)                # the batch's, variance biased
    want = numpy.maximum(batch_norm(a, mean, var, scale, shift), 0.0) @ w2.T + b2
    numpy.testing.assert_allclose(project(model, h), want, rtol=1e-10, atol=1e-12)
    assert (batch_norm(a, mean, var, scale, shift) < 0).mean() > 0.2   # the ReLU has work

    # the running statistics moved 0.1 of the way to the batch's (variance unbiased) ...
    running_mean, running_var = 0.1 * mean, 0.9 + 0.1 * a.var(axis=0, ddof=1)
    numpy.testing.assert_allclose(norm.running_mean, running_mean, rtol=1e-12)
    numpy.testing.assert_allclose(norm.running_var, running_var, rtol=1e-12)
    # ... and evaluation mode normalises with them
    model.eval()
    want = numpy.maximum(batch_norm(a, running_mean, running_var, scale, shift), 0.0) @ w2.T + b2
    numpy.testing.assert_allclose(project(model, h), want, rtol=1e-10, atol=1e-12)


def test_the_nonlinear_head_equals_pytorchs_with_the_same_weights():
    """The same composition in PyTorch, loaded by parameter name (0.weight, 1.running_var,
    ...): z and the running statistics after a training-mode step, in float64."""
    torch = import_torch()
    model = model_with("nonlinear")
    perturb(model)
    theirs = torch.nn.Sequential(torch.nn.Linear(FEATURES, FEATURES),
                                 torch.nn.BatchNorm1d(FEATURES), torch.nn.ReLU(),
                                 torch.nn.Linear(FEATURES, PROJECTION)).double()
    theirs.load_state_dict({name: torch.from_numpy(numpy.array(value))
                            for name, value in model.head.state_dict().items()})
    h = representations()
    z = theirs(torch.from_numpy(h)).detach().numpy()
    numpy.testing.assert_allclose(project(model, h), z, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(model.head[1].running_var, theirs[1].running_var.numpy(),
                                  rtol=1e-12)


@pytest.mark.parametrize("kind", ["nonlinear", "linear", "none"])
def test_a_heads_output_is_proj_dim_wide_except_no_head(kind):
    z = project(model_with(kind), representations())
    assert z.shape == (BATCH, FEATURES if kind == "none" else PROJECTION)


# ----- fine-tuning from the head's first layer (--from-head-layer) -----------------------------

CONFIG = {"arch": "resnet18", "width": 0.0625, "cifar_stem": True, "seed": 5, "head": "nonlinear",
          "proj_dim": 16, "freeze_until": None}


def pretrained_state():
    """A pre-training run's state, as train.build_model names it (float32): weights of
    another seed than the fine-tuning run's, and running statistics moved off their start (0
    and 1), so that the fine-tuning network's copy of them can be told from a fresh one."""
    from simclr.model import build_model
    state = build_model(dict(CONFIG, seed=11), 8).state_dict()
    rng = numpy.random.default_rng(3)
    for name, value in state.items():
        if name.endswith("running_mean"):
            state[name] = (value + rng.normal(0.0, 0.2, value.shape)).astype(value.dtype)
        elif name.endswith("running_var"):
            state[name] = (value * rng.uniform(0.5, 2.0, value.shape)).astype(value.dtype)
    return state


@pytest.mark.parametrize("layer", [0, 1])
def test_from_head_layer_takes_the_layer_it_names(layer):
    """--from-head-layer 0: the classifier reads h; 1: it reads relu(BN(h W1^T + b1)), the
    pre-trained head's first layer, with the pre-trained weights and running statistics."""
    state = pretrained_state()
    net = build_finetune_model(dict(CONFIG, from_head_layer=layer), 8, 4, state)
    net.to(dtype="float64").eval()
    state = {name: value.astype("float64") for name, value in state.items()}
    images = numpy.random.default_rng(4).random((6, 3, 8, 8))
    h = net.encoder(Tensor(images)).data                          # (6, 32)
    if layer == 0:
        assert isinstance(net.head, nn.Identity) and net.classifier.weight.shape == (4, 32)
        features = h
    else:
        assert [type(m) for m in net.head.children()] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
        assert net.classifier.weight.shape == (4, 32)
        for name, value in net.head.state_dict().items():
            numpy.testing.assert_array_equal(value, state["head." + name], err_msg=name)
        a = h @ state["head.0.weight"].T + state["head.0.bias"]
        features = numpy.maximum(batch_norm(a, state["head.1.running_mean"],
                                            state["head.1.running_var"], state["head.1.weight"],
                                            state["head.1.bias"]), 0.0)
    logits = features @ net.classifier.weight.data.T + net.classifier.bias.data
    numpy.testing.assert_allclose(net(Tensor(images)).data, logits, rtol=1e-9, atol=1e-12)
