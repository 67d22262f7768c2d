"""Purify until robust: purify, audit the result with RA, and escalate while it is not robust.

`POST /purify?method=M&until=robust` and `ppr purify --until robust`. A purification whose
model only hides the backdoor is not what a user asked for; this runs the method, attacks
its model with RA at the reference budget and every sweep point against the baseline (the
verdict rule of every audit, intervals included), and while the verdict is not `robust`
tries again with a stronger setting, in this documented order, each step on top of the
previous ones:

1. more rounds: `rounds` doubled (methods without rounds: `epochs` doubled);
2. rho up the paper's range (0.3 to 0.9): 0.7, then 0.9, where the method has `rho`;
3. a larger reversed-sample share: `ratio` 0.3, then 0.4, where the method has `ratio`.

A step the method does not have, or whose value would pass the parameter's bounds, is left
out; `plan.max_attempts` (the spec's cap) bounds the ladder. The first attempt judged
`robust` (which implies C-Acc within `max_acc_drop`) is the result; if none is, the best by
verdict, then gap, then accuracy, with the reason. Every attempt's model and numbers are kept.

Attempt k > 1 is the method under the label `KEY#k`, so its stages have their own ids
(`purify:pam#2`, `retune:pam#2:...`) in the stage view and the work estimate; the stages
every attempt shares (`evaluate`, `baseline` and the baseline's RA) run once. The attempts
run RA and its sweep only: QRA and LMC of the result are an audit of the purified
checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import SpecError
from ..report import AuditReport, MethodResult
from ..spec import AuditSpec, MethodSpec

RHO_STEPS = (0.7, 0.9)
RATIO_STEPS = (0.3, 0.4)
# the verdicts from best to worst, for choosing the best attempt when none is robust
VERDICT_ORDER = ("robust", "inconclusive", "superficial", "not_removed", "degraded",
                 "unknown", "no_backdoor")


def ladder(method: MethodSpec, max_attempts: int) -> list[dict]:
    """The parameter overrides of each attempt, cumulative, the first one `{}` (the method
    as submitted); at most `max_attempts`."""
    parsed = method.parsed()
    fields = type(parsed).model_fields
    values = parsed.model_dump()
    steps: list[tuple[str, object]] = []
    more = "rounds" if "rounds" in fields else "epochs" if "epochs" in fields else None
    if more is not None:
        steps.append((more, values[more] * 2))
    if "rho" in fields:
        steps += [("rho", r) for r in RHO_STEPS if r > values["rho"]]
    if "ratio" in fields:
        steps += [("ratio", s) for s in RATIO_STEPS if s > values["ratio"]]
    attempts, current = [{}], {}
    for name, value in steps:
        if len(attempts) >= max_attempts:
            break
        trial = {**current, name: value}
        try:
            method.model_validate({**method.model_dump(exclude_unset=True), **trial})
        except ValueError:  # past the parameter's bounds: this step is left out
            continue
        current = trial
        attempts.append(dict(current))
    return attempts


def attempt_key(key: str, index: int) -> str:
    """The report key of attempt `index` (0-based): the method's own key first, then KEY#2..."""
    return key if index == 0 else f"{key}#{index + 1}"


def attempt_specs(spec: AuditSpec) -> list[AuditSpec]:
    """One spec per attempt: the method with that attempt's overrides, RA on (QRA and LMC
    off), no gate (the gate judges the chosen attempt, under the method's own key)."""
    method = spec.plan.methods[0]
    base = method.model_dump(exclude_unset=True)  # explicit nulls (scale_to) kept
    out = []
    for i, overrides in enumerate(ladder(method, spec.plan.max_attempts)):
        m = MethodSpec.model_validate({**base, **overrides, "label": attempt_key(method.key, i)})
        plan = spec.plan.model_copy(update={
            "methods": [m], "until": None,
            "retune": spec.plan.retune.model_copy(update={"enabled": True}),
            "qra": spec.plan.qra.model_copy(update={"enabled": False}),
            "lmc": spec.plan.lmc.model_copy(update={"enabled": False})})
        out.append(spec.model_copy(update={"plan": plan, "gate": []}))
    return out


def check_escalation(spec: AuditSpec) -> None:
    """What `until: robust` needs: one method and a known trigger to attack (SpecError)."""
    if spec.plan.until is None:
        return
    if len(spec.plan.methods) != 1:
        raise SpecError("plan.until: robust purifies with one method (POST /purify?method=M "
                        f"&until=robust); this plan lists {len(spec.plan.methods)}")
    if not any(t.attack != "inverted" for t in spec.triggers):
        raise SpecError("plan.until: robust attacks each attempt with RA, which needs a known "
                        "trigger in `triggers` (an attack and its target)")


@dataclass
class Attempt:
    """One try of the escalation: its overrides, its method result and its model."""

    index: int
    overrides: dict
    result: MethodResult
    model: nn.Module | None = None
    seconds: float = 0.0


