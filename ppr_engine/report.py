"""The audit report: a versioned pydantic model, and its renderers (JSON, Markdown, HTML).

Every number in a report was computed by the run that wrote it; a stage that failed is
listed with its reason and its numbers stay null. The HTML is one self-contained file
(inline SVG plots, no scripts, no external resources).
"""

from __future__ import annotations

import html
from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = "1.0"
# the only images a report may carry: inline PNGs, so a rendered report loads nothing
PNG_URI = r"^data:image/png;base64,[A-Za-z0-9+/]*={0,2}$"


class StageStatus(BaseModel):
    """One stage of the audit: what ran, whether it worked, how long it took."""

    name: str
    status: Literal["pending", "running", "ok", "failed", "skipped"] = "ok"
    error: str | None = None
    seconds: float = 0.0


class SweepPoint(BaseModel):
    """P-ASR at one RA budget (poisoned samples, clean samples, epochs; `key` as in the
    stage ids, e.g. 20x5)."""

    poison_num: int
    epochs: int
    clean_num: int | None = None
    key: str = ""
    p_asr: float | None = None
    baseline_p_asr: float | None = None
    p_asr_runs: list[float] = Field(default_factory=list, description="P-ASR of each RA "
                                    "seed (plan.retune.seeds); p_asr is their mean")
    p_asr_ci: tuple[float, float] | None = Field(None, description="95% interval of P-ASR")
    gap: float | None = Field(None, description="p_asr - baseline_p_asr")
    gap_ci: tuple[float, float] | None = Field(None, description="95% interval of the gap "
                                               "(the verdict reads it)")


class LMCCurve(BaseModel):
    """The backdoor-connected path from the purified (0) to the backdoored model (1)."""

    lambdas: list[float]
    c_acc: list[float]
    asr: list[float]
    backdoor_error: list[float]
    lambda50: float | None = Field(None, description="smallest lambda with ASR > 0.5")
    bn: str = "recompute"


class QRAResult(BaseModel):
    """QRA's four numbers and the transfer of its perturbation to other methods."""

    asr: float
    clean_to_target: float
    ref_asr: float
    ref_clean_to_target: float
    transfer: dict[str, float] = Field(default_factory=dict)


class Scores(BaseModel):
    """The numbers a method gets against a trigger (per trigger, or the worst case)."""

    o_asr: float | None = None
    der: float | None = None
    p_cacc: float | None = None
    p_asr: float | None = None
    baseline_p_asr: float | None = None
    gap: float | None = None
    max_gap: float | None = Field(None, description="the robustness score: the largest "
                                  "excess of P-ASR over the baseline's P-ASR across every RA "
                                  "budget run (the reference budget and each sweep point)")
    max_gap_ci: tuple[float, float] | None = Field(
        None, description="the largest lower and the largest upper 95% bound of the gap "
        "across the budgets: superficial when the first passes plan.retune.superficial_gap, "
        "robust when the second does not")
    straddling: list[str] = Field(default_factory=list, description="budgets whose gap "
                                  "interval contains the margin (what makes a verdict "
                                  "inconclusive)")


class TriggerResult(Scores):
    """A method's numbers against one trigger."""

    trigger: str
    budget: SweepPoint | None = Field(None, description="the reference RA budget's point")
    sweep: list[SweepPoint] = Field(default_factory=list)
    qra: QRAResult | None = None
    lmc: LMCCurve | None = None


class MethodResult(Scores):
    """Everything measured for one purification method (worst case over triggers on top)."""

    key: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    o_cacc: float | None = None
    acc_drop: float | None = Field(None, description="the submitted model's C-Acc minus "
                                   "O-C-Acc: what the defense cost in clean accuracy")
    qra_asr: float | None = None
    qra_clean_to_target: float | None = None
    lmc_lambda50: float | None = None
    verdict: Literal["robust", "superficial", "inconclusive", "not_removed", "degraded",
                     "no_backdoor", "unknown"] = "unknown"
    per_trigger: list[TriggerResult] = Field(default_factory=list)
    record: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageStatus] = Field(default_factory=list)
    seconds: float = 0.0


class ModelResult(BaseModel):
    """The submitted model as it is."""

    c_acc: float | None = None
    asr: dict[str, float] = Field(default_factory=dict)
    backdoors_found: int | None = Field(None, description="how many triggers inverted from "
                                        "the model found a backdoor (null: none inverted)")
    inactive: list[str] = Field(default_factory=list, description="triggers whose ASR on the "
                                "submitted model is below plan.min_asr: they activate no "
                                "backdoor, so no method is judged on them (verdict no_backdoor)")


class BaselineInfo(BaseModel):
    """Which model calibrates RA, and its numbers."""

    kind: Literal["reference", "ep", "none"] = "none"
    description: str = ""
    c_acc: float | None = None
    asr: dict[str, float] = Field(default_factory=dict)
    p_asr: dict[str, float] = Field(default_factory=dict)
    sweep: dict[str, list[SweepPoint]] = Field(default_factory=dict)


class GateClause(BaseModel):
    """One gate clause with the value it saw (and, for CI reports, its parts)."""

    expr: str
    passed: bool
    value: float | list[float | None] | None = None
    detail: str = ""
    op: str | None = None
    threshold: float | None = None


class GateVerdict(BaseModel):
    """The verdict against the caller's gate (passed is None when no gate was given)."""

    passed: bool | None = None
    clauses: list[GateClause] = Field(default_factory=list)


