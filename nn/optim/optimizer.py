"""The optimiser base class: which parameters, zero_grad, and the state a checkpoint saves."""
import math
import numbers

import numpy

from autograd.backend import array_module, to_numpy
from nn.runtime.threads import map_ranges


class Optimizer:
    """Updates parameters in place from their `.grad`; subclasses write `update(index)`, the
    step of one parameter.

    params  an iterable of parameters (tensors with `.data` and `.grad`, as from
            `module.parameters()`), or of (name, parameter) pairs (`module.named_parameters()`)
    lr      the learning rate; a plain attribute that a schedule sets before every step

    State: one momentum buffer per parameter (an array of the parameter's shape, dtype and device,
    made at its first step), kept in `momentum_buffers[i]` for the i-th parameter. The
    hyper-parameters a checkpoint must restore are named in the class's `hyperparameters`.
    """

    hyperparameters = ("lr",)

    def __init__(self, params, lr):
        self.names, self.params = _names_and_parameters(params)
        self.lr = lr
        self.momentum_buffers = [None] * len(self.params)

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = non_negative("lr", value)

    def step(self):
        """Update every parameter that has a gradient, in place on its array."""
        updated = [index for index, param in enumerate(self.params) if param.grad is not None]
        if not updated:
            return
        # the parameters are independent (separate arrays: a list with one twice is refused):
        # threads take them one at a time, largest first, so that the big ones start early
        # (nn/runtime/threads.py; on the GPU, one after another)
        updated.sort(key=lambda index: -self.params[index].data.size)
        map_ranges(lambda index, _: self.update(index),
                   [(index, index + 1) for index in updated],
                   sum(self.params[index].data.nbytes for index in updated),
                   self.params[updated[0]].data)

    def update(self, index):
        """Update parameter `index` (which has a gradient) in place; subclasses write this."""
        raise NotImplementedError(f"{type(self).__name__} does not define update()")

    def zero_grad(self):
        """Forget every gradient (set `.grad` to None), so the next backward() starts afresh."""
        for param in self.params:
            param.grad = None

    def state_dict(self):
        """Everything needed to continue training exactly: host NumPy copies, no aliasing.

        {"optimizer": class name, "hyperparameters": {name: value},
         "parameter_shapes": [shape per parameter], "momentum_buffers": {index: numpy array}}
        (a parameter that has not taken a step yet has no buffer).
        """
        return {
            "optimizer": type(self).__name__,
            "hyperparameters": {name: getattr(self, name) for name in self.hyperparameters},
            "parameter_shapes": [tuple(param.data.shape) for param in self.params],
            "momentum_buffers": {index: numpy.array(to_numpy(buffer))
                                 for index, buffer in enumerate(self.momentum_buffers)
                                 if buffer is not None},
        }

    def load_state_dict(self, state):
        """Restore what `state_dict()` returned, copied onto each parameter's device and dtype.

        Raises ValueError, before changing anything, when the state belongs to another optimiser
        class or to another set of parameters (a different count or shape).
        """
        expected_keys = {"optimizer", "hyperparameters", "parameter_shapes", "momentum_buffers"}
        if not isinstance(state, dict) or set(state) != expected_keys:
            received = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"an optimizer state must be a dict with keys "
                             f"{sorted(expected_keys)}, got {received}")
        if state["optimizer"] != type(self).__name__:
            raise ValueError(f"the state was saved by a {state['optimizer']} optimizer, "
                             f"it cannot be loaded into {type(self).__name__}")
        if set(state["hyperparameters"]) != set(self.hyperparameters):
            raise ValueError(f"the state has hyper-parameters {sorted(state['hyperparameters'])}, "
                             f"{type(self).__name__} expects {sorted(self.hyperparameters)}")
        saved_shapes = [tuple(shape) for shape in state["parameter_shapes"]]
        if len(saved_shapes) != len(self.params):
            raise ValueError(f"the state was saved for {len(saved_shapes)} parameters, "
                             f"this optimizer has {len(self.params)}")
        for index, (saved, param) in enumerate(zip(saved_shapes, self.params)):
            if saved != param.data.shape:
                raise ValueError(f"parameter {index} ({self.names[index]}) has shape "
                                 f"{param.data.shape}, the state was saved for shape {saved}")
        buffers = [None] * len(self.params)
        for key, saved_buffer in state["momentum_buffers"].items():
            index = int(key)  # keys may come back as strings from a checkpoint file
            if not 0 <= index < len(self.params):
                raise ValueError(f"the state has a momentum buffer for parameter {index}, "
                                 f"this optimizer has parameters 0 to {len(self.params) - 1}")
            param = self.params[index]
            if tuple(saved_buffer.shape) != param.data.shape:
                raise ValueError(f"the momentum buffer of parameter {index} has shape "
                                 f"{tuple(saved_buffer.shape)}, the parameter {param.data.shape}")
            # a copy: later in-place steps must not write into the caller's state
            buffers[index] = array_module(param.data).array(saved_buffer, dtype=param.data.dtype)
        for name, value in state["hyperparameters"].items():
            setattr(self, name, value)
        self.momentum_buffers = buffers


def non_negative(name, value):
    """`value` as a float, or a ValueError/TypeError naming `name` if it is not finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def _names_and_parameters(params):
    """Split parameters, or (name, parameter) pairs, into a list of names and one of parameters.

    Names are None when plain parameters are given."""
    if hasattr(params, "data"):
        raise TypeError(f"params must be an iterable of parameters, got a single "
                        f"{type(params).__name__}; wrap it in a list: [param]")
    items = list(params)
    if not items:
        raise ValueError("the optimizer received an empty list of parameters")
    if all(isinstance(item, tuple) and len(item) == 2 for item in items):
        names, parameters = [name for name, _ in items], [param for _, param in items]
    else:
        names, parameters = [None] * len(items), items
    for index, param in enumerate(parameters):
        if not (hasattr(param, "data") and hasattr(param, "grad")):
            raise TypeError(f"parameter {index} is a {type(param).__name__}; expected a tensor "
                            f"with .data and .grad (or a (name, tensor) pair)")
        if param.data.dtype.kind != "f":
            raise TypeError(f"parameter {index} ({names[index]}) has dtype {param.data.dtype}; "
                            f"only floating-point parameters can be optimised")
    if len({id(param) for param in parameters}) != len(parameters):
        raise ValueError("the same parameter appears more than once in the optimizer's list")
    return names, parameters
