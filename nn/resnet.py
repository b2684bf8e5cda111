"""ResNet-18/34/50 (He et al. 2016) in torchvision's v1.5 layout, the SimCLR encoder.

    stem      conv1 7x7/2 (64) -> bn1 -> relu -> maxpool 3x3/2      (ImageNet stem)
              conv1 3x3/1 (64) -> bn1 -> relu -> maxpool = Identity (CIFAR stem)
    layer1    blocks of width  64, stride 1
    layer2    blocks of width 128, the first with stride 2
    layer3    blocks of width 256, the first with stride 2
    layer4    blocks of width 512, the first with stride 2
    avgpool   global mean: (N, 512 * expansion, H', W') -> (N, 512 * expansion)
    fc        Linear(512 * expansion, num_classes), only when num_classes is given

ResNet-18/34 use BasicBlock (two 3x3 convs, expansion 1), ResNet-50 Bottleneck (1x1, 3x3,
1x1 convs, expansion 4) with the stride on the 3x3 conv ("v1.5", as torchvision; v1 put it on
the first 1x1). Every conv is bias-free and followed by batch norm.

Module and parameter names are torchvision's (conv1.weight, layer1.0.downsample.1.running_var,
fc.bias, ...), so a state_dict loads into a torchvision model by name and back. The CIFAR
stem keeps a parameter-free `maxpool` (an Identity), so its names are the ImageNet stem's.

`width` multiplies every channel count, stem included (SimCLR's 2x and 4x); fractional widths
such as 0.25 make small models for quick CPU runs (each count is rounded, and at least 1).

Each batch norm runs fused with what follows it: `bn(x, residual=shortcut, relu=True)` is
relu(bn(x) + shortcut) in one op (fewer passes over memory; the same numbers), so there are
no ReLU modules: torchvision's have no parameters, and the state_dict names are the same.
"""
from numbers import Real

from . import init
from .layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Identity, Linear, MaxPool2d
from .layers import Sequential
from .module import Module


class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), both convs 3x3; the first has
    `stride`. The shortcut is `downsample` (1x1 conv + BN) when the shape changes, else x."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, rng=None):
        super().__init__()
        rng = init.as_generator(rng)
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=1, padding=1, bias=False, rng=rng)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def last_bn(self):
        """The batch norm whose output is added to the shortcut (zeroed by zero_init_residual)."""
        return self.bn2

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x), relu=True)                    # relu(bn1(conv1(x)))
        return self.bn2(self.conv2(out), residual=shortcut, relu=True)  # relu(bn2(.) + shortcut)


class Bottleneck(Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)):
    1x1 conv to `planes`, 3x3 conv with `stride` (v1.5), 1x1 conv to planes * 4."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, rng=None):
        super().__init__()
        rng = init.as_generator(rng)
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False, rng=rng)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = Conv2d(planes, planes * self.expansion, 1, bias=False, rng=rng)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    @property
    def last_bn(self):
        """The batch norm whose output is added to the shortcut (zeroed by zero_init_residual)."""
        return self.bn3

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x), relu=True)                    # relu(bn1(conv1(x)))
        out = self.bn2(self.conv2(out), relu=True)                  # relu(bn2(conv2(out)))
        return self.bn3(self.conv3(out), residual=shortcut, relu=True)  # relu(bn3(.) + shortcut)


def scaled_channels(channels, width):
    """round(channels * width), at least 1."""
    return max(1, int(round(channels * width)))


class ResNet(Module):
    """A ResNet of `block`s, `layers[i]` of them in stage i+1 (e.g. Bottleneck, [3, 4, 6, 3]).

    Input (N, 3, H, W). Output (N, num_classes) logits when num_classes is given, else the
    pooled representation h of shape (N, num_features), num_features = 512 * expansion * width.

    cifar_stem          3x3 stride-1 conv1 and no max-pool (for 32x32 images), as SimCLR
    width               channel multiplier (1, 2, 4 as SimCLR; fractions for small models)
    zero_init_residual  start each block's last BN weight at 0, so each block starts as the
                        identity (SimCLR's default is on, torchvision's off)
    rng                 None, an int seed or a numpy.random.Generator: the weights' only source
                        of randomness (same seed, same weights)
    """

    def __init__(self, block, layers, cifar_stem=False, width=1, zero_init_residual=False,
                 num_classes=None, rng=None):
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {layers!r}")
        if not isinstance(width, Real) or isinstance(width, bool) or not width > 0:
            raise ValueError(f"width must be a positive number, got {width!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        rng = init.as_generator(rng)
        self.cifar_stem = cifar_stem
        self.inplanes = scaled_channels(64, width)
        if cifar_stem:
            self.conv1 = Conv2d(3, self.inplanes, 3, stride=1, padding=1, bias=False, rng=rng)
        else:
            self.conv1 = Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False, rng=rng)
        self.bn1 = BatchNorm2d(self.inplanes)
        self.maxpool = Identity() if cifar_stem else MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, scaled_channels(64, width), layers[0], 1, rng)
        self.layer2 = self._make_layer(block, scaled_channels(128, width), layers[1], 2, rng)
        self.layer3 = self._make_layer(block, scaled_channels(256, width), layers[2], 2, rng)
        self.layer4 = self._make_layer(block, scaled_channels(512, width), layers[3], 2, rng)
        self.avgpool = AdaptiveAvgPool2d(1)
        self.num_features = self.inplanes
        if num_classes is not None:
            self.fc = Linear(self.num_features, num_classes, rng=rng)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    init.zeros_(module.last_bn.weight)

    def _make_layer(self, block, planes, blocks, stride, rng):
        """One stage: `blocks` blocks of `planes`; the first one changes stride and width."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Sequential(
                Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False,
                       rng=rng),
                BatchNorm2d(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample, rng=rng)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, rng=rng) for _ in range(1, blocks)]
        return Sequential(*stage)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet: expected images of shape (N, 3, H, W), "
                             f"got shape {tuple(x.shape)}")
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        h = self.avgpool(x).reshape(x.shape[0], self.num_features)  # (N, C, 1, 1) -> (N, C)
        return self.fc(h) if "fc" in self._modules else h

    def stem(self, x):
        """The layers before the first stage: relu(bn1(conv1(x))) (fused), then the max-pool."""
        return self.maxpool(self.bn1(self.conv1(x), relu=True))

    def extra_repr(self):
        return f"cifar_stem={self.cifar_stem}, num_features={self.num_features}"


def resnet18(cifar_stem=False, width=1, zero_init_residual=False, num_classes=None, rng=None):
    """ResNet-18: BasicBlock, [2, 2, 2, 2]; h has 512 * width features."""
    return ResNet(BasicBlock, [2, 2, 2, 2], cifar_stem, width, zero_init_residual, num_classes,
                  rng)


def resnet34(cifar_stem=False, width=1, zero_init_residual=False, num_classes=None, rng=None):
    """ResNet-34: BasicBlock, [3, 4, 6, 3]; h has 512 * width features."""
    return ResNet(BasicBlock, [3, 4, 6, 3], cifar_stem, width, zero_init_residual, num_classes,
                  rng)


def resnet50(cifar_stem=False, width=1, zero_init_residual=False, num_classes=None, rng=None):
    """ResNet-50 (v1.5): Bottleneck, [3, 4, 6, 3]; h has 2048 * width features."""
    return ResNet(Bottleneck, [3, 4, 6, 3], cifar_stem, width, zero_init_residual, num_classes,
                  rng)
