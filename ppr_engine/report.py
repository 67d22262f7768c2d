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


class StageStatus(BaseModel):
    """One stage of the audit: what ran, whether it worked, how long it took."""

    name: str
    status: Literal["ok", "failed", "skipped"] = "ok"
    error: str | None = None
    seconds: float = 0.0


class SweepPoint(BaseModel):
    """P-ASR at one (poisoned samples, epochs) budget."""

    poison_num: int
    epochs: int
    p_asr: float | None = None
    baseline_p_asr: float | None = None


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


class TriggerResult(Scores):
    """A method's numbers against one trigger."""

    trigger: str
    sweep: list[SweepPoint] = Field(default_factory=list)
    qra: QRAResult | None = None
    lmc: LMCCurve | None = None


class MethodResult(Scores):
    """Everything measured for one purification method (worst case over triggers on top)."""

    key: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    o_cacc: float | None = None
    qra_asr: float | None = None
    qra_clean_to_target: float | None = None
    lmc_lambda50: float | None = None
    verdict: Literal["robust", "superficial", "not_removed", "unknown"] = "unknown"
    per_trigger: list[TriggerResult] = Field(default_factory=list)
    record: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageStatus] = Field(default_factory=list)
    seconds: float = 0.0


class ModelResult(BaseModel):
    """The submitted model as it is."""

    c_acc: float | None = None
    asr: dict[str, float] = Field(default_factory=dict)


class BaselineInfo(BaseModel):
    """Which model calibrates RA, and its numbers."""

    kind: Literal["reference", "ep", "none"] = "none"
    description: str = ""
    c_acc: float | None = None
    asr: dict[str, float] = Field(default_factory=dict)
    p_asr: dict[str, float] = Field(default_factory=dict)
    sweep: dict[str, list[SweepPoint]] = Field(default_factory=dict)


class GateClause(BaseModel):
    """One gate clause with the value it saw."""

    expr: str
    passed: bool
    value: float | list[float | None] | None = None
    detail: str = ""


class GateVerdict(BaseModel):
    """The verdict against the caller's gate (passed is None when no gate was given)."""

    passed: bool | None = None
    clauses: list[GateClause] = Field(default_factory=list)


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


