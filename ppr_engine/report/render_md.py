"""The report as Markdown (a pull-request comment).
"""

from __future__ import annotations

from .prose import (
    ESCALATION_HEADER,
    _retune_spec,
    by_verdict,
    detection_notes,
    escalation_rows,
    headline,
    method_notes,
)
from .schema import AuditReport
from .tables import (
    GLOSSARY,
    TABLE_HEADER,
    VERDICT_MARKS,
    VERDICT_MEANING,
    fmt,
    gap_intervals,
    sweep_series,
    table_rows,
    value_text,
)


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
                       f"{value_text(c.value)})" + (f" {_md(c.detail)}" if c.detail else ""))
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
