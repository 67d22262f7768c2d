"""Release gates: expressions over report fields, with a documented grammar.

Grammar (one clause per string; a gate passes when every clause passes):

    clause  := subject "." field op number
    subject := METHOD_KEY | "all" | "any" | "model" | "baseline"
    op      := "<=" | "<" | ">=" | ">" | "==" | "!="

Method fields: o_cacc, acc_drop (the submitted model's C-Acc minus O-C-Acc), o_asr, der,
p_cacc, p_asr, baseline_p_asr, gap, max_gap, qra_asr, qra_clean_to_target, lmc_lambda50, and
robust (1 when the verdict is `robust`, else 0: `pam.robust == 1` gates on the verdict, which
weighs accuracy, removal and retuning together). Model fields: c_acc, asr, backdoors_found (how many
`inverted` triggers found a backdoor: an audit without a known trigger gates a release with
`model.backdoors_found == 0`; when none is found no defense runs, and clauses on methods
fail with "no methods in the report"). Baseline fields: c_acc, asr, p_asr. `asr`-like
fields take the worst case (maximum) over triggers. `all.F` needs F to pass for every
method, `any.F` for at least one. A value that was not computed (its stage
failed) fails the clause and says so. `lmc_lambda50` of a path on which ASR never exceeds
50% counts as 1.0 (the far end of the path).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from .errors import GateError
from .report import AuditReport, GateClause, GateVerdict, MethodResult, no_backdoor_sentence

METHOD_FIELDS = ("o_cacc", "acc_drop", "o_asr", "der", "p_cacc", "p_asr", "baseline_p_asr",
                 "gap", "max_gap", "qra_asr", "qra_clean_to_target", "lmc_lambda50", "robust")
MODEL_FIELDS = ("c_acc", "asr", "backdoors_found")
BASELINE_FIELDS = ("c_acc", "asr", "p_asr")
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
       "==": operator.eq, "!=": operator.ne}
_CLAUSE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\.([a-z0-9_]+)\s*(<=|>=|==|!=|<|>)\s*"
                     r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Clause:
    """A parsed clause."""

    text: str
    subject: str
    field: str
    op: str
    threshold: float


def parse_clause(text: str) -> Clause:
    """Parse one clause, or raise GateError saying what is wrong."""
    m = _CLAUSE.match(text or "")
    if not m:
        raise GateError(f"gate clause {text!r} must look like 'pam.p_asr <= 0.2' "
                        f"(subject.field op number)")
    subject, field, op, num = m.groups()
    allowed = (MODEL_FIELDS if subject == "model" else BASELINE_FIELDS if subject == "baseline"
               else METHOD_FIELDS)
    if field not in allowed:
        raise GateError(f"gate clause {text!r}: unknown field {field!r} for {subject!r}; "
                        f"known: {', '.join(allowed)}")
    return Clause(text.strip(), subject, field, op, float(num))


def _method_value(m: MethodResult, field: str) -> float | None:
    if field == "robust":
        return None if m.verdict == "unknown" else float(m.verdict == "robust")
    v = getattr(m, field)
    if field == "lmc_lambda50" and v is None and any(t.lmc for t in m.per_trigger):
        return 1.0
    return v


def evaluate_clause(clause: Clause, report: AuditReport) -> GateClause:
    """Evaluate one clause against a report; the result names its operator and threshold
    so that CI reports can print "measured 0.41, required <= 0.2"."""
    result = _measure(clause, report)
    result.op, result.threshold = clause.op, clause.threshold
    return result


def _measure(clause: Clause, report: AuditReport) -> GateClause:
    op = OPS[clause.op]

    def check(v: float | None) -> bool:
        return v is not None and op(v, clause.threshold)

    if clause.subject == "model":
        v = (report.model.c_acc if clause.field == "c_acc" else
             report.model.backdoors_found if clause.field == "backdoors_found" else
             max(report.model.asr.values(), default=None))
        if v is not None:
            v = float(v)
        return GateClause(expr=clause.text, passed=check(v), value=v,
                          detail="" if v is not None else "not computed")
    if clause.subject == "baseline":
        b = report.baseline
        v = b.c_acc if clause.field == "c_acc" else max(
            getattr(b, clause.field).values(), default=None)
        return GateClause(expr=clause.text, passed=check(v), value=v,
                          detail="" if v is not None else "not computed")
    if clause.subject in ("all", "any"):
        if not report.methods:
            return GateClause(expr=clause.text, passed=False, value=None,
                              detail=_no_methods(report))
        values = [_method_value(m, clause.field) for m in report.methods]
        results = [check(v) for v in values]
        passed = all(results) if clause.subject == "all" else any(results)
        failing = [m.key for m, r in zip(report.methods, results, strict=True) if not r]
        detail = f"failing: {', '.join(failing)}" if failing and not passed else ""
        return GateClause(expr=clause.text, passed=passed, value=values, detail=detail)
    m = report.method(clause.subject)
    if m is None and not report.methods:  # e.g. no backdoor found by inversion
        return GateClause(expr=clause.text, passed=False, value=None,
                          detail=_no_methods(report))
    if m is None:
        known = ", ".join(x.key for x in report.methods) or "none"
        raise GateError(f"gate clause {clause.text!r}: method {clause.subject!r} is not in "
                        f"this audit (methods: {known})")
    v = _method_value(m, clause.field)
    return GateClause(expr=clause.text, passed=check(v), value=v,
                      detail="" if v is not None else "not computed (stage failed)")


def _no_methods(report: AuditReport) -> str:
    nothing_found = report.inversions and not any(inv.found for inv in report.inversions)
    return "no methods in the report" + (": no backdoor found by inversion, so no defense ran"
                                         if nothing_found else "")


def evaluate(gate: list[str], report: AuditReport, *, allow_no_backdoor: bool = False,
             allow_inconclusive: bool = False) -> GateVerdict:
    """The verdict of every clause; passed is None when the gate is empty. A clause on a
    method fails closed when a trigger activates no backdoor in the submitted model (there
    was nothing to purify, so "robust" would pass vacuously), unless `allow_no_backdoor`,
    and when the method (any method, for `all`/`any`) is judged inconclusive (a re-run
    could flip it), unless `allow_inconclusive`."""
    if not gate:
        return GateVerdict(passed=None, clauses=[])
    parsed = [parse_clause(c) for c in gate]
    clauses = [evaluate_clause(c, report) for c in parsed]
    if not allow_inconclusive:
        for clause, c in zip(parsed, clauses, strict=True):
            subject = clause.subject
            if subject in ("model", "baseline"):
                continue
            unsure = [m for m in report.methods if m.verdict == "inconclusive"
                      and subject in ("all", "any", m.key)]
            if unsure:
                c.passed = False
                c.detail = "; ".join(
                    f"{m.key} is inconclusive: the gap's 95% interval straddles "
                    f"the margin at {', '.join(m.straddling) or 'a budget'}" for m in unsure
                ) + " (more RA seeds narrow it; gate_options.allow_inconclusive: true to " \
                    "evaluate the clause)"
    inactive = report.model.inactive
    if inactive and not allow_no_backdoor:
        reason = "; ".join(no_backdoor_sentence(t, report.model.asr.get(t)) for t in inactive)
        for clause, c in zip(parsed, clauses, strict=True):
            if clause.subject not in ("model", "baseline"):
                c.passed = False
                c.detail = (f"{reason}: the gate fails closed "
                            "(gate_options.allow_no_backdoor: true to evaluate it)")
    return GateVerdict(passed=all(c.passed for c in clauses), clauses=clauses)


def check_subjects(gate: list[str], method_keys: list[str]) -> None:
    """Refuse, before any work, a gate that names a method the plan does not run."""
    for text in gate:
        c = parse_clause(text)
        if c.subject not in ("all", "any", "model", "baseline") and c.subject not in method_keys:
            raise GateError(f"gate clause {text!r} names method {c.subject!r}, which the plan "
                            f"does not run (methods: {', '.join(method_keys) or 'none'})")
