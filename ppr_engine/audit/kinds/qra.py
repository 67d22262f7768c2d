"""`qra:<subject>:<trigger>`: the Query-based Reactivation Attack against one model and
trigger, guided by its RA model at the reference budget and held off the baseline. Where
QRA is batched, the generator comes from the trigger's `qra-batch` stage (which plans these
stages after itself) and this stage computes its numbers."""

from __future__ import annotations

from ...cost import qra_work
from ...ppr import qra as qra_attack
from ...report import QRAResult
from ..stage import Stage, StageId, StageResult
from .base import Filling, Planner, StageKind, baseline_model, require_backdoor, subject_model
from .qra_batch import batched, guide_id


class QRA(StageKind):
    name = "qra"
    gate_fields = ("qra_asr", "qra_clean_to_target")

    def enabled(self, spec) -> bool:
        return spec.plan.qra.enabled

    def chain(self, p: Planner, subject: str, trigger: int) -> list[Stage]:
        if batched(p.spec):  # planned by `qra-batch`, after the batch
            return []
        return self.planned(p, subject, trigger)

    def planned(self, p: Planner, subject: str, trigger: int,
                batch: StageId | None = None) -> list[Stage]:
        """The subject's QRA stage for one trigger (taking its generator from `batch`)."""
        if subject == "baseline" or not self.enabled(p.spec) or not p.budgets:
            return []
        label = p.labels[trigger]
        base = (StageId("evaluate"),) if subject == "model" else (StageId("purify", subject),)
        needs = (base + (guide_id(p, subject, label), StageId("baseline"))
                 + ((batch,) if batch else ()))
        return [Stage(StageId("qra", subject, label), needs=needs, trigger=trigger,
                      cost=qra_work(p.spec, p.sizes, training=batch is None))]

    def run(self, stage, inputs, results, progress) -> StageResult:
        require_backdoor(inputs, results, stage)
        i = stage.trigger
        purified, reference = subject_model(stage, inputs, results), baseline_model(results)
        batch = next((n for n in stage.needs if n.kind == "qra-batch"), None)
        if batch is not None:
            name = results.values(batch)["subjects"][stage.method]["generator"]
            q = qra_attack.qra_outcome(results.model(batch, name), purified, reference,
                                       inputs.test, inputs.triggered(i), inputs.triggers[i],
                                       inputs.device)
        else:
            guide = next(s for s in stage.needs if s.kind == "retune")
            q = qra_attack.run_qra(purified, results.model(guide, "retuned"), reference,
                                   inputs.pool, inputs.test, inputs.triggered(i),
                                   inputs.triggers[i], inputs.spec.plan.qra,
                                   device=inputs.device, seed=inputs.spec.seed + 7,
                                   progress=progress)
        return StageResult({"asr": q.asr, "clean_to_target": q.clean_to_target,
                            "ref_asr": q.ref_asr, "ref_clean_to_target": q.ref_clean_to_target},
                           {"generator": q.generator})

    def fill(self, f: Filling, stage, values) -> None:
        if (t := f.trigger(stage)) is not None:
            t.qra = QRAResult(**values)
