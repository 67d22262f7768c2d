"""Reports: JSON round trip, Markdown and HTML carry the same numbers, and the HTML renders
its tables and plots in a real headless browser."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ppr_engine.report import AuditReport, render, table_rows

from .test_audit import _quick_spec


@pytest.fixture(scope="module")
def report(tmp_path_factory, backdoored) -> AuditReport:
    from ppr_engine import audit
    from ppr_engine.checkpoint import save_model

    path = tmp_path_factory.mktemp("r") / "bd.safetensors"
    save_model(backdoored, path)
    return audit.run(_quick_spec(), path).report


def test_json_round_trip(report):
    again = AuditReport.model_validate_json(render(report, "json")[0])
    assert again == report
    assert again.schema_version == "1.0"


def test_markdown_and_html_carry_the_same_numbers(report):
    md, html = render(report, "md")[0], render(report, "html")[0]
    for row in table_rows(report):
        assert "| " + " | ".join(row) + " |" in md
        for cell in row:
            assert f"<td>{cell}</td>" in html
    assert f"{report.model.c_acc:.3f}" in md and f"{report.model.c_acc:.3f}" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_html_renders_in_a_headless_browser(report, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("PPR_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (make test installs it)")
        pytest.skip("chromium is not installed")
    page = tmp_path / "report.html"
    page.write_text(render(report, "html")[0])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert '<table id="results">' in dom and dom.count("<tr>") >= 1 + len(report.methods)
    assert 'id="asr-bars"' in dom and dom.count('class="bar"') >= 3 * len(report.methods)
    assert 'id="lmc-curves"' in dom and dom.count('class="curve"') == len(report.methods)
    shot = tmp_path / "report.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,1600",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000  # a real rendering, not blank


def test_an_unconfident_detection_is_shown_not_hidden():
    from ppr_engine.report import MethodResult

    det = {"target": 6, "confidence": 0.31, "margin": 0.05, "confident": False,
           "histogram": []}
    r = AuditReport(methods=[MethodResult(key="pam", method="pam", record={"detection": det})],
                    verdict_rule="the rule")
    md, html = render(r, "md")[0], render(r, "html")[0]
    for text in (md, html):
        assert "detected target class 6 (confidence 0.31" in text and "NOT CONFIDENT" in text
        assert "Verdicts: the rule." in text
    r.methods[0].record["detection"] = {**det, "target": 3, "confidence": 0.97,
                                        "confident": True}
    assert "NOT CONFIDENT" not in render(r, "md")[0]
