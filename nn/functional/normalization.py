"""Normalisation: batch norm over the channels of a batch, and L2 normalisation of vectors."""
from autograd import Function, Tensor, array_module


class BatchNorm(Function):
    """y = gamma * x_hat + beta with x_hat = (x - mu) / sqrt(var + eps), per channel c.

    x is (N, C, *); mu and var are taken over every axis but the channel axis 1, of
    n = x.size / C values each. In training mode they are the batch's own mean and biased
    variance, so they depend on x and the input gradient has three terms:

        dx = gamma / (n sigma) * (n g - sum(g) - x_hat * sum(g * x_hat)),  sigma = sqrt(var + eps)

    (sums per channel). In evaluation mode they are constants and dx = gamma g / sigma.
    Either way dgamma = sum(g * x_hat) and dbeta = sum(g).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum,
                eps):
        xp = array_module(x)
        axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channels
        channel_shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, ...)
        if use_batch_stats:
            mean = x.mean(axis=axes, keepdims=True)  # (1, C, 1, ...)
            centered = x - mean
            var = (centered * centered).mean(axis=axes, keepdims=True)  # biased: / n
            if running_mean is not None:
                n = x.size // x.shape[1]
                running_mean *= 1 - momentum
                running_mean += momentum * mean.reshape(-1)
                running_var *= 1 - momentum
                running_var += (momentum * n / (n - 1)) * var.reshape(-1)  # unbiased: / (n - 1)
        else:
            mean = running_mean.astype(x.dtype, copy=False).reshape(channel_shape)
            centered = x - mean
            var = running_var.astype(x.dtype, copy=False).reshape(channel_shape)
        inv_std = 1 / xp.sqrt(var + eps)  # (1, C, 1, ...)
        x_hat = centered * inv_std
        gamma = weight.reshape(channel_shape)
        ctx.axes, ctx.use_batch_stats = axes, use_batch_stats
        ctx.save_for_backward(x_hat, inv_std, gamma)
        return x_hat * gamma + bias.reshape(channel_shape)

    @staticmethod
    def backward(ctx, grad):
        x_hat, inv_std, gamma = ctx.saved
        axes = ctx.axes
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        batch_stats_x = needs_x and ctx.use_batch_stats
        grad_x = grad_weight = grad_bias = None
        if batch_stats_x or needs_bias:
            sum_grad = grad.sum(axis=axes, keepdims=True)  # (1, C, 1, ...)
            grad_bias = sum_grad.reshape(-1) if needs_bias else None
        if batch_stats_x or needs_weight:
            sum_grad_x_hat = (grad * x_hat).sum(axis=axes, keepdims=True)  # (1, C, 1, ...)
            grad_weight = sum_grad_x_hat.reshape(-1) if needs_weight else None
        if batch_stats_x:
            n = grad.size // grad.shape[1]
            grad_x = (gamma * inv_std / n) * (n * grad - sum_grad - x_hat * sum_grad_x_hat)
        elif needs_x:
            grad_x = grad * (gamma * inv_std)
        return grad_x, grad_weight, grad_bias


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
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
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm: x is a {type(x).__name__}, expected a Tensor")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input has shape {x.shape}, expected (N, C) or "
                         f"(N, C, H, W)")
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
    use_batch_stats = training or running_mean is None
    if use_batch_stats and x.size // channels <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {x.shape}")
    affine = []
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
        affine.append(value)
    return BatchNorm.apply(x, *affine, running_mean=running_mean, running_var=running_var,
                           use_batch_stats=use_batch_stats, momentum=momentum, eps=eps)


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
