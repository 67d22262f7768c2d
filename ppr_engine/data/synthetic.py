"""Procedural, class-structured 32x32 RGB images for demos and tests (nothing downloaded).

Each class owns a smooth random colour field (fixed by `world`); a sample is its class
field, shifted by a few pixels, mixed with a random smooth distractor and pixel noise. A
small CNN learns it to about 90% in a few epochs, and not trivially: distractors and shifts
make single pixels useless. The same `world` gives the same classes for every `seed`, so
`synthetic:?n=4000&seed=0` and `synthetic:?n=2000&seed=1` are train and test of one task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .imageset import ImageSet


def make_synthetic(n: int = 6000, seed: int = 0, *, world: int = 0, size: int = 32,
                   num_classes: int = 10, noise: float = 0.6) -> ImageSet:
    """`n` images of `num_classes` balanced classes; `noise` in [0, 1] sets difficulty."""
    gw = torch.Generator().manual_seed(7919 * (world + 1))
    fields = torch.rand(num_classes, 3, 5, 5, generator=gw)
    templates = F.interpolate(fields, size=size + 8, mode="bicubic", align_corners=False)
    templates = templates.clamp(0, 1)

    g = torch.Generator().manual_seed(104_729 * (seed + 1) + world)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    dy = torch.randint(0, 9, (n,), generator=g)
    dx = torch.randint(0, 9, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(size))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size))[:, None, None, :]
    chans = torch.arange(3)[None, :, None, None]
    shifted = templates[y[:, None, None, None], chans, rows, cols]

    distract = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bicubic",
                             align_corners=False).clamp(0, 1)
    mix = (1 - noise) + noise * 0.35 * torch.rand(n, 1, 1, 1, generator=g)
    x = mix * shifted + (1 - mix) * distract
    x = x + 0.08 * noise * torch.randn(n, 3, size, size, generator=g)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(x, y.long(), num_classes, source=f"synthetic:?n={n}&seed={seed}")
