"""The report, assembled from the stages' results and records: the `report` stage.

Everything here is bookkeeping over numbers the stages computed. Each stage kind puts its
values where they belong (`StageKind.fill`: RA budgets beside the baseline's under the same
key, QRA, LMC); this module then takes the worst case over triggers, the verdict, the
headline and the gate. The stage list of the report is the executor's records, one per
stage of the plan.
"""

from __future__ import annotations

from ..gate import evaluate
from ..report import (
    AuditReport,
    BaselineInfo,
    MethodResult,
    ModelResult,
    StageStatus,
    TriggerResult,
    headline,
)
from .kinds import KINDS, Filling
from .plan import AuditPlan
from .stage import Results, trigger_labels
from .verdict import VERDICT_RULE, verdict, worst


def _judge(res: MethodResult, model: ModelResult, spec) -> None:
    """A method's numbers over its triggers (the worst case), then its verdict."""
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


def assemble(spec, plan: AuditPlan, results: Results, records: dict[str, StageStatus],
             report: AuditReport) -> AuditReport:
    """Fill `report` (provenance already set) from the stages, then headline and gate."""
    f = Filling(results, report, trigger_labels(spec))
    evaluated = results.ok("evaluate")
    if evaluated:
        KINDS["evaluate"].fill(f, plan.get("evaluate"), results.values("evaluate"))
    else:
        report.model = ModelResult()
    report.stages = [records[sid] for sid in plan.ids if sid in records]
    active = [f.labels[i] for i in (results.values("evaluate")["active"] if evaluated else [])]
    if spec.triggers and not active:  # every trigger was inverted: none found, or failed
        return finish(report, spec)
    report.model.inactive = [label for label in active if (asr := report.model.asr.get(label))
                             is not None and asr < spec.plan.min_asr]
    report.baseline = BaselineInfo()
    f.methods = {m.key: MethodResult(key=m.key, method=m.name, params=m.parsed().model_dump())
                 for m in spec.plan.methods}
    if not f.methods:  # without methods, the submitted model is the subject
        f.methods["model"] = MethodResult(
            key="model", method="none", o_cacc=report.model.c_acc,
            per_trigger=[TriggerResult(trigger=label, o_asr=report.model.asr.get(label))
                         for label in f.labels if label in report.model.asr])
    for s in plan:
        if s.kind != "evaluate" and results.ok(s.id):
            KINDS[s.kind].fill(f, s, results.values(s.id))
        if s.method in f.methods and s.id in records:
            f.methods[s.method].stages.append(records[s.id])
    for res in f.methods.values():
        _judge(res, report.model, spec)
    report.methods = list(f.methods.values())
    report.verdict_rule = VERDICT_RULE
    return finish(report, spec)


def finish(report: AuditReport, spec) -> AuditReport:
    """The headline and the gate, from the report's numbers."""
    report.headline = headline(report)
    report.gate = evaluate(spec.gate, report,
                           allow_no_backdoor=spec.gate_options.allow_no_backdoor,
                           allow_inconclusive=spec.gate_options.allow_inconclusive)
    return report
