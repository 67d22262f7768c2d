"""NAD, Neural Attention Distillation: a fine-tuned teacher guides the backdoored student
through attention maps at the last three stages.

Attention map of F (N x C x H x W): sum over channels of |F|^p, flattened and normalized
per sample; loss = CE + sum_i beta_i * MSE(student map_i, teacher map_i). Reference:
betas 500, 1000, 1000; p 2; teacher 10 epochs; student SGD lr 0.01 constant.
"""

from __future__ import annotations

import copy
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from ..bounds import budget
from ..models import architecture, submodule
from ..train import fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams

_Beta = Annotated[float, Field(ge=0, le=1e6)]


class NADParams(TuneParams):
    """NAD parameters."""

    teacher_epochs: int = budget("epochs", 10)
    betas: tuple[_Beta, _Beta, _Beta] = (500.0, 1000.0, 1000.0)
    p: float = Field(2.0, gt=0, le=10)

    def work(self, n: int, classes: int) -> float:
        """Teacher epochs, then student epochs (with the teacher's forward pass)."""
        return float((self.teacher_epochs + self.epochs * 4 / 3) * n)


def attention_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample normalized attention: channel-summed |F|^p (tokens for ViT blocks)."""
    a = feat.abs().pow(p)
    a = a.sum(1) if a.dim() == 4 else a.sum(-1)
    return F.normalize(a.flatten(1), dim=1, eps=1e-6)


class StageTap:
    """Forward hooks that keep the outputs of the named stages of a model."""

    def __init__(self, model, names: tuple[str, ...]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [submodule(model, n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(module, args, output):
            self.outputs[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self.handles:
            h.remove()


@DEFENSES.register("nad", params=NADParams, summary="NAD: neural attention distillation",
                   tags=("mitigation",), reference=(
                       "Li et al., Neural Attention Distillation, ICLR 2021; BackdoorBench "
                       "defense/nad.py"))
def nad(model, ctx: DefenseContext, p: NADParams) -> Purified:
    """Fine-tune a teacher, then distill its attention into the backdoored model."""
    teacher = copy.deepcopy(model)
    teacher_kw = {**p.fit_kwargs(), "epochs": p.teacher_epochs}
    fit(teacher, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        stage="nad teacher", **teacher_kw)
    teacher.eval()
    stages = architecture(model.arch_name).stages
    t_tap, s_tap = StageTap(teacher, stages), StageTap(model, stages)

    def loss(m, x, y):
        logits = m(x)
        with torch.no_grad():
            teacher(x)
        total = F.cross_entropy(logits, y)
        for beta, name in zip(p.betas, stages, strict=True):
            total = total + beta * F.mse_loss(attention_map(s_tap.outputs[name], p.p),
                                              attention_map(t_tap.outputs[name], p.p).detach())
        return total

    try:
        fit(model, ctx.clean, device=ctx.device, seed=ctx.seed + 1, progress=ctx.progress,
            loss_fn=loss, schedule="constant", stage="nad", **p.fit_kwargs())
    finally:
        t_tap.remove()
        s_tap.remove()
    return Purified(model, {"stages": list(stages)})
