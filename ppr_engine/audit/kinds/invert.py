"""`invert:<trigger>`: learn an unknown trigger from the submitted model on the defender's
data (the `inverted` attack); later stages attack what it found."""

from __future__ import annotations

from ..stage import Stage, StageId, StageResult
from .base import Planner, StageKind


class Invert(StageKind):
    name = "invert"

    def stages(self, p: Planner) -> list[Stage]:
        out = []
        for i, t in enumerate(p.spec.triggers):
            if t.attack != "inverted":
                continue
            params = t.parsed()
            out.append(Stage(StageId("invert", label=p.labels[i]), trigger=i,
                             cost=params.inversion.work(p.sizes.clean, p.sizes.classes,
                                                        params.rounds)))
        return out

    def run(self, stage, inputs, results, progress) -> StageResult:
        trigger = inputs.triggers[stage.trigger]
        ctx = inputs.context([])
        ctx.progress = progress
        trigger.learn(inputs.model, ctx)
        values, modules = trigger.learned()
        return StageResult(values, modules)