class InvertedExample(BaseModel):
    """One held-out image of another class, clean and with the inverted trigger."""

    true_class: int
    predicted: int = Field(..., description="the submitted model's class for the inverted image")
    clean_png: str = Field(..., description="data:image/png;base64 URI", pattern=PNG_URI)
    inverted_png: str = Field(..., description="data:image/png;base64 URI", pattern=PNG_URI)


class InversionResult(BaseModel):
    """What the inversion of a trigger from the submitted model found (`attack: inverted`)."""

    trigger: str = ""
    found: bool = Field(..., description="a backdoor was found: the generator's class is also "
                        "the class with an anomalously small trigger; when false, this trigger "
                        "gets no verdict")
    target: int = Field(..., description="the generator's class (the target when found)")
    confidence: float = Field(..., description="share of other classes' held-in images the "
                              "generator sends to `target`")
    margin: float
    conclusion: str = Field(..., description="the finding in one sentence")
    asr: float | None = Field(None, description="share of test images of other classes the "
                              "inverted trigger sends to `target` in the submitted model")
    detection: dict[str, Any] = Field(default_factory=dict)
    scan: dict[str, Any] = Field(default_factory=dict, description="the smallest-trigger scan")
    examples: list[InvertedExample] = Field(default_factory=list)


class Provenance(BaseModel):
    """Where every number came from."""

    checkpoint_sha256: str = ""
    checkpoint_name: str = ""
    data: dict[str, dict[str, Any]] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    engine_version: str = ""
    torch_version: str = ""
    device: str = ""
    started_at: str = ""
    finished_at: str = ""


class EscalationAttempt(BaseModel):
    """One attempt of a purification run until robust (`plan.until`)."""

    attempt: int
    key: str = Field(..., description="its stages' method key (KEY, then KEY#2, ...)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="the parameters "
                                      "changed from the method as submitted")
    verdict: str
    o_cacc: float | None = None
    acc_drop: float | None = None
    o_asr: float | None = None
    p_asr: float | None = None
    max_gap: float | None = None
    max_gap_ci: tuple[float, float] | None = None
    seconds: float = 0.0


class EscalationInfo(BaseModel):
    """A purification run until robust: every attempt, and which one the report is."""

    until: str
    robust: bool = Field(..., description="the returned attempt is robust")
    chosen: int = Field(..., description="the attempt the report's method result and the "
                        "purified checkpoint are")
    reason: str
    attempts: list[EscalationAttempt] = Field(default_factory=list)


class AuditReport(BaseModel):
    """The report of one audit (or purification)."""

    schema_version: str = SCHEMA_VERSION
    kind: Literal["audit", "purify"] = "audit"
    model: ModelResult = Field(default_factory=ModelResult)
    baseline: BaselineInfo = Field(default_factory=BaselineInfo)
    methods: list[MethodResult] = Field(default_factory=list)
    inversions: list[InversionResult] = Field(default_factory=list, description="triggers "
                                              "inverted from the model (attack: inverted)")
    gate: GateVerdict = Field(default_factory=GateVerdict)
    stages: list[StageStatus] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)
    verdict_rule: str = Field("", description="how the verdicts were reached")
    headline: str = Field("", description="the finding in one sentence (see headline())")
    escalation: EscalationInfo | None = Field(None, description="a purification run until "
                                              "robust: its attempts (plan.until)")
    seconds: float = Field(0.0, description="wall time from the audit's start to its report, "
                           "in one process or over many workers")
    stage_seconds: float = Field(0.0, description="the stages' own times summed (over many "
                                 "workers, more than `seconds` when stages ran side by side)")

    def method(self, key: str) -> MethodResult | None:
        """The result of method `key`, if it ran."""
        return next((m for m in self.methods if m.key == key), None)


def detection_notes(report: AuditReport) -> list[tuple[str, bool]]:
    """(sentence, confident) per method that found its trigger by inversion."""
    notes = []
    for m in report.methods:
        det = m.record.get("detection")
        if not det:
            continue
        text = (f"{m.key}: trigger inversion detected target class {det['target']} "
                f"(confidence {det['confidence']:.2f}, margin {det['margin']:.2f})")
        reason = det.get("reason") or "the inversion found no class that most images go to"
        if not det["confident"]:
            text += (f"; NOT CONFIDENT: {reason}, so this method's unlearning data may not "
                     "carry the backdoor")
        elif det.get("verified"):
            text += f"; confirmed by the smallest-trigger scan: {reason}"
        if (truth := det.get("audit_targets")) is not None:
            text += ("; the audit's trigger targets class " + ", ".join(map(str, truth)) + ": "
                     + ("the detection is right" if det["target"] in truth
                        else "the detection is WRONG"))
        rounds = m.record.get("inversion_rounds")
        if rounds:
            text += ("; the generator spent " + ", ".join(
                f"{r['held_back']:.0%} (pixel {r['held_back_pixel']:.0%}, feature "
                f"{r['held_back_feature']:.0%})" for r in rounds)
                + " of its steps (by round) held back by the pixel or feature bound")
        notes.append((text + ".", bool(det["confident"])))
    return notes


def method_notes(report: AuditReport) -> list[str]:
    """What the table cannot say about a method: that it ran on no data at all (data-free
    methods are handed none), or a note of its own (NC when no class was anomalous)."""
    out = []
    for m in report.methods:
        if m.record.get("data_free"):
            out.append(f"{display_name(m.key)}: data-free, it ran without any of the "
                       "defender's clean images")
        if note := m.record.get("note"):
            out.append(f"{display_name(m.key)}: {note}")
        if m.record.get("inversion_sizes") == "cpu":
            out.append(f"{display_name(m.key)}: {CPU_SIZES_NOTE}")
    for inv in report.inversions:
        if inv.detection.get("inversion_sizes") == "cpu":
            out.append(f"Trigger {inv.trigger} inverted: {CPU_SIZES_NOTE}")
    return out


