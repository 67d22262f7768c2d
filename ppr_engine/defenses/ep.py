"""EP, Exact Purification (an oracle): fine-tune on the clean set with a share of each batch
replaced by real triggered images carrying their correct labels. It needs the trigger,
so it is the upper bound the paper compares against, not a deployable defense."""

from __future__ import annotations

from pydantic import Field

from ..errors import SpecError
from ..train import fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams, replace_share, triggers_fn


class EPParams(TuneParams):
    """EP parameters."""

    ratio: float = Field(0.2, gt=0, lt=1, description="share of each batch triggered "
                         "(true labels kept)")


@DEFENSES.register("ep", params=EPParams, summary="EP: exact purification (oracle, needs "
                   "the trigger)",
                   tags=("oracle",), reference=(
                       "Min et al., Uncovering, Explaining, and Mitigating the Superficial Safety "
                       "of Backdoor Defense, NeurIPS 2024 (exact purification: needs the trigger)"))
def ep(model, ctx: DefenseContext, p: EPParams) -> Purified:
    """Unlearn with real triggered samples under their true labels."""
    if not ctx.triggers:
        raise SpecError("ep needs the trigger: give at least one entry in `triggers`")
    fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        transform=replace_share(triggers_fn(ctx.triggers, ctx.clean.split), p.ratio),
        stage="ep", **p.fit_kwargs())
    return Purified(model, {"triggers": [type(t).__name__ for t in ctx.triggers]})
