"""CIFAR-style networks: ResNet-18 (3x3 stem, no max-pool), PreAct-ResNet-18, VGG-16-BN.

Key names follow BackdoorBench's models, so its checkpoints load without renaming.
"""

import torch.nn.functional as F
from torch import nn

from . import CIFAR_MEAN, CIFAR_STD, Architecture, register


class BasicBlock(nn.Module):
    """ResNet basic block (post-activation)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation ResNet block."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet18(nn.Module):
    """CIFAR ResNet-18; `preact=True` gives BackdoorBench's PreAct-ResNet-18 (its
    `models/preact_resnet.py`: no BN or ReLU after the last block, 16 BN layers and 3,392
    BN channels in all, so BackdoorBench's state dicts load key for key)."""

    def __init__(self, num_classes: int = 10, preact: bool = False, width: int = 64) -> None:
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        self.preact = preact
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(width)
        cin = width
        stages = [(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)]
        for i, (cout, stride) in enumerate(stages, start=1):
            layers = []
            for s in (stride, 1):
                layers.append(block(cin, cout, s))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG-16 with batch norm for 32x32 inputs (one linear head after the conv stack)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.linear(self.features(x).flatten(1))


@register("resnet18_cifar")
def _resnet18() -> Architecture:
    """CIFAR ResNet-18 (3x3 stem, no max-pool), the paper's backbone; `width` (default 64)
    scales every stage, layer4 keeping 8 x width channels at 4x4."""
    return Architecture(lambda n, w=64: ResNet18(n, width=w), 32, CIFAR_MEAN, CIFAR_STD,
                        "linear", ("layer2", "layer3", "layer4"), feature_bound="absolute",
                        default_width=64)


@register("preact_resnet18")
def _preact() -> Architecture:
    """PreAct-ResNet-18, BackdoorBench's default CIFAR model (`width` as resnet18_cifar)."""
    return Architecture(lambda n, w=64: ResNet18(n, preact=True, width=w), 32, CIFAR_MEAN,
                        CIFAR_STD, "linear", ("layer2", "layer3", "layer4"),
                        feature_bound="absolute", default_width=64)


@register("vgg16_bn")
def _vgg() -> Architecture:
    """VGG-16-BN for 32x32 inputs."""
    return Architecture(lambda n: VGG16BN(n), 32, CIFAR_MEAN, CIFAR_STD, "linear",
                        ("features.23", "features.33", "features.43"))
