"""Module and Parameter: registration, state_dict / load_state_dict, modes, devices and
dtypes; the layers against PyTorch's; initialisation."""
import numpy
import pytest

import nn
from autograd import Tensor
from helpers import PARITY_TOLERANCE, import_torch, randn, relative_error


def device_of(xp):
    return "cuda" if xp.__name__ == "cupy" else "cpu"


class Block(nn.Module):
    """A small module with a parameter, a buffer and submodules, registered in that order."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(numpy.ones(3, dtype="float32"))
        self.register_buffer("steps", numpy.zeros((), dtype="int64"))
        self.body = nn.Sequential(nn.Linear(4, 3, rng=0), nn.BatchNorm1d(3))

    def forward(self, x):
        return self.body(x) * self.scale


def test_parameter_is_a_leaf_that_requires_grad_and_gets_an_array_gradient():
    p = nn.Parameter(numpy.arange(3.0))
    (p * p).sum().backward()
    assert p.requires_grad and p.is_leaf
    assert isinstance(p.grad, numpy.ndarray) and numpy.array_equal(p.grad, [0.0, 2.0, 4.0])


def test_attribute_assignment_registers_parameters_buffers_and_submodules_in_torch_order():
    block = Block()
    assert [name for name, _ in block.named_parameters()] == [
        "scale", "body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"]
    assert [name for name, _ in block.named_buffers()] == [
        "steps", "body.1.running_mean", "body.1.running_var", "body.1.num_batches_tracked"]
    assert list(block.state_dict()) == [
        "scale", "steps", "body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias",
        "body.1.running_mean", "body.1.running_var", "body.1.num_batches_tracked"]
    assert [name for name, _ in block.named_modules()] == ["", "body", "body.0", "body.1"]


def test_reassigning_a_buffer_replaces_it_and_none_removes_a_parameter():
    block = Block()
    block.steps = numpy.ones((), dtype="int64")
    assert block.state_dict()["steps"] == 1
    block.body[0].bias = None
    assert "body.0.bias" not in block.state_dict() and block.body[0].bias is None
    with pytest.raises(TypeError, match="scale"):
        block.scale = numpy.ones(3)


def test_state_dict_holds_host_copies(xp):
    block = Block().to(device=device_of(xp))
    state = block.state_dict()
    assert all(isinstance(v, numpy.ndarray) for v in state.values())
    block.scale.data[...] = 5
    assert numpy.all(state["scale"] == 1)
    assert state["body.1.num_batches_tracked"].dtype == numpy.int64
    assert state["body.1.num_batches_tracked"].shape == ()


def test_load_state_dict_round_trip_keeps_device_and_dtype(xp):
    source, target = nn.resnet18(width=0.125, rng=1), nn.resnet18(width=0.125, rng=2)
    target.to(device=device_of(xp), dtype="float64")
    state = {k: v.astype("float32") if v.dtype.kind == "f" else v
             for k, v in source.state_dict().items()}
    parameters_before = list(target.parameters())
    target.load_state_dict(state)
    loaded = target.state_dict()
    assert all(numpy.array_equal(loaded[k], state[k]) for k in state)
    assert all(a is b for a, b in zip(parameters_before, target.parameters()))
    assert target.conv1.weight.dtype == numpy.float64 and target.conv1.weight.device == \
        device_of(xp)


def test_load_state_dict_lists_missing_unexpected_and_mis_shaped_keys_in_one_error():
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.BatchNorm1d(3))
    state = model.state_dict()
    del state["0.bias"]
    state["0.weight"] = numpy.zeros((3, 5))
    state["2.weight"] = numpy.zeros(3)
    with pytest.raises(ValueError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert "missing keys (1): 0.bias" in message
    assert "unexpected keys (1): 2.weight" in message
    assert "0.weight: expected shape (3, 4), got (3, 5)" in message
    assert numpy.array_equal(model.state_dict()["1.running_var"], numpy.ones(3))  # nothing copied


def test_load_state_dict_non_strict_skips_missing_and_unexpected_keys_but_not_bad_shapes():
    model = nn.Sequential(nn.Linear(4, 3, rng=0))
    result = model.load_state_dict({"0.weight": numpy.ones((3, 4)), "extra": numpy.ones(1)},
                                   strict=False)
    assert result.missing_keys == ["0.bias"] and result.unexpected_keys == ["extra"]
    assert numpy.all(model[0].weight.data == 1)
    with pytest.raises(ValueError, match="mis-shaped"):
        model.load_state_dict({"0.weight": numpy.ones((4, 3))}, strict=False)


def test_train_and_eval_reach_every_descendant():
    model = nn.resnet18(width=0.125, rng=0)
    assert all(m.training for m in model.modules())
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.layer2.train()
    assert all(m.training for m in model.layer2.modules()) and not model.layer1[0].bn1.training


def test_zero_grad_clears_every_gradient():
    model = Block()
    model(randn(numpy, 5, 4, dtype="float32")).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_to_float64_converts_parameters_gradients_and_float_buffers_only(xp):
    model = Block()
    model(randn(numpy, 5, 4, dtype="float32")).sum().backward()
    same = list(model.parameters())
    assert model.to(device=device_of(xp), dtype="float64") is model
    assert all(a is b for a, b in zip(same, model.parameters()))
    for p in model.parameters():
        assert p.dtype == numpy.float64 and p.grad.dtype == numpy.float64
        assert p.device == device_of(xp)
    buffers = dict(model.named_buffers())
    assert buffers["body.1.running_mean"].dtype == numpy.float64
    assert buffers["steps"].dtype == numpy.int64
    assert buffers["body.1.num_batches_tracked"].dtype == numpy.int64
    out = model(randn(xp, 5, 4))
    assert out.dtype == numpy.float64 and out.device == device_of(xp)


@pytest.mark.parametrize("kwargs, error", [({"dtype": "int32"}, TypeError),
                                           ({"device": "tpu"}, ValueError)])
def test_to_rejects_unknown_dtypes_and_devices(kwargs, error):
    with pytest.raises(error, match=list(kwargs.values())[0]):
        Block().to(**kwargs)


def test_repr_shows_the_module_tree():
    text = repr(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=0), nn.ReLU()))
    assert text == ("Sequential(\n"
                    "  (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), "
                    "bias=False)\n"
                    "  (1): ReLU()\n"
                    ")")


def test_sequential_names_children_by_position_and_is_indexable():
    layers = [nn.Linear(2, 3, rng=0), nn.ReLU(), nn.Linear(3, 1, rng=0)]
    model = nn.Sequential(*layers)
    assert [name for name, _ in model.named_children()] == ["0", "1", "2"]
    assert model[0] is layers[0] and model[-1] is layers[2] and len(model) == 3
    assert list(model[1:]) == layers[1:]
    with pytest.raises(TypeError, match="argument 1"):
        nn.Sequential(layers[0], lambda x: x)


def test_batch_norm_counts_training_batches_only():
    bn = nn.BatchNorm2d(2)
    x = randn(numpy, 3, 2, 4, 4, dtype="float32")
    bn(x)
    bn(x)
    bn.eval()
    bn(x)
    assert bn.num_batches_tracked == 2 and bn.num_batches_tracked.dtype == numpy.int64


def test_layers_reject_inputs_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 8\) has 4 channels.*expects 3"):
        nn.Conv2d(3, 8, 3, rng=0)(Tensor(numpy.zeros((2, 4, 8, 8), "float32")))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(2, 3\)"):
        nn.BatchNorm2d(3)(Tensor(numpy.zeros((2, 3), "float32")))
    with pytest.raises(ValueError, match=r"expected 3 channels.*\(2, 4\)"):
        nn.BatchNorm1d(3)(Tensor(numpy.zeros((2, 4), "float32")))


def layer_pairs(torch):
    """(our layer, PyTorch's, input shape) for every layer kind."""
    tnn = torch.nn
    return [
        (nn.Linear(5, 3, rng=0), tnn.Linear(5, 3), (4, 5)),
        (nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=0), tnn.Conv2d(3, 4, 3, 2, 1), (2, 3, 7, 7)),
        (nn.Conv2d(3, 4, (1, 3), bias=False, rng=0), tnn.Conv2d(3, 4, (1, 3), bias=False),
         (2, 3, 5, 5)),
        (nn.BatchNorm1d(3), tnn.BatchNorm1d(3), (6, 3)),
        (nn.BatchNorm2d(3), tnn.BatchNorm2d(3), (2, 3, 4, 4)),
        (nn.MaxPool2d(3, 2, 1), tnn.MaxPool2d(3, 2, 1), (2, 3, 7, 7)),
        (nn.AdaptiveAvgPool2d(1), tnn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
        (nn.Flatten(), tnn.Flatten(), (2, 3, 2, 2)),
        (nn.ReLU(), tnn.ReLU(), (2, 3, 4)),
        (nn.Identity(), tnn.Identity(), (2, 3)),
    ]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layers_match_pytorch(xp, dtype, mode):
    torch = import_torch()
    rng = numpy.random.default_rng(0)
    for ours, theirs, shape in layer_pairs(torch):
        state = {k: v + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype) if v.dtype.kind == "f"
                 else v for k, v in ours.state_dict().items()}  # non-trivial BN statistics
        ours.load_state_dict(state)
        ours.to(device=device_of(xp), dtype=dtype).train(mode == "train")
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        theirs.to(getattr(torch, dtype)).train(mode == "train")
        x = randn(xp, *shape, dtype=dtype, requires_grad=True)
        x_torch = torch.tensor(x.numpy(), requires_grad=True)
        out, out_torch = ours(x), theirs(x_torch)
        upstream = rng.standard_normal(out.shape).astype(dtype)
        out.backward(xp.asarray(upstream))
        out_torch.backward(torch.from_numpy(upstream))
        name, tolerance = type(ours).__name__, PARITY_TOLERANCE[dtype]
        assert relative_error(out.data, out_torch.detach().numpy()) <= tolerance, name
        assert relative_error(x.grad, x_torch.grad.numpy()) <= tolerance, name
        their_parameters = dict(theirs.named_parameters())
        for key, p in ours.named_parameters():
            assert relative_error(p.grad, their_parameters[key].grad.numpy()) <= tolerance, key
        their_state = theirs.state_dict()
        for key, value in ours.state_dict().items():
            assert relative_error(value, their_state[key].numpy()) <= tolerance, (name, key)