CPU_SIZES_NOTE = ("the trigger inversion ran at the CPU sizes (5 / 5 / 10 pre-training, mask "
                  "and generator epochs, a width-8 generator), not the authors' (50 / 20 / 30, "
                  "width 32, the default on CUDA); `inversion: {sizes: authors}` runs theirs")


def display_name(key: str) -> str:
    """A method key as people write it: bti_dbf -> BTI-DBF."""
    return key.upper().replace("_", "-")


def _names(items: list[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _retune_spec(report: AuditReport) -> dict[str, Any]:
    return (report.provenance.spec.get("plan") or {}).get("retune") or {}


def ra_budgets(report: AuditReport, t: TriggerResult) -> list[SweepPoint]:
    """Every RA budget run against one trigger: the reference budget, then the sweep."""
    return ([t.budget] if t.budget is not None else []) + list(t.sweep)


def telling_budget(report: AuditReport, methods: list[MethodResult]) -> tuple[
        int, int, float, list[float]] | None:
    """The RA budget that shows `methods` regaining the backdoor most clearly: the one (of
    those run against every method's first trigger) with the largest smallest gap over the
    baseline. Returns (poisoned samples, epochs, baseline P-ASR, each method's P-ASR)."""
    per_method = []
    for m in methods:
        pts = {(b.poison_num, b.epochs): b for b in ra_budgets(report, m.per_trigger[0])
               if b.p_asr is not None and b.baseline_p_asr is not None} if m.per_trigger else {}
        per_method.append(pts)
    common = set.intersection(*(set(p) for p in per_method)) if per_method else set()
    if not common:
        return None
    best = max(sorted(common), key=lambda k: min(p[k].p_asr - p[k].baseline_p_asr
                                                 for p in per_method))
    return (best[0], best[1], per_method[0][best].baseline_p_asr,
            [p[best].p_asr for p in per_method])


def headline(report: AuditReport) -> str:
    """The finding in one sentence, the first thing a reader sees, e.g. "2 of 6 defenses only
    hide the backdoor: FST regains ASR 0.86 and BTI-DBF 0.79 after retuning with 20 poisoned
    images; the baseline regains 0.10." Built only from the report's own numbers."""
    found = [inv for inv in report.inversions if inv.found]
    prefix = "".join(f"The trigger was inverted from the model: class {inv.target} "
                     f"(confidence {inv.confidence:.2f}). " for inv in found)
    if report.inversions and not found and not report.methods:
        return " ".join(inv.conclusion for inv in report.inversions)
    prefix += "".join(no_backdoor_sentence(t, report.model.asr.get(t)) + ". "
                      for t in report.model.inactive)
    if report.methods and all(m.verdict == "no_backdoor" for m in report.methods):
        return prefix.strip()
    return prefix + _defense_headline(report) + escalation_sentence(report)


def escalation_sentence(report: AuditReport) -> str:
    """What a purification run until robust did, after the verdict."""
    esc = report.escalation
    if esc is None:
        return ""
    return f" Purified until robust: {esc.reason}."


def escalation_rows(report: AuditReport) -> list[list[str]]:
    """One row per attempt: attempt, setting, verdict, O-C-Acc, O-ASR, P-ASR, max gap."""
    esc = report.escalation
    if esc is None:
        return []
    return [[f"{a.attempt}{' (returned)' if a.attempt == esc.chosen else ''}",
             ", ".join(f"{k} {v}" for k, v in a.overrides.items()) or "as submitted",
             a.verdict, fmt(a.o_cacc), fmt(a.o_asr), fmt(a.p_asr), fmt(a.max_gap)]
            for a in esc.attempts]


ESCALATION_HEADER = ["attempt", "setting", "verdict", "O-C-Acc", "O-ASR", "P-ASR", "max gap"]


def no_backdoor_sentence(trigger: str, asr: float | None) -> str:
    """What the report, the headline and a failed gate clause say of an inactive trigger."""
    return (f"Trigger {trigger} does not activate a backdoor in the submitted model (ASR "
            f"{fmt(asr, 2)}); nothing to purify")


def by_verdict(report: AuditReport, verdict: str) -> list[MethodResult]:
    """The report's methods judged `verdict`."""
    return [m for m in report.methods if m.verdict == verdict]


def _defense_headline(report: AuditReport) -> str:
    """The defenses' part of the headline."""
    bd = max(report.model.asr.values(), default=None)
    n = len(report.methods) - len(by_verdict(report, "no_backdoor"))
    if len(report.methods) == 0:
        return (f"No defense was run: the submitted model has C-Acc {fmt(report.model.c_acc, 2)}"
                f" and ASR {fmt(bd, 2)}.")
    by = {v: [m for m in report.methods if m.verdict == v]
          for v in ("superficial", "not_removed", "degraded", "robust", "unknown",
                    "no_backdoor", "inconclusive")}
    parts = []
    if by["superficial"]:
        names = [display_name(m.key) for m in by["superficial"]]
        text = (f"{len(names)} of {n} defenses only "
                f"{'hides' if len(names) == 1 else 'hide'} the backdoor")
        shown = telling_budget(report, by["superficial"])
        if shown:
            poison, _, base, p_asr = shown
            regain = [f"{name} regains ASR {v:.2f}" if i == 0 else f"{name} {v:.2f}"
                      for i, (name, v) in enumerate(zip(names, p_asr, strict=True))]
            text += (f": {_names(regain)} after retuning with {poison} poisoned images; the "
                     f"baseline regains {base:.2f}")
        else:
            text += f": {_names(names)}"
        parts.append(text)
    if by["not_removed"]:
        names = [display_name(m.key) for m in by["not_removed"]]
        worst_o = max((m.o_asr for m in by["not_removed"] if m.o_asr is not None), default=None)
        parts.append(f"{_names(names)} {'does' if len(names) == 1 else 'do'} not remove it "
                     f"(O-ASR up to {fmt(worst_o, 2)})")
    if by["degraded"]:
        worst = max(by["degraded"], key=lambda m: m.acc_drop or 0.0)
        names = [display_name(m.key) for m in by["degraded"]]
        parts.append(f"{_names(names)} {'breaks' if len(names) == 1 else 'break'} the model "
                     f"(C-Acc down by up to {fmt(worst.acc_drop, 2)}, to "
                     f"{fmt(worst.o_cacc, 2)}): degraded, whatever the ASR")
    if by["robust"]:
        names = [display_name(m.key) for m in by["robust"]]
        gap = _retune_spec(report).get("superficial_gap")
        within = f"within {gap:.2f} of the baseline " if gap is not None else ""
        parts.append(f"{_names(names)} {'removes' if len(names) == 1 else 'remove'} it "
                     f"robustly (P-ASR {within}at every budget)")
    if by["inconclusive"]:
        names = [display_name(m.key) for m in by["inconclusive"]]
        where = sorted({k for m in by["inconclusive"] for k in m.straddling})
        parts.append(f"{_names(names)}: inconclusive (the gap's interval straddles the "
                     f"margin{' at ' + ', '.join(where) if where else ''})")
    if by["unknown"]:
        names = [display_name(m.key) for m in by["unknown"]]
        parts.append(f"{_names(names)}: no verdict (a stage failed)")
    sentence = "; ".join(parts)
    if not by["superficial"]:
        sentence = f"No defense only hides the backdoor ({n} judged): " + sentence
    return sentence + "."


VERDICT_COLORS = {"robust": "#17803d", "superficial": "#b35c00", "not_removed": "#c0262d",
                  "degraded": "#6b3fa0", "inconclusive": "#8a7a00", "no_backdoor": "#222222",
                  "unknown": "#666666"}
VERDICT_MARKS = {"robust": "🟢", "superficial": "🟠", "not_removed": "🔴", "degraded": "🟣",
                 "inconclusive": "🟡", "no_backdoor": "⚫", "unknown": "⚪"}
VERDICT_MEANING = {
    "robust": "the backdoor is removed and stays removed under retuning",
    "superficial": "ASR is low, but retuning with a few poisoned images brings the backdoor "
                   "back beyond the baseline",
    "not_removed": "the purified model still answers the trigger (O-ASR above the limit)",
    "degraded": "the defense cost more clean accuracy than the limit (acc_drop above "
                "plan.retune.max_acc_drop), whatever its ASR: the model is broken, not purified",
    "inconclusive": "removed, but at some RA budget the gap's 95% interval straddles the "
                    "margin: a re-run could call it either way (more RA seeds decide)",
    "no_backdoor": "the trigger does not activate a backdoor in the submitted model (ASR "
                   "below plan.min_asr): there was nothing to purify, so nothing is judged",
    "unknown": "a stage failed, so no verdict",
}
GLOSSARY = [
    ("C-Acc", "accuracy on clean test images"),
    ("O-ASR", "attack success rate of the purified model: the share of triggered test images "
              "of other classes classified as the target"),
    ("RA", "Retuning Attack: fine-tune the purified model on a few poisoned images among clean "
           "ones, as an attacker with brief access would"),
    ("P-ASR", "attack success rate after RA"),
    ("baseline", "a model that never learned the backdoor (a reference model, or EP), "
                 "retuned the same way: how much ASR retuning alone teaches"),
    ("gap / max gap", "P-ASR minus the baseline's P-ASR, at the reference budget / the largest "
                      "over every RA budget; max gap decides the verdict"),
    ("QRA", "Query-based Reactivation Attack: a small input perturbation that reactivates the "
            "backdoor in the purified model, learned from queries only"),
    ("LMC", "linear mode connectivity: ASR along the straight path from the purified (0) to the "
            "backdoored model (1); a path that stays low means the purified model left the "
            "backdoor's basin (lambda50 is where ASR first exceeds 0.5)"),
]


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a table; '-' when it was not computed."""
    return "-" if v is None else f"{v:.{digits}f}"


TABLE_COLUMNS = [("O-C-Acc", "o_cacc"), ("acc drop", "acc_drop"), ("O-ASR", "o_asr"),
                 ("DER", "der"), ("P-C-Acc", "p_cacc"), ("P-ASR", "p_asr"),
                 ("base P-ASR", "baseline_p_asr"), ("gap", "gap"), ("max gap", "max_gap"),
                 ("QRA-ASR", "qra_asr"), ("LMC-l50", "lmc_lambda50")]


def table_rows(report: AuditReport) -> list[list[str]]:
    """The summary table (one row per method) as strings, shared by every renderer."""
    rows = []
    for m in report.methods:
        rows.append([m.key] + [fmt(getattr(m, f)) for _, f in TABLE_COLUMNS]
                    + [m.verdict, f"{m.seconds:.1f}"])
    return rows


def sweep_series(report: AuditReport) -> tuple[list[tuple[int, int]], list[tuple[str, list[
        float | None]]]]:
    """P-ASR against the RA budget: the budgets (poisoned samples, epochs) in order, and one
    series per method and trigger, then the baseline's (label 'baseline'), for the sweep
    table and plot."""
    triggers = sorted({t.trigger for m in report.methods for t in m.per_trigger})
    budgets = sorted({(b.poison_num, b.epochs) for m in report.methods for t in m.per_trigger
                      for b in ra_budgets(report, t)})
    series: list[tuple[str, list[float | None]]] = []
    base: dict[str, dict[tuple[int, int], float | None]] = {}
    for m in report.methods:
        for t in m.per_trigger:
            points = {(b.poison_num, b.epochs): b for b in ra_budgets(report, t)}
            label = m.key if len(triggers) == 1 else f"{m.key} [{t.trigger}]"
            series.append((label, [points[k].p_asr if k in points else None for k in budgets]))
            for k, b in points.items():
                if b.baseline_p_asr is not None:
                    base.setdefault(t.trigger, {})[k] = b.baseline_p_asr
    for trig in triggers:
        if trig in base:
            label = "baseline" if len(triggers) == 1 else f"baseline [{trig}]"
            series.append((label, [base[trig].get(k) for k in budgets]))
    return budgets, series


def gap_intervals(report: AuditReport) -> tuple[list[tuple[int, int]], list[tuple[str, list[
        str]]]]:
    """The gap to the baseline at every RA budget with its 95% interval, one row per method
    and trigger, as text ("0.26 [0.21, 0.31]"): what the verdict reads."""
    budgets, _ = sweep_series(report)
    triggers = {t.trigger for m in report.methods for t in m.per_trigger}
    rows: list[tuple[str, list[str]]] = []
    for m in report.methods:
        for t in m.per_trigger:
            points = {(b.poison_num, b.epochs): b for b in ra_budgets(report, t)}
            label = m.key if len(triggers) == 1 else f"{m.key} [{t.trigger}]"
            cells = []
            for k in budgets:
                p = points.get(k)
                if p is None or p.gap is None:
                    cells.append("-")
                else:
                    ci = f" [{p.gap_ci[0]:.2f}, {p.gap_ci[1]:.2f}]" if p.gap_ci else ""
                    cells.append(f"{p.gap:.2f}{ci}")
            if any(c != "-" for c in cells):
                rows.append((label, cells))
    return budgets, rows


TABLE_HEADER = ["method"] + [c for c, _ in TABLE_COLUMNS] + ["verdict", "seconds"]


def _md(text: object) -> str:
    """User-supplied text (method labels, file names, error messages) for Markdown outside
    a code span: CI pages render Markdown's raw HTML, so `&` and `<` (which every tag and
    entity starts with) are escaped; `>` alone starts nothing and stays, as in badnets->3."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;")


