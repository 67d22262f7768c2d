"""Reports: JSON round trip, Markdown and HTML carry the same numbers, and the HTML renders
its tables and plots in a real headless browser."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ppr_engine.report import (
    AuditReport,
    LMCCurve,
    MethodResult,
    ModelResult,
    Provenance,
    SweepPoint,
    TriggerResult,
    headline,
    render,
    table_rows,
)

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
        assert "| " + " | ".join(row[:-2]) + " | " in md
        assert f" {row[-2]} | {row[-1]} |" in md  # the verdict, after its colour mark
        for cell in row[:-2]:
            assert f"<td>{cell}</td>" in html
        assert f"<td class='verdict v-{row[-2]}'>{row[-2]}</td>" in html
    assert report.headline and report.headline in md and report.headline in html
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
    lmc = dom[dom.index('id="lmc-curves"'):]
    lmc = lmc[:lmc.index("</svg>")]
    assert lmc.count('class="curve"') == len(report.methods)
    sweep = dom[dom.index('id="sweep"'):]
    sweep = sweep[:sweep.index("</svg>")]
    assert sweep.count('class="curve"') == len(report.methods)  # one line per method
    assert sweep.count('class="baseline"') == 1                  # and the baseline's
    # the headline comes first, then the table; the legend and glossary are there
    assert dom.index('id="headline"') < dom.index('id="results"')
    assert 'id="verdict-legend"' in dom and 'id="glossary"' in dom
    for term in ("O-ASR", "P-ASR", "RA", "QRA", "LMC", "baseline"):
        assert f"<dt>{term}" in dom
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
    det["reason"] = "no class needs an anomalously small trigger"
    det["audit_targets"] = [3]
    for text in render(r, "md")[0], render(r, "html")[0]:
        assert "NOT CONFIDENT: no class needs an anomalously small trigger" in text
        assert "trigger targets class 3: the detection is WRONG" in text
    r.methods[0].record["detection"] = {**det, "target": 3, "confidence": 0.97,
                                        "confident": True, "verified": True,
                                        "reason": "class 3 needs the smallest trigger"}
    md = render(r, "md")[0]
    assert "NOT CONFIDENT" not in md and "WRONG" not in md
    assert "confirmed by the smallest-trigger scan: class 3 needs" in md
    assert "the detection is right" in md
    assert "held back" not in render(r, "md")[0]
    r.methods[0].record["inversion_rounds"] = [
        {"held_back": 0.97, "held_back_pixel": 0.9, "held_back_feature": 0.2},
        {"held_back": 0.12, "held_back_pixel": 0.0, "held_back_feature": 0.12}]
    for text in render(r, "md")[0], render(r, "html")[0]:
        assert ("the generator spent 97% (pixel 90%, feature 20%), 12% (pixel 0%, feature "
                "12%) of its steps (by round) held back") in text


def _trigger(p_asr: float, budgets: list[tuple[int, float, float]]) -> TriggerResult:
    """A trigger result: reference budget P-ASR, then (poisoned, P-ASR, baseline) sweep."""
    n0, a0, b0 = budgets[0]
    return TriggerResult(trigger="badnets->3", p_asr=p_asr, baseline_p_asr=b0,
                         budget=SweepPoint(poison_num=n0, epochs=5, p_asr=a0, baseline_p_asr=b0),
                         sweep=[SweepPoint(poison_num=n, epochs=5, p_asr=a, baseline_p_asr=b)
                                for n, a, b in budgets[1:]],
                         lmc=LMCCurve(lambdas=[0.0, 0.5, 1.0], c_acc=[0.9] * 3,
                                      asr=[0.02, 0.4, 0.99], backdoor_error=[0.0] * 3))


def _judged(verdicts: dict[str, tuple[str, float, list[tuple[int, float, float]]]]
            ) -> AuditReport:
    methods = [MethodResult(key=k, method=k, o_asr=o, verdict=v,
                            per_trigger=[_trigger(b[0][1], b)])
               for k, (v, o, b) in verdicts.items()]
    spec = {"plan": {"retune": {"poison_num": 5, "epochs": 5, "superficial_gap": 0.2}}}
    return AuditReport(methods=methods, model=ModelResult(c_acc=0.9, asr={"badnets->3": 0.99}),
                       provenance=Provenance(spec=spec))


def test_the_headline_names_the_finding_and_the_budget_that_shows_it():
    r = _judged({
        "ft": ("not_removed", 0.93, [(5, 0.97, 0.05), (20, 0.98, 0.10)]),
        "fst": ("superficial", 0.02, [(5, 0.31, 0.05), (20, 0.86, 0.10)]),
        "bti_dbf": ("superficial", 0.04, [(5, 0.22, 0.05), (20, 0.79, 0.10)]),
        "ep": ("robust", 0.01, [(5, 0.06, 0.05), (20, 0.12, 0.10)]),
    })
    # 20 poisoned images is where both superficial methods exceed the baseline most
    assert headline(r) == (
        "2 of 4 defenses only hide the backdoor: FST regains ASR 0.86 and BTI-DBF 0.79 after "
        "retuning with 20 poisoned images; the baseline regains 0.10; FT does not remove it "
        "(O-ASR up to 0.93); EP removes it robustly (P-ASR within 0.20 of the baseline at "
        "every budget).")
    calm = _judged({"pam": ("robust", 0.01, [(5, 0.07, 0.05), (20, 0.11, 0.10)])})
    assert headline(calm).startswith("No defense only hides the backdoor (1 judged): PAM "
                                     "removes it robustly")
    assert headline(AuditReport(model=ModelResult(c_acc=0.9, asr={"b": 0.97}))) == (
        "No defense was run: the submitted model has C-Acc 0.90 and ASR 0.97.")


def test_the_sweep_is_tabled_per_budget_beside_the_baseline():
    r = _judged({"fst": ("superficial", 0.02, [(5, 0.31, 0.05), (20, 0.86, 0.10)]),
                 "ep": ("robust", 0.01, [(5, 0.06, 0.05), (20, 0.12, 0.10)])})
    md = render(r, "md")[0]
    assert "| method | 5 (5 ep) | 20 (5 ep) |" in md
    assert "| fst | 0.310 | 0.860 |" in md and "| baseline | 0.050 | 0.100 |" in md
    assert "🟠 superficial" in md and "🟢 robust" in md and "<summary>Glossary</summary>" in md


def test_user_labels_cannot_inject_html_into_markdown():
    """A method label, a checkpoint name and a stage error are the caller's text: CI pages
    render the Markdown report's raw HTML, so none of it may reach them as markup."""
    from ppr_engine.report import StageStatus

    evil = "<script>alert(1)</script>"
    r = _judged({evil: ("superficial", 0.02, [(5, 0.31, 0.05), (20, 0.86, 0.10)])})
    r.provenance = Provenance(spec=r.provenance.spec, checkpoint_name=f"m`{evil}.safetensors")
    r.stages = [StageStatus(name=f"lmc:{evil}", status="failed", error=f"bad {evil}")]
    md = render(r, "md")[0]
    assert "<script>" not in md.replace(f"`m'{evil}.safetensors`", "")
    assert "&lt;script>" in md  # the label is shown, escaped, in the table
    assert f"`m'{evil}.safetensors`" in md  # in a code span HTML is inert; the backtick is not
