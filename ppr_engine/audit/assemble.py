"""The report, assembled from the stages' results and records: the `report` stage.

Everything here is bookkeeping over numbers the stages computed: pairing each RA budget of
a method with the baseline's under the same budget (by key), the worst case over triggers,
the verdict, the headline and the gate. The stage list of the report is the executor's
records, one per stage of the plan.
"""

from __future__ import annotations

from typing import Any

from .. import stats
from ..gate import evaluate
from ..report import (
    AuditReport,
    BaselineInfo,
    InversionResult,
    LMCCurve,
    MethodResult,
    ModelResult,
    QRAResult,
    StageStatus,
    SweepPoint,
    TriggerResult,
    headline,
)
from .plan import AuditPlan, Stage
from .stages import Results
from .verdict import VERDICT_RULE, verdict, worst


def _point(stage: Stage, values: dict[str, Any], base: dict[str, Any] | None = None
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


def _baseline(plan: AuditPlan, results: Results, labels: list[str]) -> BaselineInfo:
    info = BaselineInfo()
    if "baseline" not in plan.ids or not results.ok("baseline"):
        return info
    v = results.values("baseline")
    info.kind, info.description = v["kind"], v["description"]
    info.c_acc, info.asr = v["c_acc"], dict(v["asr"])
    for s in plan:
        if s.kind == "retune" and s.method == "baseline" and results.ok(s.id):
            label = labels[s.trigger]
            point = _point(s, results.values(s.id))
            if s.budget.reference:
                info.p_asr[label] = point.p_asr
            else:
                info.sweep.setdefault(label, []).append(point)
    return info


def _method(key: str, plan: AuditPlan, results: Results, labels: list[str],
            model: ModelResult, base: dict[str, dict[str, dict[str, Any]]],
            records: dict[str, StageStatus], spec) -> MethodResult:
    if key == "model":
        res = MethodResult(key="model", method="none", o_cacc=model.c_acc)
        res.per_trigger = [TriggerResult(trigger=label, o_asr=model.asr.get(label))
                           for label in labels if label in model.asr]
    else:
        ms = next(m for m in spec.plan.methods if m.key == key)
        res = MethodResult(key=key, method=ms.name, params=ms.parsed().model_dump())
        if results.ok(f"purify:{key}"):
            v = results.values(f"purify:{key}")
            res.record, res.o_cacc = v["record"], v["o_cacc"]
            res.per_trigger = [TriggerResult(**t) for t in v["per_trigger"]]
    by_label = {t.trigger: t for t in res.per_trigger}
    for s in plan:
        if s.method != key or s.id not in records:
            continue
        res.stages.append(records[s.id])
        if not results.ok(s.id) or s.trigger is None or labels[s.trigger] not in by_label:
            continue
        t, v = by_label[labels[s.trigger]], results.values(s.id)
        if s.kind == "retune":
            point = _point(s, v, base.get(labels[s.trigger], {}).get(s.budget.key))
            if s.budget.reference:
                t.budget, t.p_asr, t.p_cacc = point, point.p_asr, v.get("p_cacc")
                t.baseline_p_asr = point.baseline_p_asr
                if t.baseline_p_asr is not None:
                    t.gap = t.p_asr - t.baseline_p_asr
            else:
                t.sweep.append(point)
        elif s.kind == "qra":
            t.qra = QRAResult(**v)
        elif s.kind == "lmc":
            t.lmc = LMCCurve(**v)
    margin = spec.plan.retune.superficial_gap
    for t in res.per_trigger:
        points = ([t.budget] if t.budget else []) + t.sweep
        t.max_gap = worst([p.gap for p in points])
        # the verdict reads the intervals when RA ran more than one seed: with one draw
        # the interval states only the test set's sampling error, not the draw's, and the
        # verdict reads the mean gap itself
        seeded = [p for p in points if p.gap_ci is not None and len(p.p_asr_runs) > 1]
        if seeded:
            t.max_gap_ci = (max(p.gap_ci[0] for p in seeded), max(p.gap_ci[1] for p in seeded))
            t.straddling = [p.key for p in seeded if p.gap_ci[0] <= margin < p.gap_ci[1]]
    # a trigger that activates no backdoor in the submitted model judges nothing: the
    # method's numbers and verdict come from the others, and with none left it has none
    judged = [t for t in res.per_trigger if t.trigger not in model.inactive]
    pt = judged or res.per_trigger
    res.o_asr = worst([t.o_asr for t in pt])
    res.der = min((t.der for t in pt if t.der is not None), default=None)
    res.p_asr = worst([t.p_asr for t in pt])
    res.p_cacc = min((t.p_cacc for t in pt if t.p_cacc is not None), default=None)
    res.baseline_p_asr = worst([t.baseline_p_asr for t in pt])
    res.gap = worst([t.gap for t in pt])
    res.max_gap = worst([t.max_gap for t in pt])
    cis = [t.max_gap_ci for t in pt if t.max_gap_ci is not None]
    if cis:
        res.max_gap_ci = (max(lo for lo, _ in cis), max(hi for _, hi in cis))
    res.straddling = [f"{t.trigger} {k}" for t in pt for k in t.straddling]
    res.qra_asr = worst([t.qra.asr if t.qra else None for t in pt])
    res.qra_clean_to_target = worst([t.qra.clean_to_target if t.qra else None for t in pt])
    lams = [t.lmc.lambda50 if t.lmc.lambda50 is not None else 1.0 for t in pt if t.lmc]
    res.lmc_lambda50 = min(lams) if lams and min(lams) < 1.0 else None
    if res.o_cacc is not None and model.c_acc is not None:
        res.acc_drop = model.c_acc - res.o_cacc
    res.verdict = ("no_backdoor" if res.per_trigger and not judged  # type: ignore[assignment]
                   else verdict(res, spec))
    res.seconds = round(sum(st.seconds for st in res.stages), 3)
    return res


def assemble(spec, plan: AuditPlan, results: Results, records: dict[str, StageStatus],
             report: AuditReport) -> AuditReport:
    """Fill `report` (provenance already set) from the stages, then headline and gate."""
    from .plan import trigger_labels

    labels = trigger_labels(spec)
    ev = results.values("evaluate") if results.ok("evaluate") else {}
    report.model = ModelResult(c_acc=ev.get("c_acc"), asr=dict(ev.get("asr", {})))
    report.inversions = [InversionResult.model_validate(v) for v in ev.get("inversions", [])]
    if report.inversions:
        report.model.backdoors_found = sum(inv.found for inv in report.inversions)
    report.stages = [records[sid] for sid in plan.ids if sid in records]
    active = [labels[i] for i in ev.get("active", [])]
    if spec.triggers and not active:  # every trigger was inverted: none found, or failed
        return finish(report, spec)
    report.model.inactive = [label for label in active if (asr := report.model.asr.get(label))
                             is not None and asr < spec.plan.min_asr]
    report.baseline = _baseline(plan, results, labels)
    base: dict[str, dict[str, float | None]] = {}
    for label in active:
        base[label] = {}
        for s in plan:
            if (s.kind == "retune" and s.method == "baseline" and labels[s.trigger] == label
                    and results.ok(s.id)):
                base[label][s.budget.key] = results.values(s.id)
    keys = [m.key for m in spec.plan.methods] or ["model"]
    report.methods = [_method(k, plan, results, labels, report.model, base, records, spec)
                      for k in keys]
    if "qra-transfer" in plan.ids and results.ok("qra-transfer"):
        transfer = results.values("qra-transfer")["transfer"]
        for m in report.methods:
            for t in m.per_trigger:
                if t.qra is not None:
                    t.qra.transfer = dict(transfer.get(m.key, {}).get(t.trigger, {}))
    report.verdict_rule = VERDICT_RULE
    return finish(report, spec)


def finish(report: AuditReport, spec) -> AuditReport:
    """The headline and the gate, from the report's numbers."""
    report.headline = headline(report)
    report.gate = evaluate(spec.gate, report,
                           allow_no_backdoor=spec.gate_options.allow_no_backdoor,
                           allow_inconclusive=spec.gate_options.allow_inconclusive)
    return report
