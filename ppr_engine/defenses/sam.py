"""FT-SAM: fine-tuning with (adaptive) sharpness-aware minimization.

Step: gradient g at w; e = rho * w^2 * g / || |w| * g || (adaptive, ASAM) or
rho * g / ||g||; gradient g' at w + e on the same batch with BN running statistics frozen;
restore w and take the SGD step with g'. Loss: CE with label smoothing 0.1. Reference:
rho 2.0 adaptive, SGD lr 0.01, momentum 0.9, wd 5e-4, cosine.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..graphed_step import capture_autocast
from ..train import fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams


class SAMParams(TuneParams):
    """FT-SAM parameters."""

    rho: float = Field(2.0, gt=0, le=100)

    def work(self, n: int, classes: int) -> float:
        """Two passes per step."""
        return float(2 * self.epochs * n)
    adaptive: bool = True
    label_smoothing: float = Field(0.1, ge=0, lt=1)


def sam_perturbation(params: list[torch.Tensor], rho: float, adaptive: bool
                     ) -> list[torch.Tensor]:
    """The ascent step e for each parameter (zeros where there is no gradient), as a few
    foreach kernels with the norm kept on the device: no host read, so the step can be
    captured as one CUDA graph."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    weights = [p.detach() for p in params]
    scaled = torch._foreach_mul(torch._foreach_abs(weights), grads) if adaptive else grads
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
    ascent = torch._foreach_mul(torch._foreach_mul(weights, weights), grads) if adaptive \
        else grads
    return torch._foreach_mul(ascent, rho / (norm + 1e-12))


class SAMStep:
    """The SAM step on `model`'s trainable weights: gradient, ascent to w + e, gradient
    there with BatchNorm statistics frozen, restore w, optimizer step with that gradient.
    Device-side only, so `fit` may capture it as one CUDA graph (`graphed_step`)."""

    capture_safe = True

    def __init__(self, model: nn.Module, rho: float, adaptive: bool, device: torch.device
                 ) -> None:
        self.params = [q for q in model.parameters() if q.requires_grad]
        self.rho, self.adaptive, self.device = rho, adaptive, device

    def __call__(self, m, x, y, opt, loss_fn) -> None:
        with capture_autocast(self.device):
            loss = loss_fn(m, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            e = sam_perturbation(self.params, self.rho, self.adaptive)
            torch._foreach_add_(self.params, e)
        opt.zero_grad(set_to_none=True)
        old = _bn_momentum(m, 0.0)
        with capture_autocast(self.device):
            loss_fn(m, x, y).backward()
        _restore_bn(m, old)
        with torch.no_grad():
            torch._foreach_sub_(self.params, e)
        opt.step()


def _bn_momentum(model: nn.Module, value: float | None) -> list[float | None]:
    old = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            old.append(m.momentum)
            m.momentum = value
    return old


def _restore_bn(model: nn.Module, old: list[float | None]) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, v in zip(bns, old, strict=True):
        m.momentum = v


@DEFENSES.register("ft_sam", params=SAMParams, summary="FT-SAM: sharpness-aware fine-tuning",
                   tags=("mitigation",), reference=(
                       "Zhu et al., Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-"
                       "Aware Minimization, ICCV 2023; BackdoorBench defense/ft-sam.py"))
def ft_sam(model, ctx: DefenseContext, p: SAMParams) -> Purified:
    """Fine-tune with the SAM two-pass step."""
    step = SAMStep(model, p.rho, p.adaptive, ctx.device)
    fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        step_fn=step, label_smoothing=p.label_smoothing, stage="ft_sam", **p.fit_kwargs())
    return Purified(model)
