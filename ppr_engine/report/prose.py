"""The report in words: the headline, the notes on detections and methods, the
sentences every renderer shares.
"""

from __future__ import annotations

from typing import Any

from .schema import AuditReport, MethodResult, SweepPoint, TriggerResult


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a table; '-' when it was not computed."""
    return "-" if v is None else f"{v:.{digits}f}"


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
