"""`baseline`: the RA/QRA reference model (the caller's clean reference, else the audit's
EP model, else EP built with default parameters), and its C-Acc and ASR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...checkpoint import load_model
from ...cost import evaluation_work
from ...defenses import DEFENSES, purify
from ...metrics import clean_accuracy
from ..stage import Stage, StageId, StageResult
from .base import Filling, Planner, StageKind, active, require_backdoor


def ep_key(spec) -> str | None:
    """The audit's EP method, which the baseline reuses as its model (None without one)."""
    return next((m.key for m in spec.plan.methods if m.name == "ep"), None)


class Baseline(StageKind):
    name = "baseline"

    def enabled(self, spec) -> bool:
        return bool(spec.triggers) and (spec.plan.retune.enabled or spec.plan.qra.enabled)

    def stages(self, p: Planner) -> list[Stage]:
        if not self.enabled(p.spec):
            return []
        ep = ep_key(p.spec)
        reuse = ep is not None and not p.spec.reference
        needs = (StageId("evaluate"),) + ((StageId("purify", ep),) if reuse else ())
        own = 0.0 if ep or p.spec.reference else DEFENSES.get("ep").parse({}).work(
            p.sizes.clean, p.sizes.classes)
        return [Stage(StageId("baseline"), needs=needs,
                      cost=own + evaluation_work(p.sizes, len(p.spec.triggers)))]

    def run(self, stage, inputs, results, progress) -> StageResult:
        require_backdoor(inputs, results, stage)
        spec = inputs.spec
        keep = active(results)
        values: dict[str, Any] = {}
        ep = ep_key(spec)
        if spec.reference:
            model = load_model(Path(spec.reference), spec.model.arch, spec.model.num_classes,
                               width=spec.model.width).to(inputs.device)
            values.update(kind="reference",
                          description=f"caller's clean reference {Path(spec.reference).name}")
        elif ep is not None:
            model = results.model(StageId("purify", ep))
            values.update(kind="ep", description=f"the EP model of this audit ({ep})",
                          model_stage=StageId("purify", ep))
        else:
            ctx = inputs.context(keep)
            ctx.progress = progress
            model = purify("ep", inputs.model, ctx, {}).model
            values.update(kind="ep", description="EP with default parameters, built for the "
                          "baseline")
        values["c_acc"] = clean_accuracy(model, inputs.test)
        values["asr"] = {inputs.labels[i]: inputs.asr(model, i) for i in keep}
        return StageResult(values, {} if "model_stage" in values else {"model": model})

    def fill(self, f: Filling, stage, values) -> None:
        info = f.report.baseline
        info.kind, info.description = values["kind"], values["description"]
        info.c_acc, info.asr = values["c_acc"], dict(values["asr"])
