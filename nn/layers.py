"""Layers: Modules that hold parameters (and buffers) and call one functional op each.

Every layer with weights takes `rng` (None, an int seed or a numpy.random.Generator) and
draws its initial values from it on the host in float64; they are stored as float32 on the
CPU. Use `module.to(device=..., dtype=...)` to move or convert a built model.
"""
import math

import numpy

from . import functional as F
from . import init
from .functional.windows import pair
from .module import Module, Parameter


def _zero_parameter(*shape):
    """A float32 Parameter of zeros on the host, for an init function to fill."""
    return Parameter(numpy.zeros(shape, dtype="float32"))


class Linear(Module):
    """y = x W^T + b; x (N, in_features) -> y (N, out_features).

    W (out, in) and b (out,) start as U(-1/sqrt(in), 1/sqrt(in)), torch's default."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        rng = init.as_generator(rng)
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = init.uniform_(_zero_parameter(out_features, in_features), -bound, bound, rng)
        self.bias = None
        if bias:
            self.bias = init.uniform_(_zero_parameter(out_features), -bound, bound, rng)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Conv2d(Module):
    """2-D cross-correlation: x (N, C_in, H, W) -> (N, C_out, H_out, W_out) with
    H_out = (H + 2 * padding - kernel) // stride + 1.

    The weight (C_out, C_in, kh, kw) starts Kaiming normal (fan_out, ReLU), as torchvision's
    ResNet sets it (torch's own Conv2d default is a uniform draw instead); a bias, if any,
    starts U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 rng=None):
        super().__init__()
        rng = init.as_generator(rng)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size", 1)
        self.stride = pair(stride, "Conv2d: stride", 1)
        self.padding = pair(padding, "Conv2d: padding", 0)
        weight = _zero_parameter(out_channels, in_channels, *self.kernel_size)
        self.weight = init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu", rng=rng)
        self.bias = None
        if bias:
            bound = 1 / math.sqrt(init.fan_in_and_fan_out(weight.shape)[0])
            self.bias = init.uniform_(_zero_parameter(out_channels), -bound, bound, rng)

    def forward(self, x):  # F.conv2d checks the shapes
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class _BatchNorm(Module):
    """Batch normalisation over the channels (axis 1); see nn.functional.batch_norm.

    Training mode normalises with the batch's statistics and updates running_mean and
    running_var (running = (1 - momentum) * running + momentum * batch) and counts the
    batches in num_batches_tracked; evaluation mode normalises with the running statistics.
    """

    dims, layout = (), ""  # the accepted numbers of axes, and their names for error messages

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine = affine
        if affine:
            self.weight = init.ones_(_zero_parameter(num_features))
            self.bias = init.zeros_(_zero_parameter(num_features))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", numpy.zeros(num_features, dtype="float32"))
        self.register_buffer("running_var", numpy.ones(num_features, dtype="float32"))
        self.register_buffer("num_batches_tracked", numpy.zeros((), dtype="int64"))
        self.group = None  # a data-parallel run's communicator: global statistics in training

    def forward(self, x, residual=None, relu=False):
        """bn(x), or relu(bn(x) + residual) and its parts in one fused op (see F.batch_norm)."""
        if x.ndim not in self.dims:
            raise ValueError(f"{type(self).__name__}: expected input of shape {self.layout}, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels "
                             f"(axis 1), got input of shape {tuple(x.shape)}")
        if self.training:
            self.num_batches_tracked += 1  # in place: the 0-d int64 buffer stays the same array
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=self.training, momentum=self.momentum, eps=self.eps,
                            residual=residual, relu=relu,
                            group=self.group if self.training else None)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}")


def synchronize_batch_norm(model, group):
    """Make every batch-norm layer of `model` take its statistics over the global batch of
    `group` (a communicator of nn.distributed) in training mode (None: each rank's own batch
    again). Returns the number of layers."""
    layers = [module for module in model.modules() if isinstance(module, _BatchNorm)]
    for layer in layers:
        layer.group = group
    return len(layers)


class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, C) or (N, C, L) inputs (e.g. inside a projection head)."""

    dims, layout = (2, 3), "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm of images (N, C, H, W), statistics per channel over N, H and W."""

    dims, layout = (4,), "(N, C, H, W)"


class ReLU(Module):
    """max(x, 0) elementwise."""

    def forward(self, x):
        return F.relu(x)


class MaxPool2d(Module):
    """The maximum over each kernel_size window, moving by stride (kernel_size when None);
    padding counts as -infinity. (N, C, H, W) -> (N, C, H_out, W_out)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """The mean over each image: (N, C, H, W) -> (N, C, 1, 1) (only output_size 1)."""

    def __init__(self, output_size=1):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Flatten(Module):
    """Merge the axes start_dim..end_dim into one: (N, C, 1, 1) -> (N, C) by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        start, end = self.start_dim % x.ndim, self.end_dim % x.ndim
        merged = math.prod(x.shape[start:end + 1])
        return x.reshape(x.shape[:start] + (merged,) + x.shape[end + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input unchanged (a placeholder, e.g. the CIFAR stem's missing max-pool)."""

    def forward(self, x):
        return x


class Sequential(Module):
    """Modules applied one after the other; children are named "0", "1", ... as in torch."""

    def __init__(self, *modules):
        super().__init__()
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential: argument {index} is a {type(module).__name__}, "
                                f"expected a Module")
            setattr(self, str(index), module)

    def __getitem__(self, index):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*items[index])
        return items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x
