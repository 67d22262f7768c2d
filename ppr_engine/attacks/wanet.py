"""WaNet: a fixed smooth warping field, with "noise mode" cross samples that keep labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..bounds import seed_field
from ..data import to_float
from .base import ATTACKS, Trigger, TriggerParams, quantize


class WaNetParams(TriggerParams):
    """WaNet: k = 4 control grid, s = 0.5, grid_rescale 1, cross_ratio 2."""

    k: int = Field(4, ge=2, le=64, description="control grid size")
    s: float = Field(0.5, gt=0, le=100, description="warping strength")
    grid_rescale: float = Field(1.0, gt=0, le=10)
    cross_ratio: float = Field(2.0, ge=0, le=100, description="noise-mode samples per poisoned "
                               "one")
    field_seed: int = seed_field(0, "seed of the warping field")


@ATTACKS.register("wanet", params=WaNetParams, summary="WaNet: warping-based trigger")
class WaNet(Trigger):
    """Warp images with grid sampling at a fixed random smooth field."""

    Params = WaNetParams

    def _grid(self, h: int, device) -> torch.Tensor:
        p: WaNetParams = self.params  # type: ignore[assignment]
        g = torch.Generator().manual_seed(p.field_seed)
        u = torch.rand(1, 2, p.k, p.k, generator=g) * 2 - 1
        u = u / u.abs().mean()
        noise = F.interpolate(u, size=h, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        lin = torch.linspace(-1, 1, h)
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        identity = torch.stack((gx, gy), 2)[None]
        grid = ((identity + p.s * noise / h) * p.grid_rescale).clamp(-1, 1)
        return grid.to(device)

    def apply(self, x, index=None, split="test"):
        grid = self._grid(x.shape[-1], x.device).expand(len(x), -1, -1, -1).to(x.dtype)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)

    def extra_training_samples(self, ds, poison_idx, rate, seed):
        """Noise-mode samples: the backdoor grid plus per-sample noise; labels kept."""
        p: WaNetParams = self.params  # type: ignore[assignment]
        g = torch.Generator().manual_seed(seed + 17)
        free = torch.ones(len(ds), dtype=torch.bool)
        free[poison_idx] = False
        pool = torch.nonzero(free).flatten()
        n = min(len(pool), int(round(len(poison_idx) * p.cross_ratio)))
        idx = pool[torch.randperm(len(pool), generator=g)[:n]]
        if n == 0:
            return None
        x = to_float(ds.x[idx])
        h = x.shape[-1]
        grid = self._grid(h, x.device).expand(n, -1, -1, -1)
        grid = (grid + (torch.rand(n, h, h, 2, generator=g) * 2 - 1) / h).clamp(-1, 1)
        return idx, quantize(F.grid_sample(x, grid, align_corners=True))
