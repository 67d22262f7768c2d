"""Fine-tuning baselines: FT (all parameters), and the FST paper's LP, FT-init, FE-tuning."""

from __future__ import annotations

from ..models import head_of
from ..train import fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams, reinit_head


def _tune(model, ctx: DefenseContext, p: TuneParams, params=None, stage: str = "ft"):
    return fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
               params=params, stage=stage, **p.fit_kwargs())


@DEFENSES.register("ft", params=TuneParams, summary="FT: vanilla fine-tuning of all parameters")
def ft(model, ctx: DefenseContext, p: TuneParams) -> Purified:
    """Fine-tune every parameter with CE on the clean set."""
    return Purified(_tune(model, ctx, p))


@DEFENSES.register("lp", params=TuneParams,
                   summary="LP: re-initialize the head and train the head only")
def lp(model, ctx: DefenseContext, p: TuneParams) -> Purified:
    """Linear probing: the extractor (and its backdoor features) stays as it was."""
    head = reinit_head(model, ctx.seed)
    return Purified(_tune(model, ctx, p, params=head.parameters(), stage="lp"))


@DEFENSES.register("ft_init", params=TuneParams,
                   summary="FT-init: re-initialize the head, tune everything")
def ft_init(model, ctx: DefenseContext, p: TuneParams) -> Purified:
    """Head re-initialization followed by full fine-tuning."""
    reinit_head(model, ctx.seed)
    return Purified(_tune(model, ctx, p, stage="ft_init"))


@DEFENSES.register("fe_tuning", params=TuneParams,
                   summary="FE-tuning: re-initialize and freeze the head, tune the extractor")
def fe_tuning(model, ctx: DefenseContext, p: TuneParams) -> Purified:
    """Feature-extractor tuning against a frozen random head."""
    head = reinit_head(model, ctx.seed)
    frozen = {id(q) for q in head.parameters()}
    params = [q for q in model.parameters() if id(q) not in frozen]
    for q in head_of(model).parameters():
        q.requires_grad_(False)
    out = _tune(model, ctx, p, params=params, stage="fe_tuning")
    for q in head_of(model).parameters():
        q.requires_grad_(True)
    return Purified(out)
