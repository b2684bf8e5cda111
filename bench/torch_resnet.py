"""A PyTorch ResNet with torchvision's module structure and names, plus the CIFAR stem and the
width multiplier (torchvision itself is not installed): the oracle that tests/test_resnet.py holds
nn.resnet to, and the encoder of the PyTorch side of the benchmarks (bench/torch_simclr.py).

It imports torch at the top: import it only where PyTorch is wanted (in a test, after
`import_torch()`; in a benchmark's PyTorch child process).
"""
import torch
from torch import nn


def _scaled(channels, width):
    return max(1, int(round(channels * width)))


class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class TorchBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


class TorchResNet(nn.Module):
    def __init__(self, block, layers, cifar_stem=False, width=1, num_classes=None):
        super().__init__()
        self.inplanes = _scaled(64, width)
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, _scaled(64, width), layers[0], 1)
        self.layer2 = self._make_layer(block, _scaled(128, width), layers[1], 2)
        self.layer3 = self._make_layer(block, _scaled(256, width), layers[2], 2)
        self.layer4 = self._make_layer(block, _scaled(512, width), layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = None if num_classes is None else nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        h = torch.flatten(self.avgpool(x), 1)
        return h if self.fc is None else self.fc(h)


def torch_resnet(depth, cifar_stem=False, width=1, num_classes=None):
    """The torchvision-structured ResNet-18, -34 or -50 (float32, on the CPU)."""
    block, layers = {18: (TorchBasicBlock, [2, 2, 2, 2]), 34: (TorchBasicBlock, [3, 4, 6, 3]),
                     50: (TorchBottleneck, [3, 4, 6, 3])}[depth]
    return TorchResNet(block, layers, cifar_stem, width, num_classes)
