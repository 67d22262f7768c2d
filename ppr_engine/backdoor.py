"""Making backdoored models (for demos, tests and research): poison, then train."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import data as data_mod
from . import models
from .attacks import build_trigger, poison_training_set, triggered_test
from .metrics import attack_success_rate, clean_accuracy
from .train import Progress, fit, no_progress, pick_device


@dataclass
class BackdoorRecipe:
    """How to make a backdoored model; defaults follow the paper's CIFAR-10 recipe."""

    arch: str = "resnet18_cifar"
    width: int | None = None  # base width of an architecture that takes one (None: its default)
    attack: str = "badnets"
    attack_params: dict[str, Any] | None = None
    rate: float = 0.1
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: bool = True
    seed: int = 0
    surrogate_epochs: int = 5  # LC: epochs of the clean surrogate PGD attacks


@dataclass
class BackdoorResult:
    """The trained model and what it measured."""

    model: nn.Module
    c_acc: float | None
    asr: float | None
    seconds: float
    images_per_second: float
    poisoned: int
    num_classes: int = 10

    def warnings(self, min_asr: float = 0.5, margin: float = 0.1) -> list[str]:
        """What makes this model a poor subject for an audit: a backdoor that barely took
        (ASR below `min_asr`, the audit's default plan.min_asr, would get no verdict) or a
        model that learned little (C-Acc within `margin` of chance)."""
        out = []
        if self.asr is not None and self.asr < min_asr:
            out.append(f"the backdoor barely took: ASR {self.asr:.2f} is below {min_asr:.2f}; "
                       "an audit would find no backdoor to judge (train longer, poison more, "
                       "or use more images)")
        chance = 1.0 / self.num_classes
        if self.c_acc is not None and self.c_acc < chance + margin:
            out.append(f"the model learned little: C-Acc {self.c_acc:.2f} is within "
                       f"{margin:.2f} of chance ({chance:.2f}); train longer or on more images")
        return out


def make_backdoor(recipe: BackdoorRecipe, train_ref: str, test_ref: str | None = None, *,
                  device: torch.device | None = None,
                  progress: Progress = no_progress) -> BackdoorResult:
    """Poison `train_ref` with the recipe's attack and train; evaluate on `test_ref`."""
    device = device or pick_device()
    torch.manual_seed(recipe.seed)
    arch = models.architecture(recipe.arch)
    train = data_mod.load(train_ref, size=arch.input_size)
    trigger = build_trigger(recipe.attack, recipe.attack_params)
    trigger.bind_classes(train.num_classes)
    surrogate = None
    if getattr(trigger, "needs_surrogate", False) and recipe.surrogate_epochs > 0:
        surrogate = models.create(recipe.arch, train.num_classes, width=recipe.width)
        fit(surrogate, train, epochs=recipe.surrogate_epochs, lr=recipe.lr,
            batch_size=recipe.batch_size, device=device, seed=recipe.seed + 1,
            progress=progress, stage="surrogate")
    poisoned = poison_training_set(train, trigger, recipe.rate, recipe.seed, surrogate)
    model = models.create(recipe.arch, train.num_classes, width=recipe.width)
    start = time.perf_counter()
    fit(model, poisoned.data, epochs=recipe.epochs, lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, batch_size=recipe.batch_size, augment=recipe.augment,
        device=device, seed=recipe.seed, progress=progress, stage="backdoor training")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    c_acc = asr = None
    if test_ref:
        test = data_mod.load(test_ref, size=arch.input_size)
        c_acc = clean_accuracy(model, test)
        moved = triggered_test(test, trigger)
        asr = attack_success_rate(model, moved, trigger.targets(moved.y))
    return BackdoorResult(model, c_acc, asr, seconds, recipe.epochs * len(train) / seconds,
                          int(poisoned.poisoned.sum()), train.num_classes)
