"""`qra-batch:<subjects>:<trigger>`: QRA's generator trained against every method's model
(or the submitted model) at once, as one vmapped training (`ppr_engine.ppr.batched_qra`);
planned where `QRASpec.batched_on` says so (by default on CUDA).

Every QRA of a trigger trains from the same initial generator, on the same set, in the same
batch order, held off by the same reference model (the baseline), so only the purified and
the retuned models differ. Each subject's own `qra` stage then takes its generator from here
and computes its four numbers, so the report, the transfer and the gate read the same
stages either way. Those `qra` stages are planned here, after the batch, because the batch
waits for every subject's RA model (the plan runs in order). A subject whose model or RA
model is missing is left out, and its `qra` stage is skipped as it is without batching.
"""

from __future__ import annotations

from ...cost import qra_work
from ...ppr.batched_qra import train_qra_together
from ...ppr.qra import qra_training_set
from ..stage import Stage, StageId, StageResult
from .base import Planner, StageKind, baseline_model, require_backdoor, subject_model_of
from .retune_batch import attacked, source, sources


def batched(spec) -> bool:
    """Whether this spec's QRA stages train their generators together."""
    q, rs = spec.plan.qra, spec.plan.retune
    return q.enabled and rs.enabled and bool(spec.triggers) and q.batched_on(spec.device)


def batch_id(spec, label: str) -> StageId:
    """`qra-batch:<subjects joined by +>:<trigger>` (the subjects in the id keep the
    attempts of a purification until robust apart, as `retune-batch` does)."""
    return StageId("qra-batch", "+".join(attacked(spec)), label)


def guide_id(p: Planner, subject: str, label: str) -> StageId:
    """The RA stage whose model guides a subject's QRA: the reference budget's."""
    return StageId("retune", subject, label, p.budgets[0].key)


class QRABatch(StageKind):
    name = "qra-batch"

    def enabled(self, spec) -> bool:
        return batched(spec)

    def stages(self, p: Planner) -> list[Stage]:
        from . import KINDS

        if not self.enabled(p.spec) or not p.budgets:
            return []
        who = attacked(p.spec)
        out = [Stage(batch_id(p.spec, label), needs=(StageId("evaluate"), StageId("baseline")),
                     after=sources(who) + tuple(guide_id(p, s, label) for s in who), trigger=i,
                     cost=len(who) * qra_work(p.spec, p.sizes, numbers=False))
               for i, label in enumerate(p.labels)]
        qra = KINDS["qra"]
        for s in who:
            for i, label in enumerate(p.labels):
                out += qra.planned(p, s, i, batch=batch_id(p.spec, label))
        return out

    def run(self, stage, inputs, results, progress) -> StageResult:
        """Each present subject's generator, named in its values."""
        require_backdoor(inputs, results, stage)
        i = stage.trigger
        assert i is not None
        guides = {sid.method: sid for sid in stage.after if sid.kind == "retune"}
        present = [s for s in attacked(inputs.spec)
                   if ((sid := source(s)) is None or results.ok(sid)) and results.ok(guides[s])]
        if not present:
            return StageResult({"subjects": {}})
        q, seed = inputs.spec.plan.qra, inputs.spec.seed + 7
        gens = train_qra_together(
            [subject_model_of(s, inputs, results) for s in present],
            [results.model(guides[s], "retuned") for s in present], baseline_model(results),
            qra_training_set(inputs.pool, inputs.triggers[i], q, seed), q,
            device=inputs.device, seed=seed, progress=progress)
        names = {s: f"generator-{j}" for j, s in enumerate(present)}
        return StageResult({"subjects": {s: {"generator": n} for s, n in names.items()}},
                           {names[s]: g for s, g in zip(present, gens, strict=True)})
