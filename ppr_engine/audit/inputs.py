"""What every stage of an audit starts from: the submitted model, the data split into the
defender's and the attacker's parts, the triggers, and their test sets.

Loading is deterministic (the same spec and files give the same splits in any process), so
an executor that runs stages in several worker processes loads these once per process and
gets the same inputs as the in-process executor. Refusals here stop the audit: with a bad
checkpoint or bad data there is nothing to audit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data, models
from ..attacks import Trigger, triggered_test
from ..checkpoint import load_model
from ..data import ImageSet
from ..defenses import DefenseContext
from ..errors import SpecError
from ..inversion.context import SharedCache
from ..metrics import attack_success_rate
from ..ppr.lmc import PathPoint, backdoored_end
from ..ppr.retune import RetuneSet, build_retune_set
from ..spec import AuditSpec
from ..train import pick_device
from .stage import trigger_labels


def attacker_images(spec: AuditSpec) -> int:
    """How many images RA (every budget of its sweep) and QRA draw from the attacker."""
    rs, q = spec.plan.retune, spec.plan.qra
    need = rs.poison_num + rs.clean_num if rs.enabled else 0
    if rs.enabled:
        need = max([need] + [b.poison_num + (b.clean_num or 0) for b in rs.sweep])
    if q.enabled:
        need = max(need, q.clean_num + q.poison_num)
    return need


def check_attacker_pool(spec: AuditSpec, clean: int | None, attacker: int | None) -> None:
    """SpecError when the attacker's images cannot cover RA's and QRA's draws: a given
    `data.attacker` smaller than the largest draw, or (without one) a clean reference too
    small to set the draw aside and keep the larger part for the defender. Counts that are
    not known (None) are checked once the data are loaded."""
    need = attacker_images(spec)
    if spec.data.attacker:
        if attacker is not None and attacker < need:
            raise SpecError(f"data.attacker has {attacker} images, and RA and QRA draw up to "
                            f"{need} (plan.retune and its sweep, plan.qra clean_num + "
                            "poison_num); give more images or lower those budgets")
    elif clean is not None and need > clean // 2:
        raise SpecError(f"data.clean has {clean} images: too few to set {need} aside for the "
                        f"attacker (RA and QRA) and keep the larger part for the defender; "
                        f"give data.attacker or lower the RA/QRA budgets")


def refuse_overlap(test: ImageSet, others: dict[str, ImageSet]) -> None:
    """SpecError when the test set shares images (pixel for pixel) with the defender's or
    the attacker's data: every number measured on it would then be measured on seen data."""
    for name, other in others.items():
        shared = test.shared_with(other)
        if len(shared):
            first = ", ".join(str(int(i)) for i in test.index[shared[:5].to(
                test.index.device)].tolist())
            raise SpecError(f"data.test shares {len(shared)} of its {len(test)} images with "
                            f"{name} (test images at positions {first}"
                            f"{', ...' if len(shared) > 5 else ''}); audit on disjoint data")


@dataclass
class AuditInputs:
    """The submitted model and the audit's data, shared by every stage of one process."""

    spec: AuditSpec
    device: torch.device
    model: nn.Module  # the submitted (backdoored) model; stages never modify it
    clean: ImageSet  # the defender's set (train + val)
    clean_train: ImageSet
    val: ImageSet
    test: ImageSet
    pool: ImageSet  # the attacker's images
    triggers: list[Trigger]
    labels: list[str]
    provenance: dict[str, dict[str, Any]]
    checkpoint_sha256: str = ""
    ctx: DefenseContext | None = None
    _triggered: dict[int, ImageSet] = field(default_factory=dict)
    _retune_sets: dict[tuple[int, int, int], RetuneSet] = field(default_factory=dict)
    _lmc_ends: dict[tuple[int, str], PathPoint] = field(default_factory=dict)

    def triggered(self, i: int) -> ImageSet:
        """Trigger `i`'s test images (non-target, triggered, true labels), built once."""
        if i not in self._triggered:
            self._triggered[i] = triggered_test(self.test, self.triggers[i])
        return self._triggered[i]

    def backdoor_labels(self, i: int) -> torch.Tensor:
        """The backdoor label of each of trigger `i`'s test images (its label map)."""
        return self.triggers[i].targets(self.triggered(i).y)

    def asr(self, model: nn.Module, i: int) -> float:
        """Trigger `i`'s ASR on `model`, over its label map."""
        return attack_success_rate(model, self.triggered(i), self.backdoor_labels(i))

    def retune_set(self, i: int, poison_num: int, clean_num: int, run: int = 0) -> RetuneSet:
        """RA's data for trigger `i`, draw `run` (seed plan.retune.seed + run); built once,
        shared by every method and the baseline, so each run's gap is a paired one."""
        key = (i, poison_num, clean_num, run)
        if key not in self._retune_sets:
            self._retune_sets[key] = build_retune_set(
                self.pool, self.triggers[i], poison_num, clean_num,
                self.spec.plan.retune.seed + run)
        return self._retune_sets[key]

    def lmc_end(self, i: int) -> PathPoint:
        """LMC's lambda = 1 point for trigger `i` (the submitted model), computed once and
        shared by every method's path."""
        bn = self.spec.plan.lmc.bn
        if (i, bn) not in self._lmc_ends:
            self._lmc_ends[(i, bn)] = backdoored_end(
                self.model, self.clean_train, self.test, self.triggered(i),
                self.backdoor_labels(i), bn=bn, device=self.device)
        return self._lmc_ends[(i, bn)]

    def context(self, active: list[int]) -> DefenseContext:
        """The defenses' context, knowing the triggers `active` (shared cache)."""
        assert self.ctx is not None
        self.ctx.triggers = [self.triggers[i] for i in active]
        return self.ctx