def _code(text: object) -> str:
    """User-supplied text inside a code span, where HTML is inert: only a backtick, which
    would end the span, is replaced."""
    return str(text).replace("`", "'")


def to_markdown(report: AuditReport) -> str:
    """Markdown for a pull-request comment."""
    out = [f"## ppr-audit {report.kind} report", ""]
    out += [f"**{_md(report.headline or headline(report))}**", ""]
    pv = report.provenance
    asr = ", ".join(f"{_md(k)}: {fmt(v)}" for k, v in report.model.asr.items())
    out.append(f"Submitted model `{_code(pv.checkpoint_name)}` (sha256 "
               f"`{pv.checkpoint_sha256[:12]}`): C-Acc {fmt(report.model.c_acc)}, "
               f"ASR {asr or '-'}.")
    for key, given in pv.data.items():
        if key.startswith("trigger ") and given.get("kind") == "examples":
            out.append(f"Trigger `{_code(key.removeprefix('trigger '))}` given by example: "
                       f"{given.get('measured')} held-out images measure ASR, "
                       f"{given.get('attacking')} others serve RA, QRA and EP/PAM.")
    for inv in report.inversions:
        out += ["", f"Trigger `{_code(inv.trigger)}` inverted from the model (BTI-DBF's "
                    f"generator, checked by a smallest-trigger scan): {_md(inv.conclusion)}"]
        if inv.examples:
            out += ["", "| true class | clean | inverted | model says |", "|---|---|---|---|"]
            out += [f"| {e.true_class} | ![clean]({e.clean_png}) | ![inverted]({e.inverted_png})"
                    f" | {e.predicted} |" for e in inv.examples]
        out.append("")
    b = report.baseline
    out.append(f"RA baseline: **{b.kind}** {_md(b.description)}".rstrip() + ".")
    if report.gate.passed is not None:
        out.append(f"Gate: **{'PASSED' if report.gate.passed else 'FAILED'}**")
        for c in report.gate.clauses:
            out.append(f"- {'pass' if c.passed else 'FAIL'} `{_code(c.expr)}` (value: "
                       f"{_val(c.value)})" + (f" {_md(c.detail)}" if c.detail else ""))
    out += ["", "| " + " | ".join(TABLE_HEADER) + " |",
            "|" + "---|" * len(TABLE_HEADER)]
    out += ["| " + " | ".join([_md(c) for c in r[:-2]]
                              + [f"{VERDICT_MARKS.get(r[-2], '')} {r[-2]}", _md(r[-1])])
            + " |" for r in table_rows(report)]
    shown = ["robust", "superficial", "not_removed", "degraded"]
    shown += [v for v in ("inconclusive", "no_backdoor") if by_verdict(report, v)]
    out += ["", " ".join(f"{VERDICT_MARKS[v]} **{v}**: {VERDICT_MEANING[v]}." for v in shown)]
    budgets, series = sweep_series(report)
    if budgets:
        out += ["", "P-ASR by retuning budget (poisoned samples, epochs):", "",
                "| method | " + " | ".join(f"{pn} ({ep} ep)" for pn, ep in budgets) + " |",
                "|---|" + "---|" * len(budgets)]
        out += [f"| {_md(label)} | " + " | ".join(fmt(v) for v in vals) + " |"
                for label, vals in series]
    budgets, gaps = gap_intervals(report)
    if gaps:
        margin = _retune_spec(report).get("superficial_gap", 0.2)
        out += ["", f"Gap to the baseline by budget, with its 95% interval (superficial "
                    f"where the interval lies above {margin:.2f}, robust where it lies at or "
                    "below it):", "",
                "| method | " + " | ".join(f"{pn} ({ep} ep)" for pn, ep in budgets) + " |",
                "|---|" + "---|" * len(budgets)]
        out += [f"| {_md(label)} | " + " | ".join(cells) + " |" for label, cells in gaps]
    if rows := escalation_rows(report):
        out += ["", f"Purified until robust: {_md(report.escalation.reason)}.", "",
                "| " + " | ".join(ESCALATION_HEADER) + " |", "|" + "---|" * len(
                    ESCALATION_HEADER)]
        out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    notes = detection_notes(report)
    if notes:
        out += ["", "Trigger inversion:"] + [f"- {_md(t)}" for t, _ in notes]
    if extra := method_notes(report):
        out += ["", "Methods:"] + [f"- {_md(t)}" for t in extra]
    if report.verdict_rule:
        out += ["", f"Verdicts: {report.verdict_rule}."]
    failed = [s for s in report.stages if s.status == "failed"]
    failed += [s for m in report.methods for s in m.stages if s.status == "failed"]
    if failed:
        out += ["", "Failed stages:"] + [f"- {_md(s.name)}: {_md(s.error)}" for s in failed]
    out += ["", "<details><summary>Glossary</summary>", ""]
    out += [f"- **{term}**: {text}." for term, text in GLOSSARY]
    out += ["", "</details>"]
    out += ["", f"Engine {pv.engine_version}, torch {pv.torch_version}, device {pv.device}, "
            f"seed {pv.seed}, {report.seconds:.1f} s."]
    return "\n".join(out) + "\n"


