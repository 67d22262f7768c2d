"""FST, Feature Shift Tuning (Min et al., NeurIPS 2023).

Re-initialize the head; minimize CE + alpha * <W, W_ori>_F over all parameters; after every
step project W back to the original norm ||W_ori||_F. Only the head weight enters the
penalty (not its bias). Reference: alpha 0.1, SGD lr 0.01, momentum 0.9, no weight decay,
cosine, 10 epochs, batch 128.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..train import fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams, reinit_head


class FSTParams(TuneParams):
    """FST parameters."""

    alpha: float = Field(0.1, ge=0, description="weight of the inner-product penalty")
    weight_decay: float = Field(0.0, ge=0)


def fst_penalty(weight: torch.Tensor, w_ori: torch.Tensor) -> torch.Tensor:
    """<W, W_ori>_F: pushes the new head away from the backdoored one."""
    return (weight * w_ori).sum()


def project_norm(weight: torch.Tensor, norm: torch.Tensor) -> None:
    """In place: W <- W * norm / ||W||_F."""
    with torch.no_grad():
        weight.mul_(norm / weight.norm())


@DEFENSES.register("fst", params=FSTParams, summary="FST: feature shift tuning")
def fst(model, ctx: DefenseContext, p: FSTParams) -> Purified:
    """Head re-init + inner-product penalty + norm projection after every step."""
    from ..models import head_of

    w_ori = head_of(model).weight.detach().clone()
    norm = w_ori.norm()
    head = reinit_head(model, ctx.seed)
    project_norm(head.weight, norm)

    def loss(m, x, y):
        return F.cross_entropy(m(x), y) + p.alpha * fst_penalty(head.weight, w_ori)

    fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        loss_fn=loss, after_step=lambda: project_norm(head.weight, norm), stage="fst",
        **p.fit_kwargs())
    return Purified(model, {"w_ori_norm": float(norm), "final_inner_product": float(
        fst_penalty(head.weight.detach(), w_ori))})
