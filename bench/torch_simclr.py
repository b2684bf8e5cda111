"""The same SimCLR training step in PyTorch, the yardstick for ours.

The encoder is bench/torch_resnet.py (torchvision's structure and names, with the CIFAR stem
and the width multiplier); the head, NT-Xent and LARS below transcribe simclr.model,
simclr.loss and nn.optim.LARS, so both sides do the same arithmetic in the same order of
layers. Import this only in a child process that was started for PyTorch.
"""
import torch
import torch.nn.functional as F
from torch import nn

from bench.torch_resnet import torch_resnet

DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}


class TorchSimCLR(nn.Module):
    """encoder -> h -> Linear(D, D) -> BatchNorm1d -> ReLU -> Linear(D, proj_dim) -> z, with
    zero_init_residual (each block's last BN weight 0), as simclr.model.build_model builds ours."""

    def __init__(self, arch, cifar_stem, width, proj_dim=128):
        super().__init__()
        self.encoder = torch_resnet(DEPTHS[arch], cifar_stem=cifar_stem, width=width)
        for name, module in self.encoder.named_modules():
            if name.endswith(".bn3" if arch == "resnet50" else ".bn2"):
                nn.init.zeros_(module.weight)
        features = self.encoder.inplanes
        self.head = nn.Sequential(nn.Linear(features, features), nn.BatchNorm1d(features),
                                  nn.ReLU(), nn.Linear(features, proj_dim))

    def forward(self, x):
        return self.head(self.encoder(x))


def nt_xent(z, temperature=0.5):
    """simclr.loss.nt_xent in PyTorch: cross-entropy of the cosine similarities / temperature
    over the 2N views, the self-similarity masked out by -1e9, the other view the target."""
    two_n = z.shape[0]
    u = F.normalize(z, dim=1)
    logits = u @ u.T / temperature                                   # (2N, 2N)
    logits = logits - 1e9 * torch.eye(two_n, dtype=z.dtype, device=z.device)
    positives = torch.cat([torch.arange(two_n // 2, two_n), torch.arange(0, two_n // 2)])
    return F.cross_entropy(logits, positives.to(z.device))


class TorchLARS:
    """nn.optim.LARS in PyTorch: for parameters with more than one dimension g += wd * w and
    trust = eta ||w|| / ||g|| (1 if a norm is 0), else trust = 1; v = m v + lr trust g; w -= v."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, eta=0.001):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay, self.eta = lr, momentum, weight_decay, eta
        self.velocities = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        for param, velocity in zip(self.params, self.velocities):
            if param.grad is None:
                continue
            grad, scaled_lr = param.grad, self.lr
            if param.ndim > 1:
                grad = grad + self.weight_decay * param
                weight_norm, grad_norm = torch.linalg.norm(param), torch.linalg.norm(grad)
                both_positive = (weight_norm > 0) & (grad_norm > 0)
                safe_grad_norm = torch.where(both_positive, grad_norm, 1)
                scaled_lr = self.lr * torch.where(both_positive,
                                                  self.eta * weight_norm / safe_grad_norm, 1)
            velocity.mul_(self.momentum).add_(scaled_lr * grad)
            param.sub_(velocity)

    def zero_grad(self):
        for param in self.params:
            param.grad = None
