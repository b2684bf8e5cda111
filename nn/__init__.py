"""Neural networks on the autograd engine: the functional ops, modules, ResNet, optimisers."""
from . import functional
