"""`lmc:<method>:<trigger>`: the backdoor-connected path (linear mode connectivity) from a
method's purified model to the submitted one, and λ50, where the ASR passes one half."""

from __future__ import annotations

from ...cost import lmc_work
from ...ppr.lmc import lambda50, trace_path
from ...report import LMCCurve
from ..stage import Stage, StageId, StageResult
from .base import Filling, Planner, StageKind, require_backdoor, subject_model


class LMC(StageKind):
    name = "lmc"
    gate_fields = ("lmc_lambda50",)

    def enabled(self, spec) -> bool:
        return spec.plan.lmc.enabled

    def chain(self, p: Planner, subject: str, trigger: int) -> list[Stage]:
        if subject in ("baseline", "model") or not self.enabled(p.spec):
            return []
        return [Stage(StageId("lmc", subject, p.labels[trigger]),
                      needs=(StageId("purify", subject),), trigger=trigger,
                      cost=lmc_work(p.spec, p.sizes, 1))]

    def run(self, stage, inputs, results, progress) -> StageResult:
        require_backdoor(inputs, results, stage)
        i, lm = stage.trigger, inputs.spec.plan.lmc
        path = trace_path(subject_model(stage, inputs, results), inputs.model,
                          inputs.clean_train, inputs.test, inputs.triggered(i),
                          inputs.backdoor_labels(i), points=lm.points, bn=lm.bn,
                          device=inputs.device, progress=progress, end=inputs.lmc_end(i),
                          batched=lm.batched_on(inputs.spec.device))
        return StageResult({"lambdas": [p.lam for p in path], "c_acc": [p.c_acc for p in path],
                            "asr": [p.asr for p in path],
                            "backdoor_error": [p.backdoor_error for p in path],
                            "lambda50": lambda50(path), "bn": lm.bn})

    def fill(self, f: Filling, stage, values) -> None:
        if (t := f.trigger(stage)) is not None:
            t.lmc = LMCCurve(**values)
