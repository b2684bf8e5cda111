"""Learning-rate schedule and batch-size scaling rules from SimCLR."""
import math
import numbers

from .optimizer import non_negative


class WarmupCosine:
    """Linear warm-up from 0, then cosine decay to 0; evaluated at every step (not every epoch).

    For step s = 0, 1, 2, ... (the global step, counted from 0 as in the official code),
    with W = warmup_steps and T = total_steps:

        s < W:       lr = base_lr * s / W                          (step 0 has lr 0)
        W <= s < T:  lr = base_lr * 0.5 * (1 + cos(pi * (s - W) / (T - W)))
        s >= T:      lr = 0                                        (the cosine held at its end)

    So step W is the first at the full base_lr, and the last training step, T - 1, has a small
    positive lr. With W = 0 there is no warm-up. Use: `optimizer.lr = schedule(step)` before
    each `optimizer.step()`.
    """

    def __init__(self, base_lr, warmup_steps, total_steps):
        self.base_lr = non_negative("base_lr", base_lr)
        self.warmup_steps = _count("warmup_steps", warmup_steps, minimum=0)
        self.total_steps = _count("total_steps", total_steps, minimum=1)
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed "
                             f"total_steps ({self.total_steps})")

    def __call__(self, step):
        step = _count("step", step, minimum=0)
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        if step >= self.total_steps:
            return 0.0
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * progress))

    def __repr__(self):
        return (f"WarmupCosine(base_lr={self.base_lr}, warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps})")


def linear_scaled_lr(base_lr, batch_size):
    """base_lr * batch_size / 256: the linear scaling rule (SimCLR: 0.3 * B / 256)."""
    return non_negative("base_lr", base_lr) * _count("batch_size", batch_size, minimum=1) / 256


def sqrt_scaled_lr(base_lr, batch_size):
    """base_lr * sqrt(batch_size): square-root scaling, better for small batches
    (SimCLR: 0.075 * sqrt(B))."""
    return non_negative("base_lr", base_lr) * math.sqrt(_count("batch_size", batch_size, minimum=1))


def _count(name, value, minimum):
    """`value` as an int; a TypeError or ValueError naming `name` unless an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
