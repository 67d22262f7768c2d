"""A small, fast CNN for tests, demos and CPU benchmarks (about 4 M multiply-adds)."""

from torch import nn

from . import CIFAR_MEAN, CIFAR_STD, Architecture, register


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages and a linear head; stages are named like ResNet's."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.layer1 = nn.Sequential(_block(3, w), nn.MaxPool2d(2))
        self.layer2 = nn.Sequential(_block(w, 2 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(_block(2 * w, 4 * w), nn.MaxPool2d(2))
        self.layer4 = _block(4 * w, 8 * w)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.pool(x).flatten(1))


@register("small_cnn")
def _small_cnn() -> Architecture:
    """Small 4-stage CNN for CPU tests and demos (32x32 inputs)."""
    return Architecture(lambda n: SmallCNN(n), 32, CIFAR_MEAN, CIFAR_STD, "linear",
                        ("layer2", "layer3", "layer4"))
