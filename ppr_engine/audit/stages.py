"""One function per kind of stage: each takes the audit's inputs and the results of the
stages it needs, and returns its own result (JSON-able values, and the models later stages
use). No stage changes the inputs, so stages run in any order their dependencies allow, in
one process or in several.

A stage that cannot apply (its trigger's inversion found no backdoor) returns `Skipped`
with the reason; a stage that fails raises, and the executor records the error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..checkpoint import load_model
from ..defenses import purify
from ..errors import SpecError
from ..metrics import clean_accuracy, der
from ..ppr import qra as qra_attack
from ..ppr.lmc import lambda50, trace_path
from ..ppr.qra import PerturbationGenerator, qra_asr
from ..ppr.retune import retune
from ..train import Progress
from .inputs import AuditInputs
from .plan import Stage


@dataclass
class StageResult:
    """What a stage produced: values for the report, models for later stages."""

    values: dict[str, Any] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)


class Skipped(Exception):
    """The stage does not apply to this audit (the reason is recorded)."""


class Results(Protocol):
    """The finished stages' results, as the executor keeps them."""

    def values(self, stage_id: str) -> dict[str, Any]: ...

    def model(self, stage_id: str, name: str = "model") -> nn.Module: ...

    def ok(self, stage_id: str) -> bool: ...


def restore_triggers(inputs: AuditInputs, results: Results, plan_ids: list[str]) -> None:
    """Give every inverted trigger the state its `invert` stage found (a no-op in the
    process that ran the inversion)."""
    for i, label in enumerate(inputs.labels):
        sid = f"invert:{label}"
        if sid in plan_ids and results.ok(sid):
            values = results.values(sid)
            inputs.triggers[i].restore(values, {"generator": results.model(sid, "generator")})


def active(inputs: AuditInputs, results: Results) -> list[int]:
    """The triggers later stages attack: all given ones, and inverted ones that found a
    backdoor (the `evaluate` stage decides)."""
    return list(results.values("evaluate")["active"])


def _require(inputs: AuditInputs, results: Results, stage: Stage) -> None:
    if stage.trigger is not None and stage.trigger not in active(inputs, results):
        inv = inputs.triggers[stage.trigger].inversion
        raise Skipped("no backdoor found by inversion" if inv is not None else
                      "its trigger's inversion failed")
    if inputs.spec.triggers and not active(inputs, results):
        raise Skipped("no backdoor found by inversion")


def run_invert(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
               ) -> StageResult:
    """Learn trigger `stage.trigger` from the submitted model on the defender's data."""
    trigger = inputs.triggers[stage.trigger]
    ctx = inputs.context([])
    ctx.progress = progress
    trigger.learn(inputs.model, ctx)
    values, modules = trigger.learned()
    return StageResult(values, modules)


def run_evaluate(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
                 ) -> StageResult:
    """C-Acc and each trigger's ASR of the submitted model; which triggers later stages
    attack (an inverted trigger only when it found a backdoor)."""
    keep, asr, inversions = [], {}, []
    for i, (label, t) in enumerate(zip(inputs.labels, inputs.triggers, strict=True)):
        if t.learns_from_model:
            sid = f"invert:{label}"
            if not results.ok(sid):
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


def _known_targets(inputs: AuditInputs) -> list[int]:
    """The targets of the audit's known all-to-one triggers (what an inversion should find)."""
    return sorted({t.target for t in inputs.triggers
                   if not t.learns_from_model and not t.all_to_all})


def run_purify(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
               ) -> StageResult:
    """Run one method; O-C-Acc, and each active trigger's O-ASR and DER."""
    _require(inputs, results, stage)
    ms = next(m for m in inputs.spec.plan.methods if m.key == stage.method)
    keep = active(inputs, results)
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
                        "params": ms.parsed().model_dump(mode="json")}, {"model": out.model})


def run_baseline(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
                 ) -> StageResult:
    """The RA/QRA reference model: the caller's clean reference, else the audit's EP model,
    else EP built with default parameters; its C-Acc and ASR."""
    _require(inputs, results, stage)
    spec = inputs.spec
    keep = active(inputs, results)
    values: dict[str, Any] = {}
    if spec.reference:
        model = load_model(Path(spec.reference), spec.model.arch, spec.model.num_classes,
                           width=spec.model.width).to(inputs.device)
        values.update(kind="reference",
                      description=f"caller's clean reference {Path(spec.reference).name}")
    elif (ep := next((m.key for m in spec.plan.methods if m.name == "ep"), None)) is not None:
        model = results.model(f"purify:{ep}")
        values.update(kind="ep", description=f"the EP model of this audit ({ep})",
                      model_stage=f"purify:{ep}")
    else:
        ctx = inputs.context(keep)
        ctx.progress = progress
        model = purify("ep", inputs.model, ctx, {}).model
        values.update(kind="ep", description="EP with default parameters, built for the "
                      "baseline")
    values["c_acc"] = clean_accuracy(model, inputs.test)
    values["asr"] = {inputs.labels[i]: inputs.asr(model, i)
                     for i in keep}
    return StageResult(values, {} if "model_stage" in values else {"model": model})


