"""The report as one self-contained HTML file: inline SVG plots, no scripts, no external
resources.
"""

from __future__ import annotations

import html

from .schema import AuditReport
from .sections import Image, Run, Section, Table, sections
from .tables import (
    VERDICT_COLORS,
    sweep_series,
)

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


def _runs(runs: list[Run]) -> str:
    e = html.escape
    out = []
    for r in runs:
        ident = f' id="{e(r.id)}"' if r.id else ""
        out.append(f"<code>{e(r.text)}</code>" if r.style == "code" else
                   f"<b{ident}>{e(r.text)}</b>" if r.style == "strong" else e(r.text))
    return "".join(out)


def _cell(cell: str | Image, verdict: bool) -> str:
    e = html.escape
    if isinstance(cell, Image):
        return f"<td><img alt='{e(cell.alt)}' src='{e(cell.src)}'></td>"
    if verdict:
        return f"<td class='verdict v-{e(cell)}'>{e(cell)}</td>"
    return f"<td>{e(cell)}</td>"


def _table(t: Table) -> str:
    e = html.escape
    css = f" class='{e(t.css)}'" if t.css else ""
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(_cell(c, i == t.verdict_column) for i, c in enumerate(row))
                   + "</tr>" for row in t.rows)
    return f'<table id="{e(t.id)}"{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _state(ok: bool | None) -> str:
    return "" if ok is None else f" class='{'pass' if ok else 'fail'}'"


FIGURES = {"asr-bars": _bar_chart, "sweep": _sweep_chart, "lmc-curves": _lmc_chart}


def _section(s: Section, report: AuditReport) -> str:
    e = html.escape
    parts = []
    if s.title:
        title = e(s.title)
        if s.key == "gate":  # the verdict word carries the gate's state
            word = "PASSED" if s.status else "FAILED"
            title = f"Gate: <span id='gate'{_state(s.status)}>{word}</span>"
        parts.append(f"<h2>{title}</h2>")
    ident = f' id="{e(s.key)}"'
    for i, p in enumerate(s.paragraphs):
        parts.append(f"<p{ident if i == 0 and not s.title else ''}{_state(s.status)}>"
                     f"{_runs(p)}</p>")
    if s.items:
        parts.append(f"<ul{ident}>" + "".join(f"<li{_state(i.ok)}>{_runs(i.runs)}</li>"
                                              for i in s.items) + "</ul>")
    if s.key == "verdict-legend":
        parts.append(f"<ul{ident}>" + "".join(
            f"<li><span class='swatch v-{e(v)}'></span><b>{e(v)}</b>: {e(text)}</li>"
            for v, text in s.definitions) + "</ul>")
    elif s.definitions:
        parts.append(f"<dl{ident}>" + "".join(f"<dt>{e(term)}</dt><dd>{e(text)}.</dd>"
                                              for term, text in s.definitions) + "</dl>")
    if s.figure is not None:
        parts.append(FIGURES[s.figure](report))
    elif s.table is not None:
        parts.append(_table(s.table))
    return "\n".join(parts)


def to_html(report: AuditReport) -> str:
    """One self-contained HTML page: the sections (`sections`), plots drawn as inline SVG."""
    e = html.escape
    verdict_css = "".join(f".v-{v}{{color:#fff;background:{c}}}"
                          for v, c in VERDICT_COLORS.items())
    body = "\n".join(_section(s, report) for s in sections(report))
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
{body}
</body></html>
"""
