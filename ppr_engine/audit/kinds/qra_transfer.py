"""`qra-transfer`: each method's QRA perturbation applied to every other method's model
(does one method's reactivation carry over?). Where QRA is batched, the models of one
structure are evaluated together on each perturbed set (`batched_qra.transfer_asrs`)."""

from __future__ import annotations

from ...ppr.batched_qra import transfer_asrs
from ...ppr.qra import PerturbationGenerator, qra_asr
from ..stage import Stage, StageId, StageResult
from .base import Filling, Planner, StageKind


class QRATransfer(StageKind):
    name = "qra-transfer"

    def stages(self, p: Planner) -> list[Stage]:
        qras = p.ids("qra")
        keys = p.method_keys
        if not qras or not p.spec.plan.qra.transfer or len(keys) < 2:
            return []
        return [Stage(StageId("qra-transfer"), after=qras,
                      needs=tuple(StageId("purify", k) for k in keys),
                      cost=len(qras) * (len(keys) - 1) * p.sizes.test / 3)]

    def run(self, stage, inputs, results, progress) -> StageResult:
        keys = [m.key for m in inputs.spec.plan.methods]
        together = inputs.spec.plan.qra.batched_on(inputs.spec.device)
        out: dict[str, dict[str, dict[str, float]]] = {}
        for sid in stage.after:
            if not results.ok(sid):
                continue
            i = inputs.labels.index(sid.label)
            gen = results.model(sid, "generator")
            assert isinstance(gen, PerturbationGenerator)
            dsts = [k for k in keys if k != sid.method and results.ok(StageId("purify", k))]
            models = [results.model(StageId("purify", k)) for k in dsts]
            triggered, trigger = inputs.triggered(i), inputs.triggers[i]
            asrs = (transfer_asrs(gen, models, triggered, trigger, inputs.device) if together
                    else [qra_asr(gen, m, triggered, trigger, inputs.device) for m in models])
            out.setdefault(sid.method, {})[sid.label] = dict(zip(dsts, asrs, strict=True))
        return StageResult({"transfer": out})

    def fill(self, f: Filling, stage, values) -> None:
        transfer = values["transfer"]
        for m in f.methods.values():
            for t in m.per_trigger:
                if t.qra is not None:
                    t.qra.transfer = dict(transfer.get(m.key, {}).get(t.trigger, {}))
