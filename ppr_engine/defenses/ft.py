"""Fine-tuning baselines: FT (all parameters), and the FST paper's LP, FT-init, FE-tuning.

As the authors' `fine_tune/ft.py` runs them: LP keeps the original head and tunes it alone;
FT-init and FE-tuning re-initialize the head (U(+-1/sqrt(d_in)) for weight and bias); no
weight decay; SGD momentum 0.9 with a cosine schedule; and in every mode the head's weight
is projected back to its original Frobenius norm ||W_ori|| after every step.

Departures: the cosine schedule decays per step rather than per epoch (same endpoints);
`project_head_norm` can turn the projection off for comparisons with BackdoorBench's FT,
which has none.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..models import head_of
from ..train import fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams, reinit_head


class FTParams(TuneParams):
    """The FT family's parameters (the authors' values)."""

    weight_decay: float = Field(0.0, ge=0, le=1)
    project_head_norm: bool = Field(True, description="rescale the head's weight to its "
                                    "original norm after every step (the authors' code)")


def project_norm(weight: torch.Tensor, norm: torch.Tensor) -> None:
    """In place: W <- W * norm / ||W||_F."""
    with torch.no_grad():
        weight.mul_(norm / weight.norm())


def head_norm_projection(model, p: FTParams):
    """An `after_step` hook keeping the head at its original norm, or None when off."""
    head = head_of(model)
    norm = head.weight.detach().norm().clone()
    if not p.project_head_norm:
        return None
    return lambda: project_norm(head.weight, norm)


def tune(model, ctx: DefenseContext, p: FTParams, *, reinit: bool, train_head: bool,
         train_body: bool, stage: str, **fit_kw) -> Purified:
    """The one recipe of the family: which parts are re-initialized and which are trained."""
    after_step = head_norm_projection(model, p)  # the norm of the *original* head
    head = reinit_head(model, ctx.seed) if reinit else head_of(model)
    head_ids = {id(q) for q in head.parameters()}
    trained = [q for q in model.parameters()
               if (id(q) in head_ids and train_head) or (id(q) not in head_ids and train_body)]
    trained_ids = {id(q) for q in trained}
    frozen = [q for q in model.parameters() if id(q) not in trained_ids]
    for q in frozen:
        q.requires_grad_(False)
    try:
        fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
            params=trained, stage=stage, after_step=after_step, **{**p.fit_kwargs(), **fit_kw})
    finally:
        for q in frozen:
            q.requires_grad_(True)
    return Purified(model, {"head_reinitialized": reinit, "head_norm_projected":
                            p.project_head_norm})


@DEFENSES.register("ft", params=FTParams, summary="FT: vanilla fine-tuning of all parameters",
                   tags=("mitigation",), reference=(
                       "Min et al., Towards Stable Backdoor Purification through Feature Shift "
                       "Tuning, NeurIPS 2023 (FT baseline)"))
def ft(model, ctx: DefenseContext, p: FTParams) -> Purified:
    """Fine-tune every parameter with CE on the clean set."""
    return tune(model, ctx, p, reinit=False, train_head=True, train_body=True, stage="ft")


@DEFENSES.register("lp", params=FTParams,
                   summary="LP: linear probing, the original head tuned alone",
                   tags=("mitigation",), reference=(
                       "Min et al., NeurIPS 2023 (FST paper's LP baseline)"))
def lp(model, ctx: DefenseContext, p: FTParams) -> Purified:
    """Linear probing: the extractor (and its backdoor features) stays as it was."""
    return tune(model, ctx, p, reinit=False, train_head=True, train_body=False, stage="lp")


@DEFENSES.register("ft_init", params=FTParams,
                   summary="FT-init: re-initialize the head, tune everything",
                   tags=("mitigation",), reference=(
                       "Min et al., NeurIPS 2023 (FST paper's FT-init baseline)"))
def ft_init(model, ctx: DefenseContext, p: FTParams) -> Purified:
    """Head re-initialization followed by full fine-tuning."""
    return tune(model, ctx, p, reinit=True, train_head=True, train_body=True, stage="ft_init")


@DEFENSES.register("fe_tuning", params=FTParams,
                   summary="FE-tuning: re-initialize and freeze the head, tune the extractor",
                   tags=("mitigation",), reference=(
                       "Min et al., NeurIPS 2023 (FST paper's FE-tuning baseline)"))
def fe_tuning(model, ctx: DefenseContext, p: FTParams) -> Purified:
    """Feature-extractor tuning against a frozen random head."""
    return tune(model, ctx, p, reinit=True, train_head=False, train_body=True,
                stage="fe_tuning")
