"""The report as Markdown (a pull-request comment): the sections (`sections`) as text, the
plots by their tables, folded parts in `<details>`."""

from __future__ import annotations

from .schema import AuditReport
from .sections import Image, Run, Section, Table, sections
from .tables import VERDICT_MARKS


def _md(text: object) -> str:
    """User-supplied text (method labels, file names, error messages) for Markdown outside
    a code span: CI pages render Markdown's raw HTML, so `&` and `<` (which every tag and
    entity starts with) are escaped; `>` alone starts nothing and stays, as in badnets->3."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;")


def _code(text: object) -> str:
    """User-supplied text inside a code span, where HTML is inert: only a backtick, which
    would end the span, is replaced."""
    return str(text).replace("`", "'")


def _runs(runs: list[Run]) -> str:
    out = []
    for r in runs:
        out.append(f"`{_code(r.text)}`" if r.style == "code" else
                   f"**{_md(r.text)}**" if r.style == "strong" else _md(r.text))
    return "".join(out)


def _cell(cell: str | Image, verdict: bool) -> str:
    if isinstance(cell, Image):
        return f"![{cell.alt}]({cell.src})"
    if verdict:
        return f"{VERDICT_MARKS.get(cell, '')} {cell}"
    return _md(cell).replace("|", "\\|")


def _table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(_cell(c, i == t.verdict_column) for i, c in enumerate(row))
              + " |" for row in t.rows]
    return lines


def _section(s: Section) -> list[str]:
    blocks: list[list[str]] = [[_runs(p)] for p in s.paragraphs]
    if s.items:
        blocks.append([f"- {_runs(i.runs)}" for i in s.items])
    if s.definitions and s.key == "verdict-legend":
        blocks.append([" ".join(f"{VERDICT_MARKS.get(term, '')} **{term}**: {_md(text)}."
                                for term, text in s.definitions)])
    elif s.definitions:
        blocks.append([f"- **{_md(term)}**: {_md(text)}." for term, text in s.definitions])
    if s.table is not None:
        blocks.append(_table(s.table))
    if not blocks:
        return []  # a plot with no table: only a page shows it
    lines = []
    for block in blocks:
        lines += block + [""]
    if s.collapsed:
        return [f"<details><summary>{_md(s.title or s.key.capitalize())}</summary>", "",
                *lines, "</details>"]
    return ([f"### {_md(s.title)}", ""] if s.title else []) + lines[:-1]


def to_markdown(report: AuditReport) -> str:
    """Markdown for a pull-request comment."""
    out = [f"## ppr-audit {report.kind} report", ""]
    for s in sections(report):
        if lines := _section(s):
            out += lines + [""]
    return "\n".join(out).rstrip() + "\n"