def subject_model(stage: Stage, inputs: AuditInputs, results: Results) -> nn.Module:
    """The model a retune/QRA/LMC stage attacks: a method's purified model, the baseline,
    or (an audit without methods) the submitted model."""
    if stage.method == "model":
        return inputs.model
    if stage.method == "baseline":
        base = results.values("baseline")
        return results.model(base.get("model_stage", "baseline"))
    return results.model(f"purify:{stage.method}")


def run_retune(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
               ) -> StageResult:
    """RA at one budget, once per RA seed (each run on its own draw): P-ASR per run, their
    mean and the number of triggered test images it is measured on (for the intervals);
    at the reference budget also P-C-Acc and the first run's model, which QRA follows."""
    _require(inputs, results, stage)
    i, b, rs = stage.trigger, stage.budget, inputs.spec.plan.retune
    assert i is not None and b is not None
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


def baseline_model(inputs: AuditInputs, results: Results) -> nn.Module:
    """The baseline stage's model (wherever it lives)."""
    base = results.values("baseline")
    return results.model(base.get("model_stage", "baseline"))


def run_qra(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
            ) -> StageResult:
    """QRA against one model and trigger, guided by its RA model at the reference budget."""
    _require(inputs, results, stage)
    i = stage.trigger
    assert i is not None
    ref = next(s for s in stage.needs if s.startswith("retune:"))
    q = qra_attack.run_qra(subject_model(stage, inputs, results), results.model(ref, "retuned"),
                baseline_model(inputs, results), inputs.pool, inputs.test,
                inputs.triggered(i), inputs.triggers[i], inputs.spec.plan.qra,
                device=inputs.device, seed=inputs.spec.seed + 7, progress=progress)
    return StageResult({"asr": q.asr, "clean_to_target": q.clean_to_target,
                        "ref_asr": q.ref_asr, "ref_clean_to_target": q.ref_clean_to_target},
                       {"generator": q.generator})


def run_qra_transfer(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
                     ) -> StageResult:
    """Each method's QRA perturbation applied to every other method's model."""
    keys = [m.key for m in inputs.spec.plan.methods]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for sid in stage.after:
        if not results.ok(sid):
            continue
        _, src, label = sid.split(":", 2)
        i = inputs.labels.index(label)
        gen = results.model(sid, "generator")
        assert isinstance(gen, PerturbationGenerator)
        out.setdefault(src, {})[label] = {
            dst: qra_asr(gen, results.model(f"purify:{dst}"), inputs.triggered(i),
                         inputs.triggers[i], inputs.device)
            for dst in keys if dst != src and results.ok(f"purify:{dst}")}
    return StageResult({"transfer": out})


def run_lmc(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
            ) -> StageResult:
    """The backdoor-connected path from the purified to the submitted model."""
    _require(inputs, results, stage)
    i, lm = stage.trigger, inputs.spec.plan.lmc
    assert i is not None
    path = trace_path(subject_model(stage, inputs, results), inputs.model, inputs.clean_train,
                      inputs.test, inputs.triggered(i), inputs.backdoor_labels(i),
                      points=lm.points, bn=lm.bn, device=inputs.device, progress=progress,
                      end=inputs.lmc_end(i))
    return StageResult({"lambdas": [p.lam for p in path], "c_acc": [p.c_acc for p in path],
                        "asr": [p.asr for p in path],
                        "backdoor_error": [p.backdoor_error for p in path],
                        "lambda50": lambda50(path), "bn": lm.bn})


RUNNERS: dict[str, Callable[[Stage, AuditInputs, Results, Progress], StageResult]] = {
    "invert": run_invert, "evaluate": run_evaluate, "purify": run_purify,
    "baseline": run_baseline, "retune": run_retune, "qra": run_qra,
    "qra-transfer": run_qra_transfer, "lmc": run_lmc}


def run_stage(stage: Stage, inputs: AuditInputs, results: Results, progress: Progress,
              plan_ids: list[str]) -> StageResult:
    """Run one stage from the same random state wherever and whenever it runs."""
    if stage.kind not in RUNNERS:
        raise SpecError(f"no runner for stage {stage.id}")
    restore_triggers(inputs, results, plan_ids)
    torch.manual_seed(inputs.spec.seed)
    for t in inputs.triggers:
        t.reseed()
    return RUNNERS[stage.kind](stage, inputs, results, progress)
