"""Process-wide torch state a computation sets for itself and gives back: its random stream
and the TF32 flags. Stages run one after another in one process (a worker, an embedded
audit) or side by side on one device; a stage that seeds the global stream or turns TF32 on
for itself, and leaves it so, makes the next stage's numbers depend on what ran before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
