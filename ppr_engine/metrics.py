"""The benchmark's metrics: C-Acc, ASR over non-target samples only, and DER."""

from __future__ import annotations

import torch
from torch import nn

from .data import ImageSet
from .train import accuracy, predict


def clean_accuracy(model: nn.Module, test: ImageSet) -> float:
    """C-Acc: accuracy on the clean test set."""
    return accuracy(model, test)


def attack_success_rate(model: nn.Module, triggered: ImageSet,
                        target: int | torch.Tensor) -> float:
    """ASR: share of triggered images classified as their backdoor label `target` (one
    class, or one per image for an all-to-all trigger: `Trigger.targets(triggered.y)`).

    `triggered` must already exclude the images the backdoor does not move (see
    `attacks.triggered_test`).
    """
    return target_rate(model, triggered, target)


def target_rate(model: nn.Module, images: ImageSet | torch.Tensor,
                target: int | torch.Tensor) -> float:
    """Share of `images` classified as `target` (one class or one per image; QRA uses it on
    clean images + delta)."""
    preds = predict(model, images)
    if not len(preds):
        return float("nan")
    return float((preds == torch.as_tensor(target).cpu()).float().mean())


def der(asr_bd: float, asr_pur: float, acc_bd: float, acc_pur: float) -> float:
    """Defense effectiveness rating: [max(0, dASR) - max(0, dC-Acc) + 1] / 2."""
    return (max(0.0, asr_bd - asr_pur) - max(0.0, acc_bd - acc_pur) + 1.0) / 2.0
