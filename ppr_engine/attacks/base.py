"""Trigger base class, the attack registry, and poisoning of training and test sets.

A trigger maps float images in [0, 1] (B x C x H x W, on any device) to triggered images;
results are stored as uint8, as BackdoorBench stores its poisoned images. Dirty-label
attacks relabel poisoned images to their backdoor label; clean-label ones (SIG, LC) poison
target-class images and keep their labels.

The backdoor label is the trigger's label map (`Trigger.targets`): all-to-one sends every
triggered image to `target`; all-to-all (BackdoorBench's `all2all`) sends an image of
class y to (y + shift) mod C. ASR counts the images whose backdoor label differs from their
own, classified as that label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from ..data import ImageSet, to_float
from ..errors import SpecError
from ..registry import Registry
from ..report import InversionResult


class TriggerParams(BaseModel):
    """Parameters every attack shares."""

    model_config = {"extra": "forbid"}
    target: int = Field(0, ge=0, le=99_999, description="target class (all-to-one)")
    label_map: Literal["all_to_one", "all_to_all"] = Field(
        "all_to_one", description="all_to_one: every triggered image goes to `target`; "
        "all_to_all: an image of class y goes to (y + shift) mod the number of classes")
    shift: int = Field(1, ge=1, le=99_999, description="all_to_all's label shift "
                       "(BackdoorBench's all2all: 1)")

    @model_validator(mode="after")
    def _one_map(self) -> TriggerParams:
        if self.label_map == "all_to_all" and self.target != 0:
            raise ValueError("an all_to_all trigger has no target: its label map is "
                             "y -> (y + shift) mod C; leave target out")
        return self


class Trigger:
    """A registered attack: how to trigger images and how to poison a training set."""

    clean_label = False
    learns_from_model = False  # the audit calls learn() before using it (inversion)
    all_to_all = False  # the label map: see targets()
    shift = 1
    num_classes: int | None = None  # all-to-all needs it: see bind_classes
    inversion: InversionResult | None = None  # what learn() found, for the report
    Params: type[TriggerParams] = TriggerParams

    def __init__(self, params: TriggerParams) -> None:
        self.params = params
        self.target = params.target
        self.all_to_all = params.label_map == "all_to_all"
        self.shift = params.shift
        if self.all_to_all and self.clean_label:
            raise SpecError(f"{type(self).__name__} is a clean-label attack: it poisons "
                            "target-class images, so it has no all_to_all form")

    def bind_classes(self, num_classes: int) -> None:
        """The model's number of classes, which an all-to-all label map needs; a target
        outside the classes is refused here."""
        if self.all_to_all and self.shift % num_classes == 0:
            raise SpecError(f"all_to_all shift {self.shift} maps every class of "
                            f"{num_classes} to itself")
        if not self.all_to_all and self.target >= num_classes:
            raise SpecError(f"trigger target {self.target} is not a class of a "
                            f"{num_classes}-class model")
        self.num_classes = num_classes

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """The backdoor label of each image of true label `y` (the label map)."""
        if not self.all_to_all:
            return torch.full_like(y, self.target)
        if self.num_classes is None:
            raise RuntimeError("an all_to_all trigger needs bind_classes() before use")
        return (y + self.shift) % self.num_classes

    def attacked(self, y: torch.Tensor) -> torch.Tensor:
        """Which images of true label `y` the backdoor moves (the ones ASR counts)."""
        return self.targets(y) != y

    @property
    def found(self) -> bool:
        """Whether the backdoor this trigger stands for is known to be in the model (a
        trigger inverted from the model may find none: it then gets no verdict)."""
        return True

    def learn(self, model: nn.Module, ctx: Any) -> None:
        """Triggers found in the model itself (`inverted`) learn here, from the model and the
        defender's data in `ctx` (a DefenseContext); a given trigger has nothing to learn."""

    def learned(self) -> tuple[dict[str, Any], dict[str, nn.Module]]:
        """What learn() found, as (JSON-able values, modules), so that another process can
        `restore` it (an audit's stages may run in several workers); nothing by default."""
        return {}, {}

    def restore(self, values: dict[str, Any], modules: dict[str, nn.Module]) -> None:
        """Take the state `learned` returned (in another process)."""

    def reseed(self) -> None:
        """Reset any random stream the trigger draws from, so that a stage's draws do not
        depend on which stages ran before it in the same process."""

    def data_refs(self) -> list[str]:
        """The data references the parameters name (the service checks each one)."""
        return []

    def bind(self, load: Callable[[str], ImageSet]) -> None:
        """Load the data the parameters name through the audit's own loader, so that a
        server's data roots and uploaded datasets apply to it as to the clean data."""

    def provenance(self) -> dict[str, Any] | None:
        """What the report records of the trigger's own data, as for data.clean (`ref`,
        `n`, `sha256`, and more); None: it has none."""
        return None

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None,
              split: str = "test") -> torch.Tensor:
        """Triggered copy of float images `x` in [0, 1]."""
        raise NotImplementedError

    def apply_set(self, ds: ImageSet, batch_size: int = 1024) -> torch.Tensor:
        """Triggered uint8 images of a whole set (labels untouched)."""
        out = []
        for start in range(0, len(ds), batch_size):
            sl = slice(start, start + batch_size)
            x = self.apply(to_float(ds.x[sl]), ds.index[sl], ds.split)
            out.append(quantize(x))
        return torch.cat(out) if out else ds.x[:0]

    def poison_images(self, ds: ImageSet, surrogate: nn.Module | None = None) -> torch.Tensor:
        """uint8 poisoned versions of `ds`'s images for the training set (LC adds PGD)."""
        return self.apply_set(ds)

    def triggered_test(self, test: ImageSet) -> ImageSet:
        """The test images the backdoor moves, with the trigger, keeping their true labels;
        ASR is the share of these predicted as their backdoor label (`targets`)."""
        sub = self.non_target(test)
        return sub.with_images(self.apply_set(sub))

    def non_target(self, ds: ImageSet) -> ImageSet:
        """The images of `ds` the backdoor moves: those whose true class is not the target
        (all-to-one), every image (all-to-all)."""
        return ds.subset(torch.nonzero(self.attacked(ds.y.cpu())).flatten())

    def draw_triggered(self, pool: ImageSet, order: torch.Tensor, n: int, *,
                       clean_label_rule: bool = True) -> tuple[ImageSet, torch.Tensor]:
        """`n` triggered images with their true labels for an attacker (RA, QRA), and their
        positions in `pool`: the first eligible images of `pool` in `order` (non-target
        ones; target-class ones for a clean-label attack under `clean_label_rule`)."""
        y = pool.y.cpu()
        want_target = self.clean_label and clean_label_rule
        eligible = (y[order] == self.target) if want_target else self.attacked(y[order])
        positions = order[eligible][:n]
        chosen = pool.subset(positions)
        return chosen.with_images(self.apply_set(chosen)), positions

    def unlearning_batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                         split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """EP's and PAM's oracle data: `x` (float, [0, 1]) with the trigger, true labels."""
        return self.apply(x, index, split), y

    def extra_training_samples(self, ds: ImageSet, poison_idx: torch.Tensor, rate: float,
                               seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(positions, uint8 images) of further training samples that keep their labels
        (WaNet's noise mode); none by default."""
        return None


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images to uint8, rounding."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


ATTACKS: Registry[type[Trigger]] = Registry("attack")


def build_trigger(name: str, params: dict | None = None) -> Trigger:
    """Instantiate attack `name` with validated `params`."""
    entry = ATTACKS.get(name)
    return entry.obj(entry.parse(params))


@dataclass
class PoisonedSet:
    """A poisoned training set and which of its samples carry the trigger."""

    data: ImageSet
    poisoned: torch.Tensor  # bool mask of triggered samples
    relabelled: torch.Tensor  # bool mask of samples whose label was changed


def poison_indices(ds: ImageSet, trigger: Trigger, rate: float, seed: int) -> torch.Tensor:
    """Positions to poison: any sample (dirty-label) or target-class ones (clean-label)."""
    g = torch.Generator().manual_seed(seed)
    n = int(round(rate * len(ds)))
    pool = (torch.nonzero(ds.y.cpu() == trigger.target).flatten() if trigger.clean_label
            else torch.arange(len(ds)))
    return pool[torch.randperm(len(pool), generator=g)[:min(n, len(pool))]]


def poison_training_set(ds: ImageSet, trigger: Trigger, rate: float, seed: int = 0,
                        surrogate: nn.Module | None = None) -> PoisonedSet:
    """Poison `rate` of `ds` (BackdoorBench's convention: rate of the whole set)."""
    idx = poison_indices(ds, trigger, rate, seed)
    x, y = ds.x.clone(), ds.y.clone()
    poisoned = torch.zeros(len(ds), dtype=torch.bool)
    relabelled = torch.zeros(len(ds), dtype=torch.bool)
    if len(idx):
        x[idx] = trigger.poison_images(ds.subset(idx), surrogate).to(x.device)
        poisoned[idx] = True
        if not trigger.clean_label:
            relabelled[idx] = trigger.attacked(ds.y[idx].cpu())
            y[idx] = trigger.targets(ds.y[idx])
    extra = trigger.extra_training_samples(ds, idx, rate, seed)
    if extra is not None:
        cross_idx, cross_x = extra
        x[cross_idx] = cross_x.to(x.device)
    return PoisonedSet(ds.with_images(x, y), poisoned, relabelled)


def triggered_test(test: ImageSet, trigger: Trigger) -> ImageSet:
    """The images ASR is measured on (see `Trigger.triggered_test`)."""
    return trigger.triggered_test(test)
