"""Trigger base class, the attack registry, and poisoning of training and test sets.

A trigger maps float images in [0, 1] (B x C x H x W, on any device) to triggered images;
results are stored as uint8, as BackdoorBench stores its poisoned images. Dirty-label
attacks relabel poisoned images to the target; clean-label ones (SIG, LC) poison
target-class images and keep their labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from ..data import ImageSet, to_float
from ..registry import Registry
from ..report import InversionResult


class TriggerParams(BaseModel):
    """Parameters every attack shares."""

    model_config = {"extra": "forbid"}
    target: int = Field(0, ge=0, le=99_999, description="target class (all-to-one)")


class Trigger:
    """A registered attack: how to trigger images and how to poison a training set."""

    clean_label = False
    learns_from_model = False  # the audit calls learn() before using it (inversion)
    inversion: InversionResult | None = None  # what learn() found, for the report
    Params: type[TriggerParams] = TriggerParams

    def __init__(self, params: TriggerParams) -> None:
        self.params = params
        self.target = params.target

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
        """Non-target test images with the trigger, keeping their true labels; ASR is the
        share of these predicted as the target (target-class images are excluded)."""
        sub = self.non_target(test)
        return sub.with_images(self.apply_set(sub))

    def non_target(self, ds: ImageSet) -> ImageSet:
        """The images of `ds` whose true class is not the target (the ones ASR counts)."""
        return ds.subset(torch.nonzero(ds.y.cpu() != self.target).flatten())

    def draw_triggered(self, pool: ImageSet, order: torch.Tensor, n: int, *,
                       clean_label_rule: bool = True) -> tuple[ImageSet, torch.Tensor]:
        """`n` triggered images with their true labels for an attacker (RA, QRA), and their
        positions in `pool`: the first eligible images of `pool` in `order` (non-target
        ones; target-class ones for a clean-label attack under `clean_label_rule`)."""
        y = pool.y.cpu()
        want_target = self.clean_label and clean_label_rule
        eligible = (y[order] == self.target) if want_target else (y[order] != self.target)
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
            relabelled[idx] = ds.y[idx].cpu() != trigger.target
            y[idx] = trigger.target
    extra = trigger.extra_training_samples(ds, idx, rate, seed)
    if extra is not None:
        cross_idx, cross_x = extra
        x[cross_idx] = cross_x.to(x.device)
    return PoisonedSet(ds.with_images(x, y), poisoned, relabelled)


def triggered_test(test: ImageSet, trigger: Trigger) -> ImageSet:
    """The images ASR is measured on (see `Trigger.triggered_test`)."""
    return trigger.triggered_test(test)
