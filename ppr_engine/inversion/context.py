"""What an inversion may see: the defender's data and the run settings, nothing else.

A trigger inverted from a model must be found without the audit's knowledge of the attack,
so the inversion takes this context, not a defense's (which also carries the known
triggers, for EP's oracle data). `DefenseContext` extends it; `InversionContext.of(ctx)`
projects any context down to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def own_random_stream(device: torch.device, seed: int) -> Iterator[None]:
    """Run a computation whose result the audit caches (a pre-trained generator, a scan) on
    a random stream of its own, seeded by `seed`: whether it runs or comes from the cache,
    the caller's stream afterwards is the same, so a stage's result never depends on which
    stages ran before it in the same process."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def tf32_matmuls(device: torch.device) -> Iterator[None]:
    """TF32 matrix products and convolutions for the inversion's fp32 work on CUDA, the
    process's own flags restored afterwards: a stage run next in the same process (or
    beside it) computes with the flags it chose, whatever ran before it."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
