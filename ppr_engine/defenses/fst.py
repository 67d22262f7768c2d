"""FST, Feature Shift Tuning (Min et al., NeurIPS 2023), as the authors' `ft.py` runs it.

Re-initialize the head; minimize CE + alpha * <W, W_ori>_F over all parameters; after every
step project W back to the original norm ||W_ori||_F (the projection every FT-family mode
applies). Only the head weight enters the penalty (not its bias). Reference: alpha 0.1 (the
code's argument default is 0.2), SGD lr 0.01, momentum 0.9, no weight decay, cosine,
10 epochs, batch 128. Departure: the schedule decays per step, not per epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..models import head_of
from .base import DEFENSES, DefenseContext, Purified
from .ft import FTParams, tune


class FSTParams(FTParams):
    """FST parameters."""

    alpha: float = Field(0.1, ge=0, le=100, description="weight of the inner-product penalty")


def fst_penalty(weight: torch.Tensor, w_ori: torch.Tensor) -> torch.Tensor:
    """<W, W_ori>_F: pushes the new head away from the backdoored one."""
    return (weight * w_ori).sum()


@DEFENSES.register("fst", params=FSTParams, summary="FST: feature shift tuning",
                   tags=("mitigation",), reference=(
                       "Min et al., Towards Stable Backdoor Purification through Feature Shift "
                       "Tuning, NeurIPS 2023"))
def fst(model, ctx: DefenseContext, p: FSTParams) -> Purified:
    """Head re-init + inner-product penalty + norm projection after every step."""
    w_ori = head_of(model).weight.detach().clone()

    def loss(m, x, y):
        return F.cross_entropy(m(x), y) + p.alpha * fst_penalty(head_of(m).weight, w_ori)

    out = tune(model, ctx, p, reinit=True, train_head=True, train_body=True, stage="fst",
               loss_fn=loss)
    out.record.update(w_ori_norm=float(w_ori.norm()), final_inner_product=float(
        fst_penalty(head_of(model).weight.detach(), w_ori)))
    return out