def load_inputs(spec: AuditSpec, checkpoint: Path, *, resolve_dataset=None,
                roots: list[Path] | None = None, max_checkpoint_bytes: int | None = None,
                load_data: Callable[..., ImageSet] | None = None) -> AuditInputs:
    """Load the checkpoint (safely), the data and the triggers' own data. `load_data`
    (default `data.load`, same arguments) lets a caller that loads the same references
    again and again (a distributed audit's stages) decode each one once."""
    device = pick_device(spec.device)
    load_kw = {"max_bytes": max_checkpoint_bytes} if max_checkpoint_bytes else {}
    bd = load_model(checkpoint, spec.model.arch, spec.model.num_classes,
                    width=spec.model.width, **load_kw).to(device)
    arch = models.architecture(spec.model.arch)
    kw = {"resolve_dataset": resolve_dataset, "roots": roots, "size": arch.input_size}

    def load(ref: str, name: str) -> ImageSet:
        """Load `ref` and refuse images the model cannot take."""
        ds = (load_data or data.load)(ref, **kw)
        if ds.x.shape[-1] != arch.input_size or ds.x.shape[-2] != arch.input_size:
            raise SpecError(f"{name}: images are {tuple(ds.x.shape[-2:])}, but "
                            f"{spec.model.arch} takes {arch.input_size}x{arch.input_size}; "
                            f"add ?size={arch.input_size} to the reference")
        if len(ds) and int(ds.y.max()) >= spec.model.num_classes:
            raise SpecError(f"{name} has label {int(ds.y.max())}, but the model has "
                            f"{spec.model.num_classes} classes")
        return ds

    clean = load(spec.data.clean, "data.clean")
    test = load(spec.data.test, "data.test")
    # roles, whatever the references look like: sample-specific triggers (SSBA) look the
    # defender's and the attacker's images up in the attack's training split, test images
    # in its test split
    clean, test = replace(clean, split="train"), replace(test, split="test")
    if spec.data.attacker:
        pool = replace(load(spec.data.attacker, "data.attacker"), split="train")
        check_attacker_pool(spec, len(clean), len(pool))
        attacker_prov = {"ref": spec.data.attacker}
        refuse_overlap(test, {"data.clean": clean, "data.attacker": pool})
    else:
        refuse_overlap(test, {"data.clean": clean})
        # split the clean reference so that the attacker and the defender share no image
        check_attacker_pool(spec, len(clean), None)
        need = attacker_images(spec)
        pool, clean = data.take(clean, n=need, seed=spec.plan.retune.seed)
        attacker_prov = {"ref": f"{need} images split from data.clean (RA's seed)"}
    clean_train, val = data.train_val(clean, spec.data.val_fraction, spec.seed)
    triggers = [t.build() for t in spec.triggers]
    for i, t in enumerate(triggers):
        t.bind_classes(spec.model.num_classes)
        t.bind(lambda ref, i=i: load(ref, f"triggers.{i}"))
    prov = {
        "clean": {"ref": spec.data.clean, "n": len(clean), "sha256": clean.content_hash(),
                  "train": len(clean_train), "val": len(val)},
        "test": {"ref": spec.data.test, "n": len(test), "sha256": test.content_hash()},
        "attacker": {**attacker_prov, "n": len(pool), "sha256": pool.content_hash(),
                     "shared_with_clean": len(pool.shared_with(clean))},
    }
    inputs = AuditInputs(spec, device, bd, clean.to(device), clean_train.to(device),
                         val.to(device), test.to(device), pool.to(device), triggers,
                         trigger_labels(spec), prov)
    inputs.ctx = DefenseContext(inputs.clean_train, inputs.val, device, spec.seed,
                                cache=SharedCache(inputs.clean_train, inputs.val, device))
    return inputs
