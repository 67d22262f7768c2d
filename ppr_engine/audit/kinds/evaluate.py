"""`evaluate`: the submitted model's C-Acc and each trigger's ASR, and which triggers the
later stages attack (an inverted trigger only when its inversion found a backdoor)."""

from __future__ import annotations

from ...cost import evaluation_work
from ...metrics import clean_accuracy
from ...report import InversionResult, ModelResult
from ..stage import Stage, StageId, StageResult
from .base import Filling, Planner, StageKind


class Evaluate(StageKind):
    name = "evaluate"

    def stages(self, p: Planner) -> list[Stage]:
        return [Stage(StageId("evaluate"), after=p.ids("invert"),
                      cost=evaluation_work(p.sizes, len(p.spec.triggers)))]

    def run(self, stage, inputs, results, progress) -> StageResult:
        keep, asr, inversions = [], {}, []
        for i, (label, t) in enumerate(zip(inputs.labels, inputs.triggers, strict=True)):
            if t.learns_from_model:
                if not results.ok(StageId("invert", label=label)):
                    continue
                value = inputs.asr(inputs.model, i)
                inversions.append(t.inversion.model_copy(update={
                    "trigger": label, "asr": value}).model_dump(mode="json"))
                if not t.found:  # what the generator reaches is no backdoor's ASR
                    continue
            else:
                value = inputs.asr(inputs.model, i)
            asr[label] = value
            keep.append(i)
        return StageResult({"c_acc": clean_accuracy(inputs.model, inputs.test), "asr": asr,
                            "active": keep, "inversions": inversions})

    def fill(self, f: Filling, stage, values) -> None:
        report = f.report
        report.model = ModelResult(c_acc=values.get("c_acc"), asr=dict(values.get("asr", {})))
        report.inversions = [InversionResult.model_validate(v)
                             for v in values.get("inversions", [])]
        if report.inversions:
            report.model.backdoors_found = sum(inv.found for inv in report.inversions)