def test_same_seed_gives_same_layer_weights_whatever_the_seed_form():
    a = nn.Conv2d(3, 4, 3, rng=7)
    b = nn.Conv2d(3, 4, 3, rng=numpy.random.default_rng(7))
    c = nn.Conv2d(3, 4, 3, rng=8)
    assert numpy.array_equal(a.weight.data, b.weight.data)
    assert numpy.array_equal(a.bias.data, b.bias.data)
    assert not numpy.array_equal(a.weight.data, c.weight.data)
    assert a.weight.dtype == numpy.float32
    expected = numpy.random.default_rng(7).normal(0, numpy.sqrt(2 / (4 * 9)), (4, 3, 3, 3))
    assert numpy.array_equal(a.weight.data, expected.astype("float32"))  # float64 draw, cast


def test_linear_init_is_uniform_within_one_over_sqrt_fan_in():
    layer = nn.Linear(400, 300, rng=0)
    bound = 1 / numpy.sqrt(400)
    for p in (layer.weight.data, layer.bias.data):
        assert numpy.abs(p).max() <= bound and numpy.abs(p).max() > 0.95 * bound
    assert abs(layer.weight.data.std() / (bound / numpy.sqrt(3)) - 1) < 0.02


def test_batch_norm_starts_with_unit_weight_and_zero_bias():
    bn = nn.BatchNorm2d(5)
    assert numpy.all(bn.weight.data == 1) and numpy.all(bn.bias.data == 0)
    assert numpy.all(bn.running_mean == 0) and numpy.all(bn.running_var == 1)


def test_init_functions_fill_in_place_on_the_parameters_device(xp):
    p = nn.Parameter(xp.zeros((64, 32, 3, 3), dtype="float32"))
    data = p.data
    nn.init.kaiming_normal_(p, mode="fan_in", rng=0)
    assert p.data is data and p.dtype == numpy.float32
    assert abs(float(p.data.std()) / numpy.sqrt(2 / (32 * 9)) - 1) < 0.02
    nn.init.normal_(p, std=0.01, rng=0)
    assert abs(float(p.data.std()) / 0.01 - 1) < 0.02
    with pytest.raises(ValueError, match="fan_sideways"):
        nn.init.kaiming_normal_(p, mode="fan_sideways")
    with pytest.raises(TypeError, match="rng"):
        nn.init.as_generator("seed")