def _val(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return fmt(v) if isinstance(v, float | int) or v is None else str(v)


_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _bar_chart(report: AuditReport) -> str:
    """Grouped bars per method: ASR backdoored / purified / after RA / after QRA."""
    bd = max(report.model.asr.values(), default=None)
    series = [("backdoored", lambda m: bd), ("purified (O-ASR)", lambda m: m.o_asr),
              ("after RA (P-ASR)", lambda m: m.p_asr), ("after QRA", lambda m: m.qra_asr)]
    w, h, pad = 120 * max(1, len(report.methods)) + 80, 260, 40
    group = (w - pad - 20) / max(1, len(report.methods))
    bar = group / (len(series) + 1)
    parts = [f'<svg class="plot" id="asr-bars" xmlns="http://www.w3.org/2000/svg" width="{w}" '
             f'height="{h + 60}" role="img" aria-label="ASR per method">']
    parts.append(f'<line x1="{pad}" y1="{h}" x2="{w - 10}" y2="{h}" stroke="#333"/>')
    for t in (0, 0.5, 1.0):
        y = h - t * (h - 20)
        parts.append(f'<text x="4" y="{y + 4:.1f}" font-size="11">{t:.1f}</text>'
                     f'<line x1="{pad}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" stroke="#ddd"/>')
    for i, m in enumerate(report.methods):
        x0 = pad + i * group
        for j, (_, get) in enumerate(series):
            v = get(m)
            if v is None:
                continue
            bh = v * (h - 20)
            parts.append(f'<rect class="bar" x="{x0 + j * bar:.1f}" y="{h - bh:.1f}" '
                         f'width="{bar * 0.9:.1f}" height="{bh:.1f}" fill="{_COLORS[j]}">'
                         f'<title>{html.escape(m.key)} {series[j][0]}: {v:.3f}</title></rect>')
        parts.append(f'<text x="{x0 + group / 2 - 10:.1f}" y="{h + 16}" font-size="12">'
                     f'{html.escape(m.key)}</text>')
    for j, (name, _) in enumerate(series):
        parts.append(f'<rect x="{pad + j * 150}" y="{h + 30}" width="10" height="10" '
                     f'fill="{_COLORS[j]}"/><text x="{pad + j * 150 + 14}" y="{h + 39}" '
                     f'font-size="11">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


_DASHES = ["", "6,3", "2,3", "8,3,2,3", "12,4", "4,2,1,2"]
_MARKERS = ["circle", "square", "triangle", "diamond"]


def _marker(kind: str, x: float, y: float, color: str) -> str:
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>'
    if kind == "square":
        return f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{color}"/>'
    if kind == "triangle":
        return (f'<polygon points="{x:.1f},{y - 4.5:.1f} {x - 4:.1f},{y + 3.5:.1f} '
                f'{x + 4:.1f},{y + 3.5:.1f}" fill="{color}"/>')
    return (f'<polygon points="{x:.1f},{y - 4.5:.1f} {x + 4.5:.1f},{y:.1f} {x:.1f},{y + 4.5:.1f} '
            f'{x - 4.5:.1f},{y:.1f}" fill="{color}"/>')


def _line_chart(svg_id: str, label: str, x_title: str, ticks: list[tuple[float, str]],
                series: list[tuple[str, list[tuple[float, float]], str]]) -> str:
    """ASR (0..1) against x in [0, 1]: one line per series, told apart by colour, dash
    pattern and marker shape, each named in a legend, so overlapping lines stay readable.
    A series styled 'baseline' is drawn black and thick-dashed."""
    w, h, pad, legend_w = 440, 240, 44, 190
    x_of = lambda x: pad + x * (w - pad - 10)  # noqa: E731 - tiny local mapping
    y_of = lambda a: h - a * (h - 20)  # noqa: E731
    parts = [f'<svg class="plot" id="{svg_id}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{w + legend_w}" height="{h + 44}" role="img" aria-label="{label}">',
             f'<line x1="{pad}" y1="{h}" x2="{w}" y2="{h}" stroke="#333"/>',
             f'<line x1="{pad}" y1="10" x2="{pad}" y2="{h}" stroke="#333"/>',
             f'<text x="{pad + 40}" y="{h + 36}" font-size="11">{html.escape(x_title)}</text>',
             '<text x="2" y="14" font-size="11">ASR</text>']
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<text x="14" y="{y_of(t) + 4:.1f}" font-size="10">{t:.1f}</text>'
                     f'<line x1="{pad}" y1="{y_of(t):.1f}" x2="{w}" y2="{y_of(t):.1f}" '
                     f'stroke="#eee"/>')
    for x, text in ticks:
        parts.append(f'<text x="{x_of(x) - 8:.1f}" y="{h + 16}" font-size="10">'
                     f'{html.escape(text)}</text>')
    for i, (name, pts, style) in enumerate(series):
        base = style == "baseline"
        color = "#000" if base else _COLORS[i % len(_COLORS)]
        dash = "7,4" if base else _DASHES[i % len(_DASHES)]
        marker = _MARKERS[i % len(_MARKERS)]
        coords = " ".join(f"{x_of(x):.1f},{y_of(a):.1f}" for x, a in pts)
        parts.append(f'<g class="{"baseline" if base else "curve"}" data-name="{html.escape(name)}"'
                     f'><title>{html.escape(name)}</title><polyline points="{coords}" '
                     f'fill="none" stroke="{color}" stroke-width="{3 if base else 2}" '
                     f'stroke-dasharray="{dash}"/>'
                     + "".join(_marker(marker, x_of(x), y_of(a), color) for x, a in pts) + "</g>")
        ly = 20 + 18 * i
        parts.append(f'<line x1="{w + 10}" y1="{ly - 4}" x2="{w + 40}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>'
                     + _marker(marker, w + 25, ly - 4, color)
                     + f'<text x="{w + 46}" y="{ly}" font-size="12">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _lmc_chart(report: AuditReport) -> str:
    """One ASR curve per method along the path purified (0) -> backdoored (1)."""
    curves = [(m.key, t.lmc) for m in report.methods for t in m.per_trigger[:1] if t.lmc]
    if not curves:
        return "<p>No LMC curves were computed.</p>"
    series = [(key, list(zip(c.lambdas, c.asr, strict=True)), "method") for key, c in curves]
    ticks = [(x, f"{x:.1f}") for x in (0.0, 0.5, 1.0)]
    return _line_chart("lmc-curves", "LMC curves", "lambda (0: purified, 1: backdoored)",
                       ticks, series)


def _sweep_chart(report: AuditReport) -> str:
    """P-ASR against the RA budget, one line per method and the baseline's."""
    budgets, series = sweep_series(report)
    if not budgets:
        return "<p>No retuning attack was run.</p>"
    xs = [i / max(1, len(budgets) - 1) for i in range(len(budgets))]
    ticks = [(x, f"{pn} ({ep} ep)") for x, (pn, ep) in zip(xs, budgets, strict=True)]
    lines = [(label, [(x, v) for x, v in zip(xs, vals, strict=True) if v is not None],
              "baseline" if label.startswith("baseline") else "method")
             for label, vals in series]
    return _line_chart("sweep", "P-ASR by retuning budget",
                       "poisoned samples in the retuning set (epochs)", ticks, lines)


def _gap_table(report: AuditReport) -> str:
    """The gap to the baseline by budget with its 95% interval (what the verdict reads)."""
    e = html.escape
    budgets, rows = gap_intervals(report)
    if not rows:
        return ""
    head = "".join(f"<th>{pn} ({ep} ep)</th>" for pn, ep in budgets)
    body = "".join(f"<tr><td>{e(label)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells)
                   + "</tr>" for label, cells in rows)
    return (f"<h3>Gap to the baseline (95% interval)</h3><table id='gaps'><tr><th>method</th>"
            f"{head}</tr>{body}</table>")


def _escalation_html(report: AuditReport) -> str:
    """The attempts of a purification run until robust."""
    e = html.escape
    rows = escalation_rows(report)
    if not rows:
        return ""
    head = "".join(f"<th>{e(c)}</th>" for c in ESCALATION_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<h2>Purified until robust</h2><p>{e(report.escalation.reason)}.</p>"
            f"<table id='attempts'><tr>{head}</tr>{body}</table>")


def _inversion_html(inv: InversionResult) -> str:
    """A trigger inverted from the model: its conclusion and a few images, clean and inverted."""
    e = html.escape
    cells = "".join(
        f"<tr><td>{ex.true_class}</td><td><img alt='clean' src='{e(ex.clean_png)}'></td>"
        f"<td><img alt='inverted' src='{e(ex.inverted_png)}'></td><td>{ex.predicted}</td></tr>"
        for ex in inv.examples)
    table = (f"<table class='inverted'><tr><th>true class</th><th>clean</th><th>inverted</th>"
             f"<th>model says</th></tr>{cells}</table>") if cells else ""
    state = "fail" if inv.found else "pass"
    return (f"<h2>Trigger {e(inv.trigger)} inverted from the model</h2>"
            f"<p class='inversion {state}'>{e(inv.conclusion)}</p>{table}")


def to_html(report: AuditReport) -> str:
    """One self-contained HTML page: summary, gate, tables, plots, provenance."""
    e = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r[:-2])
                   + f"<td class='verdict v-{e(r[-2])}'>{e(r[-2])}</td><td>{e(r[-1])}</td></tr>"
                   for r in table_rows(report))
    legend = "".join(f"<li><span class='swatch v-{v}'></span><b>{v}</b>: {e(text)}</li>"
                     for v, text in VERDICT_MEANING.items())
    glossary = "".join(f"<dt>{e(term)}</dt><dd>{e(text)}.</dd>" for term, text in GLOSSARY)
    verdict_css = "".join(f".v-{v}{{color:#fff;background:{c}}}"
                          for v, c in VERDICT_COLORS.items())
    head = "".join(f"<th>{e(c)}</th>" for c in TABLE_HEADER)
    gate = ""
    if report.gate.passed is not None:
        items = "".join(f"<li class='{'pass' if c.passed else 'fail'}'>{e(c.expr)}: "
                        f"{e(_val(c.value))} {e(c.detail)}</li>" for c in report.gate.clauses)
        gate = (f"<h2>Gate: <span id='gate' class='{'pass' if report.gate.passed else 'fail'}'>"
                f"{'PASSED' if report.gate.passed else 'FAILED'}</span></h2><ul>{items}</ul>")
    failed = [s for s in report.stages if s.status == "failed"] + [
        s for m in report.methods for s in m.stages if s.status == "failed"]
    notes = "".join(f"<li class='{'pass' if ok else 'fail'}'>{e(t)}</li>"
                    for t, ok in detection_notes(report))
    notes = f"<h2>Trigger inversion</h2><ul id='detection'>{notes}</ul>" if notes else ""
    if extra := method_notes(report):
        notes += ("<h2>Methods</h2><ul id='method-notes'>"
                  + "".join(f"<li>{e(t)}</li>" for t in extra) + "</ul>")
    inversions = "".join(_inversion_html(inv) for inv in report.inversions)
    inversions += _escalation_html(report)
    rule = f"<p id='verdict-rule'>Verdicts: {e(report.verdict_rule)}.</p>" if \
        report.verdict_rule else ""
    fails = ("<h2>Failed stages</h2><ul>" + "".join(
        f"<li>{e(s.name)}: {e(s.error or '')}</li>" for s in failed) + "</ul>") if failed else ""
    pv = report.provenance
    asr = ", ".join(f"{e(k)}: {fmt(v)}" for k, v in report.model.asr.items())
    prov = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in [
        ("checkpoint", pv.checkpoint_name), ("sha256", pv.checkpoint_sha256),
        ("engine", pv.engine_version), ("torch", pv.torch_version), ("device", pv.device),
        ("seed", pv.seed), ("started", pv.started_at), ("finished", pv.finished_at)])
    data = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v.get('ref')))}</td><td>{v.get('n')}</td>"
                   f"<td><code>{e(str(v.get('sha256', ''))[:16])}</code></td></tr>"
                   for k, v in pv.data.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ppr-audit report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right}}th{{background:#f4f4f4}}.pass{{color:#17803d}}.fail{{color:#c0262d}}
td.verdict{{text-align:center;font-weight:600}}{verdict_css}
.swatch{{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle}}
#verdict-legend{{list-style:none;padding:0}}#headline{{font-size:1.25em;font-weight:600;
border-left:5px solid #b35c00;padding:0.4em 0.8em;background:#fff7ec}}
dt{{font-weight:600;margin-top:0.4em}}
.inverted img{{width:96px;height:96px;image-rendering:pixelated}}
</style></head><body>
<h1>ppr-audit {e(report.kind)} report</h1>
<p id="headline">{e(report.headline or headline(report))}</p>
<p>Submitted model: C-Acc <b id="model-cacc">{fmt(report.model.c_acc)}</b>, ASR {asr or '-'}.
RA baseline: <b>{e(report.baseline.kind)}</b> {e(report.baseline.description)}.</p>
{gate}
{inversions}
<h2>Results</h2>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<ul id="verdict-legend">{legend}</ul>
{rule}
{notes}
<h2>Attack success rate per method</h2>
{_bar_chart(report)}
<h2>P-ASR by retuning budget</h2>
{_sweep_chart(report)}
{_gap_table(report)}
<h2>Backdoor-connected path (LMC)</h2>
{_lmc_chart(report)}
{fails}
<h2>Glossary</h2>
<dl id="glossary">{glossary}</dl>
<h2>Provenance</h2>
<table id="provenance">{prov}</table>
<table id="data"><tr><th>data</th><th>reference</th><th>images</th><th>sha256</th></tr>
{data}</table>
<p>Total {report.seconds:.1f} s. Schema {e(report.schema_version)}.</p>
</body></html>
"""


MEDIA_TYPES = {"json": "application/json", "md": "text/markdown; charset=utf-8",
               "html": "text/html; charset=utf-8"}


def render(report: AuditReport, fmt_name: str) -> tuple[str, str]:
    """(body, media type) of the report in `json`, `md` or `html`."""
    renderers = {"json": lambda r: r.model_dump_json(indent=2), "md": to_markdown,
                 "html": to_html}
    if fmt_name not in renderers:
        raise ValueError(f"unknown report format {fmt_name!r}; use json, md or html")
    return renderers[fmt_name](report), MEDIA_TYPES[fmt_name]
