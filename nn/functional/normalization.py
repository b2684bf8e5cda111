"""Normalisation: batch norm over the channels of a batch, and L2 normalisation of vectors.

Batch norm. For x (N, C, *), per channel c, over the n = x.size / C values of that channel:

    mu = mean(x),  var = mean((x - mu)^2)  (biased),  sigma = sqrt(var + eps)
    x_hat = (x - mu) / sigma,  y = gamma x_hat + beta      [then + residual, then ReLU]

In training mode mu and var are the batch's own, so they depend on x, and with g = dL/dy
(masked by the ReLU's derivative where there is one; the residual's gradient is that g):

    dbeta = sum(g),  dgamma = sum(g x_hat),
    dx = gamma / (n sigma) * (n g - sum(g) - x_hat * sum(g x_hat))

In evaluation mode mu and var are the running statistics, constants: dx = gamma g / sigma.

Which implementation runs (`implementation`, nn/functional/dispatch.py): BatchNormReference,
below, the formulas above as written, inside use_reference(); otherwise the kernel of the
input's device: cpu/batch_norm.py's, which does the forward and the backward above in two
passes over memory each, in cache-sized blocks, with float32 as accurate as PyTorch's, or
cuda/batch_norm.py's, three launches each way. batch_norm_reference, below, writes the same
forward with Tensor ops and lets the engine derive the backward op by op: the tests hold the
hand-written backward to it, and the kernels to BatchNormReference.
"""
from autograd import Function, Tensor, array_module

from .cpu.batch_norm import BatchNormBlocked
from .cuda.batch_norm import BatchNormCuda
from .dispatch import on_gpu, reference, reference_chosen


class BatchNormReference(Function):
    """batch norm (+ residual, + ReLU) of x (N, C, *) by the formulas of the module docstring,
    in NCHW order; mu and var are taken over every axis but 1, n values per channel.

    Training mode (use_batch_stats): mu and the biased var are the batch's, and the running
    statistics (if any) are updated from the batch's moments in float64, as the kernels do.
    Evaluation mode: mu and var are running_mean and running_var, constants."""

    @staticmethod
    def forward(ctx, x, weight, bias, *residual, running_mean, running_var, use_batch_stats,
                momentum, eps, relu=False, group=None):
        xp = array_module(x)
        axes = (0,) + tuple(range(2, x.ndim))                        # every axis but C
        per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)          # broadcasts over N, H, W
        if use_batch_stats:
            mean = x.mean(axis=axes, keepdims=True)
            centered = x - mean
            var = (centered * centered).mean(axis=axes, keepdims=True)   # biased
            if running_mean is not None:
                _update_running_stats(x, running_mean, running_var, momentum)
        else:
            mean = running_mean.reshape(per_channel).astype(x.dtype)
            var = running_var.reshape(per_channel).astype(x.dtype)
            centered = x - mean
        sigma = xp.sqrt(var + eps)                                   # (1, C, 1, 1)
        x_hat = centered / sigma
        out = x_hat * weight.reshape(per_channel) + bias.reshape(per_channel)
        if residual:
            out = out + residual[0]
        if relu:
            out = xp.maximum(out, 0)
        ctx.axes, ctx.use_batch_stats, ctx.relu = axes, use_batch_stats, relu
        ctx.save_for_backward(x_hat, sigma, weight.reshape(per_channel), out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        # course: begin batch-norm-backward
        x_hat, sigma, gamma, out = ctx.saved
        if ctx.relu:
            grad = grad * (out > 0)                       # the ReLU's derivative: g, masked
        n = grad.size // grad.shape[1]                    # values per channel
        sum_g = grad.sum(axis=ctx.axes, keepdims=True)
        sum_g_x_hat = (grad * x_hat).sum(axis=ctx.axes, keepdims=True)
        if ctx.use_batch_stats:    # dx = gamma / (n sigma) (n g - sum(g) - x_hat sum(g x_hat))
            grad_x = gamma / (n * sigma) * (n * grad - sum_g - x_hat * sum_g_x_hat)
        else:                      # mu and sigma are constants: dx = gamma g / sigma
            grad_x = gamma / sigma * grad
        grads = (grad_x, sum_g_x_hat.reshape(-1), sum_g.reshape(-1))   # dx, dgamma, dbeta
        if len(ctx.needs_input_grad) == 4:
            grads += (grad,)                              # the residual's: the masked g
        return grads
        # course: end batch-norm-backward


def _update_running_stats(x, running_mean, running_var, momentum):
    """In place, as PyTorch: running = (1 - momentum) running + momentum batch, with the
    batch's moments taken in float64 and its variance unbiased (times n / (n - 1))."""
    xp = array_module(x)
    rows = xp.moveaxis(x, 1, -1).reshape(-1, x.shape[1]).astype(xp.float64)   # (n, C)
    n = rows.shape[0]
    running_mean *= 1 - momentum
    running_mean += momentum * rows.mean(axis=0)
    running_var *= 1 - momentum
    running_var += (momentum * n / (n - 1)) * rows.var(axis=0)


def batch_norm_reference(x, weight, bias, eps=1e-5, residual=None, relu=False, mean=None,
                         var=None):
    """Batch norm (+ residual, + ReLU) written with plain Tensor ops, the way the formula
    reads; the engine differentiates it op by op. What the tests hold BatchNormReference's
    hand-written backward to.

    x (N, C, *), weight and bias (C,) Tensors -> relu?(weight * (x - mu) / sqrt(var + eps)
    + bias + residual?), mu and the biased var taken over every axis but 1 (training mode),
    or given as constant arrays mean and var (C,) (evaluation mode)."""
    from .activation import relu as relu_op
    axes = (0,) + tuple(range(2, x.ndim))
    per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)          # broadcasts over N, H, W
    if mean is None:
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)
    else:
        mean, var = (Tensor(v.reshape(per_channel).astype(x.dtype)) for v in (mean, var))
        centered = x - mean
    y = centered / (var + eps).sqrt() * weight.reshape(*per_channel) + bias.reshape(*per_channel)
    if residual is not None:
        y = y + residual
    return relu_op(y) if relu else y


