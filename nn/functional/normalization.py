"""Normalisation: batch norm over the channels of a batch, and L2 normalisation of vectors."""
from autograd import Function, Tensor, array_module


def channel_rows(x):
    """x (N, C, *) as a 2-D (M, C) array, M = x.size / C, one row per value of each channel.

    A free view when x has channels-last strides (the output of conv2d), else one copy."""
    xp = array_module(x)
    moved = xp.moveaxis(x, 1, -1)                       # (N, *, C)
    return xp.ascontiguousarray(moved).reshape(-1, x.shape[1])


def from_channel_rows(rows, shape):
    """The inverse of channel_rows: (M, C) -> an (N, C, *) view with channels-last strides."""
    xp = array_module(rows)
    return xp.moveaxis(rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


class BatchNorm(Function):
    """y = gamma * x_hat + beta with x_hat = (x - mu) / sqrt(var + eps), per channel c.

    x is (N, C, *); mu and var are taken over every axis but the channel axis 1, of
    n = x.size / C values each. In training mode they are the batch's own mean and biased
    variance, so they depend on x and the input gradient has three terms:

        dx = gamma / (n sigma) * (n g - sum(g) - x_hat * sum(g * x_hat)),  sigma = sqrt(var + eps)

    (sums per channel). In evaluation mode they are constants and dx = gamma g / sigma.
    Either way dgamma = sum(g * x_hat) and dbeta = sum(g).

    The arrays are worked on as (n, C) matrices (channel_rows), which are free views of
    channels-last conv outputs, and few passes are made over them: forward computes
    y = x * scale + shift with per-channel scale = gamma / sigma, shift = beta - mu * scale,
    and saves x itself (which the graph keeps anyway) rather than x_hat; backward uses
    sum(g * x_hat) = (sum(g * x) - mu sum(g)) / sigma and writes dx = a g + b x + c.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum,
                eps):
        xp = array_module(x)
        rows = channel_rows(x)                                 # (n, C)
        n = rows.shape[0]
        if use_batch_stats:
            mean = rows.mean(axis=0)                           # (C,)
            centered = rows - mean                             # (n, C)
            var = xp.einsum("nc,nc->c", centered, centered) / n   # biased: / n
            if running_mean is not None:
                running_mean *= 1 - momentum
                running_mean += momentum * mean
                running_var *= 1 - momentum
                running_var += (momentum * n / (n - 1)) * var  # unbiased: / (n - 1)
        else:
            mean = running_mean.astype(x.dtype, copy=False)
            var = running_var.astype(x.dtype, copy=False)
        inv_std = 1 / xp.sqrt(var + eps)                       # (C,)
        scale = weight * inv_std
        if use_batch_stats:
            out = centered
            out *= scale
            out += bias
        else:
            out = rows * scale
            out += bias - mean * scale
        ctx.use_batch_stats, ctx.shape = use_batch_stats, x.shape
        ctx.save_for_backward(rows, mean, inv_std, weight)
        return from_channel_rows(out, x.shape)

    @staticmethod
    def backward(ctx, grad):
        rows, mean, inv_std, gamma = ctx.saved
        xp = array_module(grad)
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        g = channel_rows(grad)                                 # (n, C)
        n = g.shape[0]
        sum_g = g.sum(axis=0)                                  # (C,)
        sum_g_x_hat = (xp.einsum("nc,nc->c", g, rows) - mean * sum_g) * inv_std
        grad_x = None
        if needs_x:
            a = gamma * inv_std
            grad_rows = g * a
            if ctx.use_batch_stats:
                b = -a * inv_std * sum_g_x_hat / n             # the x_hat * sum(g x_hat) term
                c = -a * sum_g / n - mean * b                  # the sum(g) term, and b's -mu
                grad_rows += rows * b
                grad_rows += c
            grad_x = from_channel_rows(grad_rows, ctx.shape)
        return (grad_x, sum_g_x_hat if needs_weight else None, sum_g if needs_bias else None)


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
