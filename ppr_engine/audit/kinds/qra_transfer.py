"""`qra-transfer`: each method's QRA perturbation applied to every other method's model
(does one method's reactivation carry over?)."""

from __future__ import annotations

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
        out: dict[str, dict[str, dict[str, float]]] = {}
        for sid in stage.after:
            if not results.ok(sid):
                continue
            i = inputs.labels.index(sid.label)
            gen = results.model(sid, "generator")
            assert isinstance(gen, PerturbationGenerator)
            out.setdefault(sid.method, {})[sid.label] = {
                dst: qra_asr(gen, results.model(StageId("purify", dst)), inputs.triggered(i),
                             inputs.triggers[i], inputs.device)
                for dst in keys if dst != sid.method and results.ok(StageId("purify", dst))}
        return StageResult({"transfer": out})

    def fill(self, f: Filling, stage, values) -> None:
        transfer = values["transfer"]
        for m in f.methods.values():
            for t in m.per_trigger:
                if t.qra is not None:
                    t.qra.transfer = dict(transfer.get(m.key, {}).get(t.trigger, {}))