def implementation(x):
    """The Function that computes batch norm of x (see the module docstring)."""
    if reference_chosen():
        return reference("batch_norm", BatchNormReference)
    if on_gpu(x):
        return BatchNormCuda
    return BatchNormBlocked


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, residual=None, relu=False, group=None):
    """Batch normalisation, as torch.nn.functional.batch_norm.

    y = weight * (x - mean) / sqrt(var + eps) + bias, per channel, for x of shape (N, C) or
    (N, C, H, W) (any (N, C, *) works): statistics are taken over every axis but axis 1.

    training=True: normalise with the batch mean and biased variance, and update the running
    statistics in place, as PyTorch: running = (1 - momentum) * running + momentum * batch,
    with the unbiased batch variance (times n / (n - 1)) for running_var.
    training=False: normalise with running_mean and running_var.
    running_mean, running_var: plain arrays (C,) (not Tensors), or both None to always use
    the batch statistics (as a BatchNorm layer with track_running_stats=False).
    weight, bias: Tensors (C,), or None for 1 and 0.
    residual, relu: not in PyTorch's batch_norm; they fuse what follows batch norm in a ResNet:
    the result is relu(y + residual) (relu=True, residual a Tensor of x's shape), relu(y) or
    y + residual, computed in the same passes over memory as y itself.
    group: a communicator (nn/distributed/comm.py) of a data-parallel run: in training, mean
    and variance are the global batch's, over every rank's x (one collective forward, one
    backward), as every rank's running statistics; weight's and bias's gradients are this
    rank's share, which nn.distributed.average_gradients adds up.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm: x is a {type(x).__name__}, expected a Tensor")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input has shape {x.shape}, expected (N, C) or "
                         f"(N, C, H, W)")
    _check_running_stats(x, running_mean, running_var)
    use_batch_stats = training or running_mean is None
    if use_batch_stats and x.size // x.shape[1] <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {x.shape}")
    tensors = _affine_and_residual(x, weight, bias, residual)
    group = group if group is not None and group.size > 1 else None
    if group is not None and reference_chosen():
        raise ValueError("batch_norm: the reference implementation (use_reference()) "
                         "takes one process's batch; it has no global statistics (group)")
    return implementation(x).apply(x, *tensors, running_mean=running_mean,
                                   running_var=running_var, use_batch_stats=use_batch_stats,
                                   momentum=momentum, eps=eps, relu=bool(relu), group=group)


def _check_running_stats(x, running_mean, running_var):
    """Both statistics or neither, each a plain (C,) array on x's device."""
    channels = x.shape[1]
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: pass both running_mean and running_var, or neither")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is None:
            continue
        if isinstance(stat, Tensor) or not hasattr(stat, "shape"):
            raise TypeError(f"batch_norm: {name} is a {type(stat).__name__}, expected a plain "
                            f"array (numpy or cupy), which is updated in place in training")
        if stat.shape != (channels,):
            raise ValueError(f"batch_norm: {name} has shape {stat.shape}, expected ({channels},) "
                             f"for input of shape {x.shape} ({channels} channels)")
        array_module(x.data, stat)  # raises a clear error if x and the statistic are on two devices


