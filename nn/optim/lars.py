"""LARS: layer-wise adaptive rate scaling, as the official SimCLR lars_optimizer.py computes it."""
from autograd.backend import array_module, device_of

from .lars_cuda import lars_step
from .optimizer import Optimizer, non_negative


def trust_ratio(weight, grad, eta):
    """eta * ||weight|| / ||grad||, or 1 when either norm is 0; a 0-d array of weight's dtype.

    The norms are Frobenius norms over the whole parameter, computed in its dtype (float32
    parameters give float32 ratios). `grad` is the gradient with weight decay already added.
    """
    xp = array_module(weight, grad)
    weight_norm = xp.linalg.norm(weight)
    grad_norm = xp.linalg.norm(grad)
    both_positive = (weight_norm > 0) & (grad_norm > 0)
    # where() rather than an if: on the GPU an if would wait for the norms, once per parameter
    ratio = xp.where(both_positive, eta * weight_norm / xp.where(both_positive, grad_norm, 1), 1)
    return ratio.astype(weight.dtype, copy=False)


def one_dimensional(name, param):
    """LARS's default exclusion: parameters with at most one dimension (biases, batch-norm
    weights and biases) get no weight decay and no trust ratio."""
    # course: begin lars-exclusion
    return param.data.ndim <= 1
    # course: end lars-exclusion


class LARS(Optimizer):
    """LARS with momentum, as in SimCLR's official code (no Nesterov).

    For each parameter w with gradient g (parameters whose .grad is None are skipped):

        not excluded:  g = g + weight_decay * w
                       trust = eta * ||w|| / ||g||   (1 when either norm is 0)
        excluded:      trust = 1                     (and no weight decay)
        v = momentum * v + lr * trust * g            (v starts at 0)
        w = w - v

    The learning rate sits inside the momentum buffer v (unlike SGD), so a change of lr
    reaches the weights gradually.

    exclude  None excludes `one_dimensional` parameters: every bias and batch-norm parameter.
             A callable exclude(name, param) -> bool replaces that rule; `name` is the name given
             with the parameter as a (name, param) pair, or None for plain parameters.
             The rule is applied once, here; `excluded[i]` records it for parameter i.
    """

    hyperparameters = ("lr", "momentum", "weight_decay", "eta")

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, eta=0.001, exclude=None):
        super().__init__(params, lr)
        self.momentum = non_negative("momentum", momentum)
        self.weight_decay = non_negative("weight_decay", weight_decay)
        self.eta = non_negative("eta", eta)
        if exclude is None:
            exclude = one_dimensional
        elif not callable(exclude):
            raise TypeError(f"exclude must be None or a callable (name, param) -> bool, "
                            f"got {type(exclude).__name__}")
        self.excluded = [bool(exclude(name, param)) for name, param in zip(self.names, self.params)]

    def step(self):
        """On the CPU, `update` for each parameter, over the threads (Optimizer.step). On the
        GPU, all of them at once: two launches per dtype (lars_cuda.py), the
        same update."""
        updated = [index for index, param in enumerate(self.params) if param.grad is not None]
        if not updated or device_of(self.params[updated[0]].data) == "cpu":
            return super().step()
        by_dtype = {}
        for index in updated:
            by_dtype.setdefault(self.params[index].data.dtype, []).append(index)
        for indices in by_dtype.values():
            for index in indices:
                if self.momentum_buffers[index] is None:
                    weight = self.params[index].data
                    self.momentum_buffers[index] = array_module(weight).zeros_like(weight)
            lars_step([self.params[i].data for i in indices],
                      [self.params[i].grad for i in indices],
                      [self.momentum_buffers[i] for i in indices],
                      [self.excluded[i] for i in indices], self.lr, self.momentum,
                      self.weight_decay, self.eta)

    def update(self, index):
        # course: begin lars-update
        param, excluded = self.params[index], self.excluded[index]
        weight, grad = param.data, param.grad
        if excluded:
            scaled_lr = self.lr
        else:
            grad = grad + self.weight_decay * weight
            scaled_lr = self.lr * trust_ratio(weight, grad, self.eta)
        velocity = self.momentum_buffers[index]
        if velocity is None:
            velocity = self.momentum_buffers[index] = array_module(weight).zeros_like(weight)
        velocity *= self.momentum
        velocity += scaled_lr * grad
        weight -= velocity
        # course: end lars-update
