"""torchvision adapters (ImageNet-style inputs). Weights are never downloaded: pass a
checkpoint; the registry only knows the layout, input size and normalization.

torchvision is imported when one of these models is built, not with the registry: importing
it loads torch's compiler stack (about 1.7 s), which every worker, stage process and CLI
call would otherwise pay for models they never build."""

from . import IMAGENET_MEAN, IMAGENET_STD, Architecture, register


def _tv(name: str):
    """torchvision's constructor `name`, imported on first use."""
    from torchvision import models

    return getattr(models, name)


@register("resnet18")
def _r18() -> Architecture:
    """torchvision ResNet-18 (224x224)."""
    return Architecture(lambda n: _tv("resnet18")(num_classes=n), 224, IMAGENET_MEAN,
                        IMAGENET_STD, "fc", ("layer2", "layer3", "layer4"))


@register("resnet50")
def _r50() -> Architecture:
    """torchvision ResNet-50 (224x224)."""
    return Architecture(lambda n: _tv("resnet50")(num_classes=n), 224, IMAGENET_MEAN,
                        IMAGENET_STD, "fc", ("layer2", "layer3", "layer4"))


@register("vit_b_16")
def _vit() -> Architecture:
    """torchvision ViT-B/16 (224x224); stages are the last three encoder blocks."""
    return Architecture(lambda n: _tv("vit_b_16")(num_classes=n), 224, IMAGENET_MEAN,
                        IMAGENET_STD, "heads.head",
                        ("encoder.layers.encoder_layer_9", "encoder.layers.encoder_layer_10",
                         "encoder.layers.encoder_layer_11"))