class AuditReport(BaseModel):
    """The report of one audit (or purification)."""

    schema_version: str = SCHEMA_VERSION
    kind: Literal["audit", "purify"] = "audit"
    model: ModelResult = Field(default_factory=ModelResult)
    baseline: BaselineInfo = Field(default_factory=BaselineInfo)
    methods: list[MethodResult] = Field(default_factory=list)
    gate: GateVerdict = Field(default_factory=GateVerdict)
    stages: list[StageStatus] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)
    verdict_rule: str = Field("", description="how the verdicts were reached")
    seconds: float = 0.0

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
        if not det["confident"]:
            text += ("; NOT CONFIDENT: the inversion found no class that most images go to, "
                     "so this method's unlearning data may not carry the backdoor")
        notes.append((text + ".", bool(det["confident"])))
    return notes


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a table; '-' when it was not computed."""
    return "-" if v is None else f"{v:.{digits}f}"


TABLE_COLUMNS = [("O-C-Acc", "o_cacc"), ("O-ASR", "o_asr"), ("DER", "der"), ("P-C-Acc", "p_cacc"),
                 ("P-ASR", "p_asr"), ("base P-ASR", "baseline_p_asr"), ("gap", "gap"),
                 ("max gap", "max_gap"),
                 ("QRA-ASR", "qra_asr"), ("LMC-l50", "lmc_lambda50")]


def table_rows(report: AuditReport) -> list[list[str]]:
    """The summary table (one row per method) as strings, shared by every renderer."""
    rows = []
    for m in report.methods:
        rows.append([m.key] + [fmt(getattr(m, f)) for _, f in TABLE_COLUMNS]
                    + [m.verdict, f"{m.seconds:.1f}"])
    return rows


TABLE_HEADER = ["method"] + [c for c, _ in TABLE_COLUMNS] + ["verdict", "seconds"]


def to_markdown(report: AuditReport) -> str:
    """Markdown for a pull-request comment."""
    out = [f"## ppr-audit {report.kind} report", ""]
    pv = report.provenance
    asr = ", ".join(f"{k}: {fmt(v)}" for k, v in report.model.asr.items())
    out.append(f"Submitted model `{pv.checkpoint_name}` (sha256 `{pv.checkpoint_sha256[:12]}`): "
               f"C-Acc {fmt(report.model.c_acc)}, ASR {asr or '-'}.")
    b = report.baseline
    out.append(f"RA baseline: **{b.kind}** {b.description}".rstrip() + ".")
    if report.gate.passed is not None:
        out.append(f"Gate: **{'PASSED' if report.gate.passed else 'FAILED'}**")
        for c in report.gate.clauses:
            out.append(f"- {'pass' if c.passed else 'FAIL'} `{c.expr}` (value: {_val(c.value)})"
                       + (f" {c.detail}" if c.detail else ""))
    out += ["", "| " + " | ".join(TABLE_HEADER) + " |",
            "|" + "---|" * len(TABLE_HEADER)]
    out += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    notes = detection_notes(report)
    if notes:
        out += ["", "Trigger inversion:"] + [f"- {t}" for t, _ in notes]
    if report.verdict_rule:
        out += ["", f"Verdicts: {report.verdict_rule}."]
    failed = [s for s in report.stages if s.status == "failed"]
    failed += [s for m in report.methods for s in m.stages if s.status == "failed"]
    if failed:
        out += ["", "Failed stages:"] + [f"- {s.name}: {s.error}" for s in failed]
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


def _lmc_chart(report: AuditReport) -> str:
    """One ASR curve per method along the path purified (0) -> backdoored (1)."""
    curves = [(m.key, t.lmc) for m in report.methods for t in m.per_trigger[:1] if t.lmc]
    if not curves:
        return "<p>No LMC curves were computed.</p>"
    w, h, pad = 420, 240, 40
    parts = [f'<svg class="plot" id="lmc-curves" xmlns="http://www.w3.org/2000/svg" '
             f'width="{w + 140}" height="{h + 40}" role="img" aria-label="LMC curves">',
             f'<line x1="{pad}" y1="{h}" x2="{w}" y2="{h}" stroke="#333"/>',
             f'<line x1="{pad}" y1="10" x2="{pad}" y2="{h}" stroke="#333"/>',
             f'<text x="{w / 2}" y="{h + 30}" font-size="11">lambda (0: purified, 1: '
             f'backdoored)</text><text x="2" y="14" font-size="11">ASR</text>']
    for t in (0.0, 0.5, 1.0):
        y = h - t * (h - 20)
        parts.append(f'<text x="14" y="{y + 4:.1f}" font-size="10">{t:.1f}</text>'
                     f'<line x1="{pad}" y1="{y:.1f}" x2="{w}" y2="{y:.1f}" stroke="#eee"/>')
    for i, (key, c) in enumerate(curves):
        pts = " ".join(f"{pad + lam * (w - pad):.1f},{h - a * (h - 20):.1f}"
                       for lam, a in zip(c.lambdas, c.asr, strict=True))
        color = _COLORS[i % len(_COLORS)]
        parts.append(f'<polyline class="curve" points="{pts}" fill="none" stroke="{color}" '
                     f'stroke-width="2"><title>{html.escape(key)}</title></polyline>')
        parts.append(f'<text x="{w + 10}" y="{20 + 16 * i}" font-size="12" fill="{color}">'
                     f'{html.escape(key)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def to_html(report: AuditReport) -> str:
    """One self-contained HTML page: summary, gate, tables, plots, provenance."""
    e = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                   for r in table_rows(report))
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
</style></head><body>
<h1>ppr-audit {e(report.kind)} report</h1>
<p>Submitted model: C-Acc <b id="model-cacc">{fmt(report.model.c_acc)}</b>, ASR {asr or '-'}.
RA baseline: <b>{e(report.baseline.kind)}</b> {e(report.baseline.description)}.</p>
{gate}
<h2>Results</h2>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
{rule}
{notes}
<h2>Attack success rate per method</h2>
{_bar_chart(report)}
<h2>Backdoor-connected path (LMC)</h2>
{_lmc_chart(report)}
{fails}
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
