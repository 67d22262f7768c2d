"""torchvision adapters (ImageNet-style inputs). Weights are never downloaded: pass a
checkpoint; the registry only knows the layout, input size and normalization."""

from torchvision import models as tvm

from . import IMAGENET_MEAN, IMAGENET_STD, Architecture, register


@register("resnet18")
def _r18() -> Architecture:
    """torchvision ResNet-18 (224x224)."""
    return Architecture(lambda n: tvm.resnet18(num_classes=n), 224, IMAGENET_MEAN,
                        IMAGENET_STD, "fc", ("layer2", "layer3", "layer4"))


@register("resnet50")
def _r50() -> Architecture:
    """torchvision ResNet-50 (224x224)."""
    return Architecture(lambda n: tvm.resnet50(num_classes=n), 224, IMAGENET_MEAN,
                        IMAGENET_STD, "fc", ("layer2", "layer3", "layer4"))


@register("vit_b_16")
def _vit() -> Architecture:
    """torchvision ViT-B/16 (224x224); stages are the last three encoder blocks."""
    return Architecture(lambda n: tvm.vit_b_16(num_classes=n), 224, IMAGENET_MEAN,
                        IMAGENET_STD, "heads.head",
                        ("encoder.layers.encoder_layer_9", "encoder.layers.encoder_layer_10",
                         "encoder.layers.encoder_layer_11"))
