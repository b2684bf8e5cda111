"""`Parameter` and `Module`: the containers that every layer and model is built from.

A module owns three kinds of state, each registered by name so that the whole model can be
listed, saved, loaded, moved and switched between training and evaluation:

    parameters   Parameter tensors that the optimiser updates (conv weights, BN gamma/beta)
    buffers      plain arrays that are state but not trained (BN running_mean, running_var,
                 num_batches_tracked)
    submodules   child Modules, whose state is listed under "child_name.<their names>"

Parameters and submodules register themselves on attribute assignment (`self.conv1 = ...`);
buffers through `register_buffer`. Names and their order follow PyTorch (parameters, then
buffers, of each module before its children), so a state_dict moves to PyTorch by name.
"""
from collections import OrderedDict, namedtuple

import numpy

from autograd import Tensor
from autograd.backend import device_of, to_device, to_numpy

FLOAT_DTYPES = (numpy.dtype("float32"), numpy.dtype("float64"))

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A leaf Tensor that requires a gradient: the trainable state of a module.

    Its `.grad` is a plain array (numpy or cupy) of the same shape, filled by backward().
    """

    def __init__(self, data):
        super().__init__(data, requires_grad=True)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device='{self.device}')"


class Module:
    """Base class of every layer and model. Subclasses set attributes in __init__ and define
    `forward(*inputs)`; calling the module runs forward."""

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these dicts to exist already.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ----- registration -----------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before "
                               f"assigning attribute {name!r}")
        registries = (self._parameters, self._buffers, self._modules)
        if isinstance(value, Parameter):
            target = self._parameters
        elif isinstance(value, Module):
            target = self._modules
        elif name in self._buffers:
            target = self._buffers  # e.g. replacing a running statistic with a new array
        elif value is None and (name in self._parameters or name in self._modules):
            self._parameters.pop(name, None)  # removing a parameter, as `self.bias = None`
            self._modules.pop(name, None)
            object.__setattr__(self, name, None)
            return
        elif name in self._parameters or name in self._modules:
            raise TypeError(f"cannot assign a {type(value).__name__} to {name!r}, which is a "
                            f"registered {'parameter' if name in self._parameters else 'module'};"
                            f" expected a Parameter or a Module")
        else:
            object.__setattr__(self, name, value)
            return
        for registry in registries:
            if registry is not target:
                registry.pop(name, None)
        self.__dict__.pop(name, None)
        target[name] = value

    def __getattr__(self, name):
        # Called only when normal lookup fails, i.e. for registered names.
        for registry in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(registry)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """Register `array` (numpy or cupy) as non-trainable state, saved in the state_dict."""
        if not hasattr(array, "shape") or isinstance(array, Tensor):
            raise TypeError(f"buffer {name!r} must be a numpy or cupy array, "
                            f"got a {type(array).__name__}")
        if name in self._parameters or name in self._modules:
            raise KeyError(f"{name!r} is already a parameter or a submodule")
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    # ----- listing state ----------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(qualified name, module) for this module ("" by default) and every descendant."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(prefix + "." + name if prefix else name)

    def modules(self):
        return (module for _, module in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def _named_members(self, registry_name):
        seen = set()
        for prefix, module in self.named_modules():
            for name, value in getattr(module, registry_name).items():
                if id(value) in seen:  # a shared parameter is listed once
                    continue
                seen.add(id(value))
                yield (prefix + "." + name if prefix else name), value

    def named_parameters(self):
        """(qualified name, Parameter), e.g. ("layer1.0.conv1.weight", ...), in torch's order."""
        return self._named_members("_parameters")

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self):
        """(qualified name, array), e.g. ("bn1.running_mean", ...)."""
        return self._named_members("_buffers")

    def buffers(self):
        return (b for _, b in self.named_buffers())

    # ----- saving and loading -------------------------------------------------------------
    def _state_entries(self):
        """(qualified name, module, local name, kind) for every parameter and buffer, in the
        order of torch's state_dict: each module's parameters, then its buffers, then its
        children's."""
        for prefix, module in self.named_modules():
            dot = prefix + "." if prefix else ""
            for name in module._parameters:
                yield dot + name, module, name, "parameter"
            for name in module._buffers:
                yield dot + name, module, name, "buffer"

    def state_dict(self):
        """OrderedDict name -> NumPy array: host copies of every parameter and buffer."""
        state = OrderedDict()
        for key, module, name, kind in self._state_entries():
            value = module._parameters[name].data if kind == "parameter" else module._buffers[name]
            state[key] = numpy.array(to_numpy(value))  # a copy: later training must not alter it
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy the arrays of `state_dict` (name -> numpy array or anything numpy.asarray takes)
        into this module's parameters and buffers, in place: each keeps its device and dtype.

        Nothing is copied unless every key fits. A value whose shape differs is always an error;
        with strict=True, keys missing from `state_dict` and keys this module does not have are
        errors too. All problems are reported in one ValueError. Returns
        IncompatibleKeys(missing_keys, unexpected_keys).
        """
        targets = OrderedDict()
        for key, module, name, kind in self._state_entries():
            targets[key] = module._parameters[name].data if kind == "parameter" \
                else module._buffers[name]
        missing = [key for key in targets if key not in state_dict]
        unexpected = [key for key in state_dict if key not in targets]
        values, mis_shaped = {}, []
        for key, target in targets.items():
            if key not in state_dict:
                continue
            values[key] = numpy.asarray(to_numpy(state_dict[key]))
            if values[key].shape != target.shape:
                mis_shaped.append(f"{key}: expected shape {tuple(target.shape)}, "
                                  f"got {tuple(values[key].shape)}")
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mis_shaped:
            problems.append(f"mis-shaped keys ({len(mis_shaped)}): {'; '.join(mis_shaped)}")
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed:\n  "
                             + "\n  ".join(problems))
        for key, value in values.items():
            target = targets[key]
            target[...] = to_device(value.astype(target.dtype, copy=False), device_of(target))
        return IncompatibleKeys(missing, unexpected)

    # ----- modes, gradients, devices ------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (batch statistics in batch norm) here and in every descendant."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        """Set evaluation mode (running statistics in batch norm) everywhere; returns self."""
        return self.train(False)

    def zero_grad(self):
        """Forget every parameter's gradient (set to None; the next backward starts afresh)."""
        for p in self.parameters():
            p.grad = None

    def to(self, device=None, dtype=None):
        """Move every parameter, gradient and buffer to `device` ("cpu" or "cuda") and/or cast
        floating-point ones to `dtype` (float32 or float64), in place; returns self.

        Parameters stay the same objects (an optimiser holding them keeps working); integer
        buffers such as num_batches_tracked keep their dtype.
        """
        if device not in (None, "cpu", "cuda"):
            raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
        if dtype is not None:
            dtype = numpy.dtype(dtype)
            if dtype not in FLOAT_DTYPES:
                raise TypeError(f"Module.to: dtype must be float32 or float64, got {dtype}")

        def convert(array):
            if device is not None:
                array = to_device(array, device)
            if dtype is not None and array.dtype.kind == "f":
                array = array.astype(dtype, copy=False)
            return array

        for module in self.modules():
            for p in module._parameters.values():
                p.data = convert(p.data)
                if p.grad is not None:
                    p.grad = convert(p.grad)
            for name, buffer in module._buffers.items():
                module._buffers[name] = convert(buffer)
        return self

    # ----- running ----------------------------------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    def extra_repr(self):
        """The settings shown inside this module's parentheses in repr()."""
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ")
                 for name, child in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        head = self.extra_repr()
        body = "\n  ".join(([head] if head else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"