def _affine_and_residual(x, weight, bias, residual):
    """[weight, bias] (ones and zeros where None), then the residual if there is one: checked
    Tensors of x's channels (and x's shape) and dtype."""
    channels = x.shape[1]
    tensors = []
    for name, value, default in (("weight", weight, 1), ("bias", bias, 0)):
        if value is None:
            value = Tensor(x.xp.full((channels,), default, dtype=x.dtype))
        elif not isinstance(value, Tensor):
            raise TypeError(f"batch_norm: {name} is a {type(value).__name__}, expected a Tensor")
        elif value.shape != (channels,):
            raise ValueError(f"batch_norm: {name} has shape {value.shape}, expected "
                             f"({channels},) for input of shape {x.shape}")
        elif value.dtype != x.dtype:
            raise TypeError(f"batch_norm: {name} has dtype {value.dtype} but the input has "
                            f"{x.dtype}; convert one so that both have the same precision")
        tensors.append(value)
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"batch_norm: residual is a {type(residual).__name__}, expected a "
                            f"Tensor")
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"batch_norm: residual has shape {residual.shape} and dtype "
                             f"{residual.dtype}, expected the input's {x.shape} and {x.dtype}")
        tensors.append(residual)
    return tensors


class Normalize(Function):
    """y = x / max(||x||, eps), the L2 norm taken along `dim`.

    Where ||x|| >= eps, y = x / ||x|| and dx = (g - y * sum(g * y)) / ||x|| (the component of g
    along y is removed: scaling x does not change y). Where ||x|| < eps the divisor is the
    constant eps and dx = g / eps.
    """

    @staticmethod
    def forward(ctx, x, dim, eps):
        xp = array_module(x)
        norm = xp.sqrt((x * x).sum(axis=dim, keepdims=True))  # (..., 1, ...): dim kept as 1
        divisor = xp.maximum(norm, eps)
        out = x / divisor
        ctx.dim = dim
        ctx.save_for_backward(out, divisor, norm >= eps)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, divisor, scaled_by_norm = ctx.saved
        along_out = (grad * out).sum(axis=ctx.dim, keepdims=True) * scaled_by_norm
        return (grad - out * along_out) / divisor


def normalize(x, p=2.0, dim=1, eps=1e-12):
    """x / max(||x||_2, eps) along `dim`, as torch.nn.functional.normalize (only p = 2).

    x: any shape with at least one axis; the output has x's shape, unit L2 norm along dim.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"normalize: x is a {type(x).__name__}, expected a Tensor")
    if p != 2:
        raise ValueError(f"normalize: p={p!r} is not supported; only the L2 norm (p=2)")
    if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"normalize: dim={dim!r} is out of range for input of shape {x.shape}")
    return Normalize.apply(x, dim=dim, eps=eps)
