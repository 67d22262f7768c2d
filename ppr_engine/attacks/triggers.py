"""Simple additive triggers: BadNets (patch), Blended (image or seeded noise), SIG, LC's
corner checkerboard. Defaults follow BackdoorBench's CIFAR-10 configs (METHODS.md §2)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ..bounds import seed_field
from ..errors import DatasetError
from .base import ATTACKS, Trigger, TriggerParams

_Unit = Annotated[float, Field(ge=0, le=1)]


class BadNetsParams(TriggerParams):
    """BadNets: a solid patch; default 3x3 white at the bottom-right corner."""

    size: int = Field(3, ge=1, le=64, description="patch side in pixels")
    row: int | None = Field(None, ge=0, le=4096, description="top row of the patch; default: "
                            "bottom edge")
    col: int | None = Field(None, ge=0, le=4096, description="left column of the patch; "
                            "default: right edge")
    color: tuple[_Unit, _Unit, _Unit] = Field((1.0, 1.0, 1.0), description="RGB in [0, 1]")


@ATTACKS.register("badnets", params=BadNetsParams, summary="BadNets: solid patch trigger")
class BadNets(Trigger):
    """Paste a solid square patch."""

    Params = BadNetsParams

    def apply(self, x, index=None, split="test"):
        p: BadNetsParams = self.params  # type: ignore[assignment]
        h, w = x.shape[-2:]
        r = h - p.size if p.row is None else p.row
        c = w - p.size if p.col is None else p.col
        out = x.clone()
        color = torch.tensor(p.color, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        out[:, :, r:r + p.size, c:c + p.size] = color
        return out


class BlendedParams(TriggerParams):
    """Blended: x' = (1 - alpha) x + alpha pattern."""

    alpha: float = Field(0.2, gt=0, le=1, description="blend ratio (train and test)")
    image: str | None = Field(None, max_length=4096, description="data reference of the "
                              "pattern image (its first image), e.g. image:/data/kitty.png or, "
                              "on the service, dataset:<id>; default: seeded uniform noise")
    pattern_seed: int = seed_field(0, "seed of the noise pattern")

    @field_validator("image")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        """A path is a data reference, confined like every other one on a service."""
        if v is not None:
            from ..data.refs import parse_ref

            try:
                parse_ref(v)
            except DatasetError as exc:
                raise ValueError(f"{exc}; a pattern file is named as image:PATH") from None
        return v


@ATTACKS.register("blended", params=BlendedParams, summary="Blended: image/noise blending")
class Blended(Trigger):
    """Blend a full-size pattern into the image."""

    Params = BlendedParams

    def __init__(self, params: BlendedParams) -> None:
        super().__init__(params)
        self._image: torch.Tensor | None = None  # the pattern's pixels once loaded

    def data_refs(self) -> list[str]:
        p: BlendedParams = self.params  # type: ignore[assignment]
        return [p.image] if p.image else []

    def bind(self, load) -> None:
        """Read the pattern through the audit's loader (a server's data roots apply)."""
        p: BlendedParams = self.params  # type: ignore[assignment]
        if p.image:
            self._image = load(p.image).x[0]

    def _pattern(self, h: int, w: int, device) -> torch.Tensor:
        p: BlendedParams = self.params  # type: ignore[assignment]
        if p.image:
            if self._image is None:  # outside an audit (the CLI): the local loader
                from ..data import load

                self._image = load(p.image).x[0]
            pat = self._image.float()[None] / 255
            if pat.shape[-2:] != (h, w):
                pat = F.interpolate(pat, size=(h, w), mode="bilinear", align_corners=False)
            return pat.to(device)
        g = torch.Generator().manual_seed(p.pattern_seed)
        return torch.rand(3, h, w, generator=g).unsqueeze(0).to(device)

    def apply(self, x, index=None, split="test"):
        a = self.params.alpha  # type: ignore[attr-defined]
        return (1 - a) * x + a * self._pattern(*x.shape[-2:], x.device)


class SIGParams(TriggerParams):
    """SIG: horizontal sinusoid, clean-label."""

    delta: float = Field(40.0, gt=0, le=255, description="amplitude in 8-bit units")
    freq: float = Field(6.0, gt=0, le=1000, description="periods across the width")


@ATTACKS.register("sig", params=SIGParams, summary="SIG: sinusoidal signal, clean-label")
class SIG(Trigger):
    """Add `delta * sin(2 pi j f / W)` to every row and channel."""

    Params = SIGParams
    clean_label = True

    def apply(self, x, index=None, split="test"):
        p: SIGParams = self.params  # type: ignore[assignment]
        w = x.shape[-1]
        j = torch.arange(w, device=x.device, dtype=x.dtype)
        signal = (p.delta / 255.0) * torch.sin(2 * math.pi * j * p.freq / w)
        return (x + signal.view(1, 1, 1, w)).clamp(0, 1)


_LC_PATTERN = torch.tensor([[1, -1, -1], [-1, 1, -1], [1, -1, 1]], dtype=torch.float32)


def lc_corner_trigger(x: torch.Tensor, amplitude: float) -> torch.Tensor:
    """LC's 3x3 +/-1 checkerboard in the four corners (right corners mirrored)."""
    h, w = x.shape[-2:]
    mask = torch.zeros(h, w, device=x.device, dtype=x.dtype)
    left = _LC_PATTERN.to(x.device, x.dtype)
    right = left.flip(1)
    mask[:3, :3] = left
    mask[h - 3:, :3] = left
    mask[:3, w - 3:] = right
    mask[h - 3:, w - 3:] = right
    return (x + amplitude * mask).clamp(0, 1)


def pgd_untargeted(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                   step: float, steps: int, batch_size: int = 512) -> torch.Tensor:
    """L-inf PGD (no random start) maximizing CE of the true label, in [0, 1] space."""
    model.eval()
    out = []
    for s in range(0, len(x), batch_size):
        x0, yb = x[s:s + batch_size], y[s:s + batch_size]
        adv = x0.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), yb)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = (x0 + (adv.detach() + step * grad.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
        out.append(adv.detach())
    return torch.cat(out)
