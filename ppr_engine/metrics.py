"""The benchmark's metrics: C-Acc, ASR over non-target samples only, and DER."""

from __future__ import annotations

import torch
from torch import nn

from .data import ImageSet
from .train import accuracy, predict


def clean_accuracy(model: nn.Module, test: ImageSet) -> float:
    """C-Acc: accuracy on the clean test set."""
    return accuracy(model, test)


def attack_success_rate(model: nn.Module, triggered: ImageSet, target: int) -> float:
    """ASR: share of triggered non-target images classified as `target`.

    `triggered` must already exclude target-class images (see `attacks.triggered_test`).
    """
    if len(triggered) == 0:
        return float("nan")
    return float((predict(model, triggered) == target).float().mean())


def target_rate(model: nn.Module, images: ImageSet | torch.Tensor, target: int) -> float:
    """Share of `images` classified as `target` (used by QRA on clean images + delta)."""
    preds = predict(model, images)
    return float((preds == target).float().mean()) if len(preds) else float("nan")


def der(asr_bd: float, asr_pur: float, acc_bd: float, acc_pur: float) -> float:
    """Defense effectiveness rating: [max(0, dASR) - max(0, dC-Acc) + 1] / 2."""
    return (max(0.0, asr_bd - asr_pur) - max(0.0, acc_bd - acc_pur) + 1.0) / 2.0
