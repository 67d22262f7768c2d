"""The report as a document: one list of sections, built once, that every renderer draws.

A field shown in the Markdown comment and the HTML page is written here once: which
sections there are, in which order, with which words, rows and notes. A renderer only
formats them (`render_md`, `render_html`): inline runs (text, code, strong), tables, lists
with a pass/fail state, definitions, images, and the figures only a page can draw, each
named by `figure` with the table a text renderer shows in its place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .prose import (
    ESCALATION_HEADER,
    _retune_spec,
    by_verdict,
    detection_notes,
    escalation_rows,
    headline,
    method_notes,
)
from .schema import AuditReport, InversionResult
from .tables import (
    GLOSSARY,
    TABLE_HEADER,
    VERDICT_MEANING,
    fmt,
    gap_intervals,
    sweep_series,
    table_rows,
    value_text,
)


@dataclass(frozen=True)
class Run:
    """A piece of inline text: plain, `code` (a name or a hash) or `strong`; `id` names a
    number a page marks for scripts and tests."""

    text: str
    style: Literal["text", "code", "strong"] = "text"
    id: str | None = None


def _t(text: object) -> Run:
    return Run(str(text))


def _c(text: object) -> Run:
    return Run(str(text), "code")


def _b(text: object, id: str | None = None) -> Run:
    return Run(str(text), "strong", id)


Inline = list[Run]


@dataclass(frozen=True)
class Image:
    """An image cell (a data: URL the engine made)."""

    alt: str
    src: str


@dataclass
class Table:
    """Rows of cells under a header; `verdict_column` holds verdicts a renderer colors."""

    id: str
    header: list[str]
    rows: list[list[str | Image]]
    verdict_column: int | None = None
    css: str | None = None


@dataclass
class Item:
    """A list entry; `ok` True or False marks a pass or a failure."""

    runs: Inline
    ok: bool | None = None


@dataclass
class Section:
    """One part of the report. `key` is its stable name (and its element id on a page)."""

    key: str
    title: str | None = None
    paragraphs: list[Inline] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    table: Table | None = None
    definitions: list[tuple[str, str]] = field(default_factory=list)
    # a plot only a page draws (`asr-bars`, `sweep`, `lmc-curves`); text shows `table`
    figure: str | None = None
    status: bool | None = None  # the section's own pass/fail (the gate, an inversion)
    collapsed: bool = False  # shown folded where the format can fold


def _model(report: AuditReport) -> Section:
    pv = report.provenance
    asr = ", ".join(f"{k}: {fmt(v)}" for k, v in report.model.asr.items()) or "-"
    paras: list[Inline] = [[_t("Submitted model "), _c(pv.checkpoint_name),
                            _t(" (sha256 "), _c(pv.checkpoint_sha256[:12]),
                            _t("): C-Acc "), _b(fmt(report.model.c_acc), "model-cacc"),
                            _t(f", ASR {asr}.")]]
    for key, given in pv.data.items():
        if key.startswith("trigger ") and given.get("kind") == "examples":
            paras.append([_t("Trigger "), _c(key.removeprefix("trigger ")),
                          _t(f" given by example: {given.get('measured')} held-out images "
                             f"measure ASR, {given.get('attacking')} others serve RA, QRA "
                             "and EP/PAM.")])
    b = report.baseline
    paras.append([_t("RA baseline: "), _b(b.kind),
                  _t(f" {b.description}".rstrip() + ".")])
    return Section("summary", paragraphs=paras)


def _gate(report: AuditReport) -> list[Section]:
    if report.gate.passed is None:
        return []
    items = [Item([_t("pass " if c.passed else "FAIL "), _c(c.expr),
                   _t(f" (value: {value_text(c.value)})"
                                  + (f" {c.detail}" if c.detail else ""))], c.passed)
             for c in report.gate.clauses]
    return [Section("gate", f"Gate: {'PASSED' if report.gate.passed else 'FAILED'}",
                    items=items, status=report.gate.passed)]


def _inversion(inv: InversionResult) -> Section:
    rows: list[list[str | Image]] = [[str(e.true_class), Image("clean", e.clean_png),
                                      Image("inverted", e.inverted_png), str(e.predicted)]
                                     for e in inv.examples]
    return Section(f"inversion-{inv.trigger}", paragraphs=[
        [_t("Trigger "), _c(inv.trigger), _t(" inverted from the model (BTI-DBF's generator, "
                                             f"checked by a smallest-trigger scan): "
                                             f"{inv.conclusion}")]],
        table=Table("inverted", ["true class", "clean", "inverted", "model says"], rows,
                    css="inverted") if rows else None,
        status=not inv.found)


def _escalation(report: AuditReport) -> list[Section]:
    rows = escalation_rows(report)
    if not rows:
        return []
    reason = report.escalation.reason
    return [Section("attempts", paragraphs=[[_t(f"Purified until robust: {reason}.")]],
                    table=Table("attempts", list(ESCALATION_HEADER), list(rows)))]


def _results(report: AuditReport) -> list[Section]:
    shown = ["robust", "superficial", "not_removed", "degraded"]
    shown += [v for v in ("inconclusive", "no_backdoor") if by_verdict(report, v)]
    out = [Section("results", "Results", table=Table(
                       "results", list(TABLE_HEADER), list(table_rows(report)),
                       verdict_column=len(TABLE_HEADER) - 2)),
           Section("verdict-legend", definitions=[(v, VERDICT_MEANING[v]) for v in shown])]
    if report.verdict_rule:
        out.append(Section("verdict-rule", paragraphs=[[_t(f"Verdicts: {report.verdict_rule}.")]]))
    return out


def _notes(report: AuditReport) -> list[Section]:
    out = []
    if notes := detection_notes(report):
        out.append(Section("detection", "Trigger inversion",
                           items=[Item([_t(t)], ok) for t, ok in notes]))
    if extra := method_notes(report):
        out.append(Section("method-notes", "Methods", items=[Item([_t(t)]) for t in extra]))
    return out


def _budget_header(budgets: list[tuple[int, int]]) -> list[str]:
    return ["method"] + [f"{pn} ({ep} ep)" for pn, ep in budgets]


def _figures(report: AuditReport) -> list[Section]:
    out = [Section("asr-bars", "Attack success rate per method", figure="asr-bars")]
    budgets, series = sweep_series(report)
    sweep = Table("sweep-table", _budget_header(budgets),
                  [[label] + [fmt(v) for v in vals] for label, vals in series]) \
        if budgets else None
    out.append(Section("sweep", "P-ASR by retuning budget (poisoned samples, epochs)",
                       figure="sweep", table=sweep))
    budgets, gaps = gap_intervals(report)
    if gaps:
        margin = _retune_spec(report).get("superficial_gap", 0.2)
        out.append(Section("gaps", "Gap to the baseline (95% interval)", paragraphs=[[_t(
            f"Gap to the baseline by budget, with its 95% interval (superficial where the "
            f"interval lies above {margin:.2f}, robust where it lies at or below it):")]],
            table=Table("gaps", _budget_header(budgets),
                        [[label, *cells] for label, cells in gaps])))
    out.append(Section("lmc", "Backdoor-connected path (LMC)", figure="lmc-curves"))
    return out


def _failed(report: AuditReport) -> list[Section]:
    failed = [s for s in report.stages if s.status == "failed"]
    failed += [s for m in report.methods for s in m.stages if s.status == "failed"]
    if not failed:
        return []
    return [Section("failed", "Failed stages",
                    items=[Item([_t(f"{s.name}: {s.error or ''}")], False) for s in failed])]


def _provenance(report: AuditReport) -> list[Section]:
    pv = report.provenance
    facts = [("checkpoint", pv.checkpoint_name), ("sha256", pv.checkpoint_sha256),
             ("engine", pv.engine_version), ("torch", pv.torch_version), ("device", pv.device),
             ("seed", pv.seed), ("started", pv.started_at), ("finished", pv.finished_at)]
    data = [[k, str(v.get("ref")), str(v.get("n")), str(v.get("sha256", ""))[:16]]
            for k, v in pv.data.items()]
    return [Section("provenance", "Provenance", collapsed=True, table=Table(
                "provenance", ["", "value"], [[k, str(v)] for k, v in facts])),
            Section("data", collapsed=True, table=Table(
                "data", ["data", "reference", "images", "sha256"], data)),
            Section("footer", paragraphs=[[_t(
                f"Engine {pv.engine_version}, torch {pv.torch_version}, device {pv.device}, "
                f"seed {pv.seed}, {report.seconds:.1f} s; schema {report.schema_version}.")]])]


def sections(report: AuditReport) -> list[Section]:
    """The report's sections in reading order: the headline and the submitted model, the
    gate, inversions and escalation, the results and their notes, the plots (with their
    tables), failures, the glossary and the provenance."""
    out = [Section("headline", paragraphs=[[_b(report.headline or headline(report))]]),
           _model(report)]
    out += _gate(report)
    out += [_inversion(inv) for inv in report.inversions]
    out += _escalation(report)
    out += _results(report)
    out += _notes(report)
    out += _figures(report)
    out += _failed(report)
    out.append(Section("glossary", "Glossary", definitions=list(GLOSSARY), collapsed=True))
    out += _provenance(report)
    return out
