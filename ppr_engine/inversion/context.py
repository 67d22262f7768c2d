"""What an inversion may see: the defender's data and the run settings, nothing else.

A trigger inverted from a model must be found without the audit's knowledge of the attack,
so the inversion takes this context, not a defense's (which also carries the known
triggers, for EP's oracle data). `DefenseContext` extends it; `InversionContext.of(ctx)`
projects any context down to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import ImageSet
from ..train import Progress, no_progress


@dataclass
class InversionContext:
    """The defender's clean set (train and held-out parts), device, seed, progress, and a
    cache shared by every inversion of one audit (pre-trained generators, scans)."""

    clean: ImageSet
    val: ImageSet
    device: torch.device
    seed: int = 0
    progress: Progress = no_progress
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: InversionContext) -> InversionContext:
        """`ctx` reduced to the defender's data (the cache is shared, not copied)."""
        return cls(ctx.clean, ctx.val, ctx.device, ctx.seed, ctx.progress, ctx.cache)
