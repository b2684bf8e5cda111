"""Stochastic gradient descent with momentum, as torch.optim.SGD computes it."""
from .optimizer import Optimizer, non_negative


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay, exactly as torch.optim.SGD.

    For each parameter w with gradient g (parameters whose .grad is None are skipped):

        d = g + weight_decay * w
        b = d                      at the parameter's first step
        b = momentum * b + d       afterwards
        d = d + momentum * b       with nesterov, else d = b
        w = w - lr * d

    With momentum 0 there is no buffer and the update is w = w - lr * d. Unlike LARS, the
    learning rate multiplies the update outside the buffer, so changing lr takes effect at once.
    The linear-evaluation recipe uses SGD(params, lr, momentum=0.9, nesterov=True).
    """

    hyperparameters = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, params, lr, momentum=0, nesterov=False, weight_decay=0):
        super().__init__(params, lr)
        self.momentum = non_negative("momentum", momentum)
        self.weight_decay = non_negative("weight_decay", weight_decay)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0, got momentum=0")
        self.nesterov = bool(nesterov)

    def update(self, index):
        # course: begin sgd-update
        param = self.params[index]
        direction = param.grad
        if self.weight_decay:
            direction = direction + self.weight_decay * param.data
        if self.momentum:
            buffer = self.momentum_buffers[index]
            if buffer is None:
                buffer = self.momentum_buffers[index] = direction.copy()
            else:
                buffer *= self.momentum
                buffer += direction
            direction = direction + self.momentum * buffer if self.nesterov else buffer
        param.data -= self.lr * direction
        # course: end sgd-update