def rank(result: MethodResult) -> tuple:
    """Sort key of an attempt, best first: verdict, then the largest gap, then accuracy;
    among `degraded` attempts accuracy first (the verdict says accuracy is what failed, and
    a smaller gap bought with a broken model is no better)."""
    verdict = VERDICT_ORDER.index(result.verdict) if result.verdict in VERDICT_ORDER else 99
    gap = round(result.max_gap if result.max_gap is not None else 1.0, 6)
    drop = round(result.acc_drop if result.acc_drop is not None else 1.0, 6)
    return (verdict, drop, gap) if result.verdict == "degraded" else (verdict, gap, drop)


def choose(attempts: list[Attempt]) -> tuple[Attempt, str]:
    """The attempt to return and why: the first robust one, else the best of them."""
    for a in attempts:
        if a.result.verdict == "robust" and a.model is not None:
            return a, (f"attempt {a.index + 1} is robust"
                       + (f" ({describe(a.overrides)})" if a.overrides else ""))
    usable = [a for a in attempts if a.model is not None] or attempts
    best = min(usable, key=lambda a: rank(a.result))
    return best, (f"no attempt of {len(attempts)} was robust; attempt {best.index + 1} is the "
                  f"best ({best.result.verdict}"
                  + (f", largest gap {best.result.max_gap:.3f}"
                     if best.result.max_gap is not None else "") + ")")


def describe(overrides: dict) -> str:
    """`rounds 6, rho 0.7` (or `as submitted`)."""
    return ", ".join(f"{k} {v}" for k, v in overrides.items()) or "as submitted"


@dataclass
class Escalation:
    """What `run_until_robust` returns besides the report."""

    attempts: list[Attempt] = field(default_factory=list)
    chosen: Attempt | None = None
    reason: str = ""


def finish_report(report: AuditReport, spec: AuditSpec, esc: Escalation) -> None:
    """The chosen attempt under the method's own key, every attempt listed."""
    from ..report import EscalationAttempt, EscalationInfo

    assert esc.chosen is not None
    key = spec.plan.methods[0].key
    chosen = esc.chosen.result.model_copy(update={"key": key})
    report.methods = [chosen]
    report.escalation = EscalationInfo(
        until=spec.plan.until, robust=chosen.verdict == "robust", chosen=esc.chosen.index + 1,
        reason=esc.reason, attempts=[EscalationAttempt(
            attempt=a.index + 1, key=a.result.key, overrides=a.overrides,
            verdict=a.result.verdict, o_cacc=a.result.o_cacc, acc_drop=a.result.acc_drop,
            o_asr=a.result.o_asr, p_asr=a.result.p_asr, max_gap=a.result.max_gap,
            max_gap_ci=a.result.max_gap_ci, seconds=a.seconds) for a in esc.attempts])



def run_attempts(spec: AuditSpec, inputs, report: AuditReport, sizes, *, progress,
                 on_stage=None, on_stage_progress=None) -> Escalation:
    """Run the attempts in order until one is robust; fill `report` (its provenance set)
    with the chosen attempt under the method's key and every attempt, and record the stages
    of the attempts not needed as skipped."""
    import dataclasses
    import time

    from ..report import StageStatus
    from .assemble import assemble, finish
    from .execute import MemoryResults, execute
    from .plan import plan_for

    full = plan_for(spec, sizes)
    specs = attempt_specs(spec)
    overrides = ladder(spec.plan.methods[0], spec.plan.max_attempts)
    esc = Escalation()
    results, records = MemoryResults(), {}
    done_cost = 0.0
    for i, aspec in enumerate(specs):
        plan = plan_for(aspec, sizes)
        t0 = time.perf_counter()
        new, arecords = execute(plan, dataclasses.replace(inputs, spec=aspec),
                                progress=progress, on_stage=on_stage,
                                on_stage_progress=on_stage_progress,
                                done_before=(results, records), total_cost=full.total_cost,
                                cost_before=done_cost)
        done_cost += sum(s.cost for s in plan if s.id not in records)
        for sid in arecords:
            if new.ok(sid):
                results.put(sid, new.result(sid))
        records.update(arecords)
        attempt_report = report.model_copy(deep=True)
        assemble(aspec, plan, results, arecords, attempt_report)
        key = aspec.plan.methods[0].key
        model = results.model(f"purify:{key}") if results.ok(f"purify:{key}") else None
        esc.attempts.append(Attempt(i, overrides[i], attempt_report.methods[0], model,
                                    round(time.perf_counter() - t0, 3)))
        if attempt_report.methods[0].verdict == "robust" and model is not None:
            break
    esc.chosen, esc.reason = choose(esc.attempts)
    chosen = specs[esc.chosen.index]
    assemble(chosen, plan_for(chosen, sizes), results, records, report)
    for s in full:
        if s.id not in records and s.kind != "report":
            records[s.id] = StageStatus(name=s.id, status="skipped",
                                        error=f"not needed: {esc.reason}")
            if on_stage is not None:
                on_stage(records[s.id])
    finish_report(report, spec, esc)
    report.stages = [records[sid] for sid in full.ids if sid in records]
    finish(report, spec)
    return esc
