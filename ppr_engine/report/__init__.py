"""The audit report: its schema (`schema`), its words (`prose`), what every renderer shows
the same way (`tables`), the document every renderer draws (`sections`: one list of
sections, so a field is written once), and one renderer per format (JSON, `render_md`,
`render_html`).
"""

from __future__ import annotations

from .prose import (
    CPU_SIZES_NOTE,
    ESCALATION_HEADER,
    by_verdict,
    detection_notes,
    display_name,
    escalation_rows,
    escalation_sentence,
    fmt,
    headline,
    method_notes,
    no_backdoor_sentence,
    ra_budgets,
    telling_budget,
)
from .render_html import to_html
from .render_md import to_markdown
from .schema import (
    PNG_URI,
    SCHEMA_VERSION,
    AuditReport,
    BaselineInfo,
    EscalationAttempt,
    EscalationInfo,
    GateClause,
    GateVerdict,
    InversionResult,
    InvertedExample,
    LMCCurve,
    MethodResult,
    ModelResult,
    Provenance,
    QRAResult,
    Scores,
    StageStatus,
    SweepPoint,
    TriggerResult,
)
from .tables import (
    GLOSSARY,
    TABLE_COLUMNS,
    TABLE_HEADER,
    VERDICT_COLORS,
    VERDICT_MARKS,
    VERDICT_MEANING,
    gap_intervals,
    sweep_series,
    table_rows,
    value_text,
)

MEDIA_TYPES = {"json": "application/json", "md": "text/markdown; charset=utf-8",
               "html": "text/html; charset=utf-8"}


def render(report: AuditReport, fmt_name: str) -> tuple[str, str]:
    """(body, media type) of the report in `json`, `md` or `html`."""
    renderers = {"json": lambda r: r.model_dump_json(indent=2), "md": to_markdown,
                 "html": to_html}
    if fmt_name not in renderers:
        raise ValueError(f"unknown report format {fmt_name!r}; use json, md or html")
    return renderers[fmt_name](report), MEDIA_TYPES[fmt_name]


__all__ = ["AuditReport", "BaselineInfo", "CPU_SIZES_NOTE", "ESCALATION_HEADER",
           "EscalationAttempt", "EscalationInfo", "GLOSSARY", "GateClause", "GateVerdict",
           "InversionResult", "InvertedExample", "LMCCurve", "MEDIA_TYPES", "MethodResult",
           "ModelResult", "PNG_URI", "Provenance", "QRAResult", "SCHEMA_VERSION", "Scores",
           "StageStatus", "SweepPoint", "TABLE_COLUMNS", "TABLE_HEADER", "TriggerResult",
           "VERDICT_COLORS", "VERDICT_MARKS", "VERDICT_MEANING", "by_verdict", "detection_notes",
           "display_name", "escalation_rows", "escalation_sentence", "fmt", "gap_intervals",
           "headline", "method_notes", "no_backdoor_sentence", "ra_budgets", "render",
           "sweep_series", "table_rows", "telling_budget", "to_html", "to_markdown",
           "value_text"]
