"""`retune-batch:<subjects>:<trigger>:<budget>`: the Retuning Attack at one budget against
every model of the audit at once (each method's purified model and the baseline, or the submitted
model), as one vmapped training (`ppr_engine.ppr.batched`); planned where
`RetuneSpec.batched_on` says so (by default on CUDA).

Each subject's own `retune` stage then reads its numbers from here, so the report, the
verdicts, QRA's guide model and the gate see the same stages either way. A subject whose
model is missing (its purification failed or was skipped) is left out of the batch, and its
own `retune` stage is skipped for that reason, as it is without batching.
"""

from __future__ import annotations

from ...cost import evaluation_work
from ...ppr.batched import retune_together
from ..stage import Stage, StageId, StageResult
from .base import Planner, StageKind, require_backdoor, subject_model_of


def batched(spec) -> bool:
    """Whether this spec's RA stages retune their models together."""
    rs = spec.plan.retune
    return rs.enabled and bool(spec.triggers) and rs.batched_on(spec.device)


def attacked(spec) -> list[str]:
    """The models RA and QRA attack, in plan order: each method's, or the submitted model
    without methods."""
    return [m.key for m in spec.plan.methods] or ["model"]


def subjects(spec) -> list[str]:
    """The models RA retunes: those attacked, then the baseline."""
    return attacked(spec) + (["baseline"] if spec.plan.retune.baseline else [])


def source(subject: str) -> StageId | None:
    """The stage a subject's model comes from (None: the submitted model)."""
    if subject == "model":
        return None
    return StageId("baseline") if subject == "baseline" else StageId("purify", subject)


def sources(who: list[str]) -> tuple[StageId, ...]:
    """The stages the models of `who` come from (the submitted model needs none): what a
    batch over them waits for."""
    return tuple(sid for s in who if (sid := source(s)) is not None)


def batch_id(spec, label: str, budget_key: str) -> StageId:
    """`retune-batch:<subjects joined by +>:<trigger>:<budget>`: the subjects are part of
    the id, so the attempts of a purification until robust (`pam`, then `pam#2`) each get
    their own batch."""
    return StageId("retune-batch", "+".join(subjects(spec)), label, budget_key)


class RetuneBatch(StageKind):
    name = "retune-batch"

    def enabled(self, spec) -> bool:
        return batched(spec)

    def stages(self, p: Planner) -> list[Stage]:
        if not self.enabled(p.spec) or not p.budgets:
            return []
        who = subjects(p.spec)
        waits = sources(who)
        seeds = p.spec.plan.retune.seeds_on(p.spec.device)
        return [Stage(batch_id(p.spec, label, b.key), needs=(StageId("evaluate"),), after=waits,
                      trigger=i, budget=b,
                      cost=seeds * len(who) * (b.epochs * (b.poison + b.clean)
                                               + evaluation_work(p.sizes, 1)))
                for i, label in enumerate(p.labels) for b in p.budgets]

    def run(self, stage, inputs, results, progress) -> StageResult:
        """Per subject whose model exists: P-ASR per run, their mean and the number of
        triggered test images; at the reference budget also the first run's model (named
        in the subject's values), which its `retune` stage hands on to QRA."""
        require_backdoor(inputs, results, stage)
        i, b, rs = stage.trigger, stage.budget, inputs.spec.plan.retune
        assert i is not None and b is not None
        present = [s for s in subjects(inputs.spec)
                   if (sid := source(s)) is None or results.ok(sid)]
        models = [subject_model_of(s, inputs, results) for s in present]
        seeds = rs.seeds_on(inputs.device.type)
        runs: dict[str, list[float]] = {s: [] for s in present}
        firsts = None
        for run in range(seeds):
            rset = inputs.retune_set(i, b.poison, b.clean, run)
            retuned = retune_together(models, rset, rs, epochs=b.epochs, device=inputs.device,
                                      seed=rs.seed + run,
                                      progress=lambda msg, frac, run=run: progress(
                                          msg, (run + frac) / seeds))
            for s, m in zip(present, retuned, strict=True):
                runs[s].append(inputs.asr(m, i))
            firsts = retuned if firsts is None else firsts
        n = len(inputs.triggered(i))
        values: dict = {"subjects": {}}
        kept = {}
        for j, s in enumerate(present):
            values["subjects"][s] = {"p_asr": sum(runs[s]) / len(runs[s]),
                                     "p_asr_runs": runs[s], "n": n}
            if b.reference and s != "baseline" and firsts is not None:
                values["subjects"][s]["model"] = name = f"retuned-{j}"
                kept[name] = firsts[j]
        return StageResult(values, kept)

