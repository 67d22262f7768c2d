"""PAM, Path-Aware Minimization (Min et al., NeurIPS 2024), as METHODS.md §3 states it.

Reference point theta_bd (the backdoored weights, copied before purification). Each step:
d = theta_bd - theta over the trainable parameters (BN running statistics are buffers and
are not moved); theta~ = theta + rho * d / ||d||_2 (global norm, so rho is an absolute step
toward theta_bd; at the first step d = 0 and the step is plain SGD); g = grad CE at theta~;
restore theta exactly and take the base optimizer's step with g. Data: BTI-DBF's unlearning
data (a share of each batch replaced by G(x), true labels) or, with `data: trigger`, real
triggered images with true labels (EP data). Reference: rho 0.5, SGD lr 0.01, momentum
0.1 (as METHODS.md gives it), no weight decay, 30 epochs, 3 BTI rounds, batch 128.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import SpecError
from ..train import autocast, fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams, replace_share, triggers_fn
from .bti import InversionParams, invert


class PAMParams(TuneParams):
    """PAM parameters."""

    rho: float = Field(0.5, ge=0, description="step length toward theta_bd")
    epochs: int = Field(30, ge=1)
    momentum: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    ratio: float = Field(0.2, gt=0, lt=1, description="share of each batch replaced by "
                         "reversed (or triggered) samples")
    data: Literal["bti", "trigger"] = Field("bti", description="unlearning data: BTI-DBF "
                                            "inverted samples, or the real trigger")
    inversion: InversionParams = Field(default_factory=InversionParams)


def path_shift(params: list[torch.Tensor], reference: list[torch.Tensor], rho: float
               ) -> list[torch.Tensor]:
    """rho * d / ||d||_2 with d = reference - params (zeros when d = 0)."""
    d = [r - q.detach() for q, r in zip(params, reference, strict=True)]
    norm = torch.sqrt(sum((x.float() ** 2).sum() for x in d))
    if float(norm) == 0.0:
        return [torch.zeros_like(x) for x in d]
    return [rho * x / norm for x in d]


class PAMStep:
    """The PAM step: gradient at the shifted point, update at the restored point."""

    def __init__(self, model: nn.Module, reference: nn.Module, rho: float,
                 device: torch.device) -> None:
        named_ref = dict(reference.named_parameters())
        self.names = [n for n, q in model.named_parameters() if q.requires_grad]
        self.params = [q for n, q in model.named_parameters() if q.requires_grad]
        self.reference = [named_ref[n].detach().clone() for n in self.names]
        self.rho = rho
        self.device = device
        self.last_shift: list[torch.Tensor] = []

    def __call__(self, model, x, y, opt, loss_fn) -> None:
        saved = [q.detach().clone() for q in self.params]
        shift = path_shift(self.params, self.reference, self.rho)
        self.last_shift = shift
        with torch.no_grad():
            for q, s in zip(self.params, shift, strict=True):
                q.add_(s)
        opt.zero_grad(set_to_none=True)
        with autocast(self.device):
            loss = loss_fn(model, x, y)
        loss.backward()
        with torch.no_grad():
            for q, s in zip(self.params, saved, strict=True):
                q.copy_(s)
        opt.step()


@DEFENSES.register("pam", params=PAMParams, summary="PAM: path-aware minimization")
def pam(model, ctx: DefenseContext, p: PAMParams) -> Purified:
    """Unlearn while asking for low loss at a point moved toward theta_bd."""
    import copy

    reference = copy.deepcopy(model).eval()
    record: dict = {"data": p.data}
    if p.data == "trigger":
        if not ctx.triggers:
            raise SpecError("pam with data: trigger needs a trigger in `triggers`")
        fn = triggers_fn(ctx.triggers)
    else:
        inv = invert(reference, ctx, p.inversion)
        fn = inv["generator"]
        record["detected_target"] = inv["target"]
    step = PAMStep(model, reference, p.rho, ctx.device)
    fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        transform=replace_share(fn, p.ratio), step_fn=step, stage="pam", **p.fit_kwargs())
    distance = torch.sqrt(sum(((q.detach() - r) ** 2).sum() for q, r in zip(
        step.params, step.reference, strict=True)))
    record["distance_to_bd"] = float(distance)
    return Purified(model, record)
