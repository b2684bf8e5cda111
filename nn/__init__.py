"""Neural networks on the autograd engine: the functional ops, modules, ResNet, optimisers."""
from . import functional
from . import optim
from . import init
from .layers import (AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Identity,
                     Linear, MaxPool2d, ReLU, Sequential, synchronize_batch_norm)
from .module import Module, Parameter
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
