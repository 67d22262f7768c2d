"""`retune:<subject>:<trigger>:<budget>`: the Retuning Attack (RA) at one budget, once per
RA seed, against a method's model, the baseline, or (without methods) the submitted model.
Its P-ASR and, paired with the baseline's under the same budget, the gap the verdict reads."""

from __future__ import annotations

from typing import Any

from ... import stats
from ...cost import evaluation_work
from ...metrics import clean_accuracy
from ...ppr.retune import retune
from ...report import SweepPoint
from ..stage import Stage, StageId, StageResult
from .base import Filling, Planner, StageKind, require_backdoor, subject_model
from .retune_batch import batch_id, batched


def sweep_point(stage: Stage, values: dict[str, Any], base: dict[str, Any] | None = None
                ) -> SweepPoint:
    """One RA budget's numbers, with intervals (`ppr_engine.stats`); with the baseline's
    values under the same budget, the gap and its interval."""
    b = stage.budget
    assert b is not None
    runs = list(values.get("p_asr_runs") or [values["p_asr"]])
    n = int(values.get("n") or 0)
    point = SweepPoint(poison_num=b.poison, clean_num=b.clean, epochs=b.epochs, key=b.key,
                       p_asr=values.get("p_asr"), p_asr_runs=runs,
                       p_asr_ci=stats.rate_interval(runs, n) if n else None)
    if base is not None:
        base_runs = list(base.get("p_asr_runs") or [base["p_asr"]])
        point.baseline_p_asr = base["p_asr"]
        point.gap = point.p_asr - point.baseline_p_asr
        if n and base.get("n"):
            point.gap_ci = stats.gap_interval(runs, base_runs, n, int(base["n"]))
    return point


class Retune(StageKind):
    name = "retune"
    gate_fields = ("p_asr", "p_cacc", "baseline_p_asr", "gap", "max_gap")

    def enabled(self, spec) -> bool:
        return spec.plan.retune.enabled

    def chain(self, p: Planner, subject: str, trigger: int) -> list[Stage]:
        if subject == "baseline":
            base = (StageId("baseline"),)
        else:
            base = (StageId("evaluate"),) if subject == "model" else (StageId("purify", subject),)
        label = p.labels[trigger]
        if batched(p.spec):  # the numbers come from the budget's `retune-batch` stage
            return [Stage(StageId("retune", subject, label, b.key),
                          needs=base + (batch_id(p.spec, label, b.key),), trigger=trigger, budget=b,
                          cost=evaluation_work(p.sizes, 1) if b.reference else 0.0)
                    for b in p.budgets]
        seeds = p.spec.plan.retune.seeds_on(p.spec.device)
        return [Stage(StageId("retune", subject, label, b.key), needs=base,
                      trigger=trigger, budget=b,
                      cost=seeds * (b.epochs * (b.poison + b.clean) + evaluation_work(p.sizes, 1)))
                for b in p.budgets]

    def run(self, stage, inputs, results, progress) -> StageResult:
        """P-ASR per run, their mean and the number of triggered test images it is measured
        on (for the intervals); at the reference budget also P-C-Acc and the first run's
        model, which QRA follows."""
        require_backdoor(inputs, results, stage)
        i, b, rs = stage.trigger, stage.budget, inputs.spec.plan.retune
        assert i is not None and b is not None
        batch = next((n for n in stage.needs if n.kind == "retune-batch"), None)
        if batch is not None:
            return self._from_batch(stage, inputs, results, batch)
        runs, first = [], None
        seeds = rs.seeds_on(inputs.device.type)
        for run in range(seeds):
            rset = inputs.retune_set(i, b.poison, b.clean, run)
            retuned = retune(subject_model(stage, inputs, results), rset, rs, epochs=b.epochs,
                             device=inputs.device, seed=rs.seed + run,
                             progress=lambda msg, frac, run=run: progress(
                                 msg, (run + frac) / seeds))
            runs.append(inputs.asr(retuned, i))
            first = retuned if first is None else first
        values = {"p_asr": sum(runs) / len(runs), "p_asr_runs": runs,
                  "n": len(inputs.triggered(i))}
        if b.reference and stage.method != "baseline":
            values["p_cacc"] = clean_accuracy(first, inputs.test)
            return StageResult(values, {"retuned": first})
        return StageResult(values)

    def _from_batch(self, stage, inputs, results, batch: StageId) -> StageResult:
        """This subject's numbers from its budget's `retune-batch` stage (and, at the
        reference budget, P-C-Acc of its first retuned model, which QRA follows)."""
        values = dict(results.values(batch)["subjects"][stage.method])
        name = values.pop("model", None)
        if name is None:
            return StageResult(values)
        first = results.model(batch, name)
        values["p_cacc"] = clean_accuracy(first, inputs.test)
        return StageResult(values, {"retuned": first})

    def fill(self, f: Filling, stage, values) -> None:
        label = f.labels[stage.trigger]
        if stage.method == "baseline":
            point = sweep_point(stage, values)
            info = f.report.baseline
            if stage.budget.reference:
                info.p_asr[label] = point.p_asr
            else:
                info.sweep.setdefault(label, []).append(point)
            return
        t = f.trigger(stage)
        if t is None:
            return
        twin = StageId("retune", "baseline", label, stage.budget.key)
        base = f.results.values(twin) if f.results.ok(twin) else None
        point = sweep_point(stage, values, base)
        if stage.budget.reference:
            t.budget, t.p_asr, t.p_cacc = point, point.p_asr, values.get("p_cacc")
            t.baseline_p_asr = point.baseline_p_asr
            if t.baseline_p_asr is not None:
                t.gap = t.p_asr - t.baseline_p_asr
        else:
            t.sweep.append(point)
