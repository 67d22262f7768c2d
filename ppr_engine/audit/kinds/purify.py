"""`purify:<method>`: run one defense on the submitted model; its O-C-Acc, and each active
trigger's O-ASR and DER."""

from __future__ import annotations

from ...cost import evaluation_work
from ...defenses import purify
from ...metrics import clean_accuracy, der
from ...report import TriggerResult
from ..stage import Stage, StageId, StageResult
from .base import Filling, Planner, StageKind, active, require_backdoor


def _known_targets(inputs) -> list[int]:
    """The targets of the audit's known all-to-one triggers (what an inversion should find)."""
    return sorted({t.target for t in inputs.triggers
                   if not t.learns_from_model and not t.all_to_all})


class Purify(StageKind):
    name = "purify"

    def stages(self, p: Planner) -> list[Stage]:
        return [Stage(StageId("purify", m.key), needs=(StageId("evaluate"),),
                      cost=m.parsed().work(p.sizes.clean, p.sizes.classes)
                      + evaluation_work(p.sizes, len(p.spec.triggers)))
                for m in p.spec.plan.methods]

    def run(self, stage, inputs, results, progress) -> StageResult:
        require_backdoor(inputs, results, stage)
        ms = next(m for m in inputs.spec.plan.methods if m.key == stage.method)
        keep = active(results)
        ctx = inputs.context(keep)
        ctx.progress = progress
        out = purify(ms.name, inputs.model, ctx, ms.parsed())
        record = {k: v for k, v in out.record.items() if k != "params"}
        det, known = record.get("detection"), _known_targets(inputs)
        if det is not None and known:  # the report can say whether the inversion was right
            det["audit_targets"] = known
        model_eval = results.values("evaluate")
        o_cacc = clean_accuracy(out.model, inputs.test)
        per_trigger = []
        for i in keep:
            label = inputs.labels[i]
            o_asr = inputs.asr(out.model, i)
            per_trigger.append({"trigger": label, "o_asr": o_asr, "der": der(
                model_eval["asr"][label], o_asr, model_eval["c_acc"], o_cacc)})
        return StageResult({"record": record, "o_cacc": o_cacc, "per_trigger": per_trigger,
                            "params": ms.parsed().model_dump(mode="json")},
                           {"model": out.model})

    def fill(self, f: Filling, stage, values) -> None:
        res = f.methods[stage.method]
        res.record, res.o_cacc = values["record"], values["o_cacc"]
        res.per_trigger = [TriggerResult(**t) for t in values["per_trigger"]]
