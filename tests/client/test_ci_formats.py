"""The files `ppr gate` writes for CI systems, validated against the published schemas
(tests/schemas/README.md): JUnit (Jenkins' XSD), SARIF 2.1.0, and the JSON summary."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from lxml import etree

from client.ci_formats import GateOutcome, junit_xml, sarif_log, summary, write_outputs
from ppr_engine.gate import evaluate
from ppr_engine.report import AuditReport, MethodResult, ModelResult

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def validate_junit(text: str) -> etree._Element:
    """Parse and validate a JUnit file; raises with the schema's complaint."""
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "junit.xsd")))
    doc = etree.fromstring(text.encode())
    schema.assertValid(doc)
    return doc


def validate_sarif(log: dict) -> None:
    schema = json.loads((SCHEMAS / "sarif-2.1.0.json").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(log)


def _report(gate: list[str]) -> dict:
    r = AuditReport(model=ModelResult(c_acc=0.9, asr={"badnets->3": 0.98}), methods=[
        MethodResult(key="fst", method="fst", o_cacc=0.88, o_asr=0.03, p_asr=0.81,
                     baseline_p_asr=0.1, max_gap=0.71, verdict="superficial"),
        MethodResult(key="ft", method="ft", o_cacc=0.9, o_asr=0.95, verdict="not_removed"),
        MethodResult(key="pam", method="pam", o_cacc=0.87, o_asr=0.01, p_asr=0.08,
                     baseline_p_asr=0.1, max_gap=-0.02, verdict="robust"),
        MethodResult(key="anp", method="anp", o_cacc=0.41, acc_drop=0.49, o_asr=0.0,
                     p_asr=0.05, baseline_p_asr=0.1, max_gap=-0.05, verdict="degraded")],
        headline="1 of 3 defenses only hides the backdoor")
    r.gate = evaluate(gate, r)
    return json.loads(r.model_dump_json())


@pytest.fixture
def failing() -> GateOutcome:
    return GateOutcome(checkpoint=Path("models/resnet.safetensors"), exit_code=1, job="j-1",
                       report=_report(["pam.max_gap <= 0.2", "fst.p_asr <= 0.2",
                                       "all.o_cacc >= 0.89"]),
                       checkpoint_sha256="ab" * 32)


def test_junit_has_one_case_per_clause_with_value_and_threshold(failing):
    doc = validate_junit(junit_xml(failing))
    cases = doc.findall("testcase")
    assert [c.get("name") for c in cases] == ["pam.max_gap <= 0.2", "fst.p_asr <= 0.2",
                                              "all.o_cacc >= 0.89"]
    assert doc.get("tests") == "3" and doc.get("failures") == "2" and doc.get("errors") == "0"
    assert cases[0].find("failure") is None
    msg = cases[1].find("failure").get("message")
    assert msg == "fst.p_asr <= 0.2: measured 0.81, required <= 0.2"
    assert "measured [0.88, 0.9, 0.87, 0.41], required >= 0.89 (failing: fst, pam, anp)" in \
        cases[2].find("failure").get("message")


def test_sarif_reports_failing_clauses_and_hidden_backdoors(failing):
    log = sarif_log(failing, "0.1.0")
    validate_sarif(log)
    run = log["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    found = [(rules[r["ruleIndex"]], r["message"]["text"].split(":")[0]) for r in run["results"]]
    assert found == [("PPR001", "fst.p_asr <= 0.2"), ("PPR001", "all.o_cacc >= 0.89"),
                     ("PPR002", "fst"), ("PPR003", "ft"),
                     ("PPR004", "anp")]  # pam is robust: no result
    degraded = run["results"][-1]["message"]["text"]
    assert "O-C-Acc 0.41" in degraded and "accuracy drop 0.49" in degraded
    for r in run["results"]:
        assert r["ruleId"] == rules[r["ruleIndex"]]
        loc = r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert loc == "models/resnet.safetensors"
    assert run["artifacts"][0]["hashes"]["sha-256"] == "ab" * 32
    assert run["invocations"][0]["executionSuccessful"] is True
    # fingerprints are stable across runs of the same finding, distinct between findings
    prints = [r["partialFingerprints"]["pprAudit/v1"] for r in run["results"]]
    assert len(set(prints)) == len(prints)
    assert prints == [r["partialFingerprints"]["pprAudit/v1"]
                      for r in sarif_log(failing, "0.1.0")["runs"][0]["results"]]


def test_an_audit_that_could_not_run_is_an_error_in_every_format(tmp_path):
    o = GateOutcome(checkpoint=Path("m.safetensors"), exit_code=3,
                    error="cannot reach the service: connection refused")
    doc = validate_junit(junit_xml(o))
    assert doc.get("errors") == "1" and "connection refused" in doc.find(
        "testcase/error").get("message")
    log = sarif_log(o, "0.1.0")
    validate_sarif(log)
    inv = log["runs"][0]["invocations"][0]
    assert inv["executionSuccessful"] is False and inv["exitCode"] == 3
    assert "connection refused" in inv["toolExecutionNotifications"][0]["message"]["text"]
    s = summary(o)
    assert s["passed"] is None and s["exit_code"] == 3 and "connection refused" in s["error"]


def test_files_are_written_whole_and_nothing_else_is_left(failing, tmp_path):
    out = tmp_path / "reports"
    write_outputs(failing, junit=out / "j.xml", sarif=out / "s.sarif", json_path=out / "g.json",
                  version="0.1.0")
    assert sorted(p.name for p in out.iterdir()) == ["g.json", "j.xml", "s.sarif"]
    assert json.loads((out / "g.json").read_text())["passed"] is False
    validate_sarif(json.loads((out / "s.sarif").read_text()))
    validate_junit((out / "j.xml").read_text())


def test_the_validators_reject_what_breaks_the_schemas(failing):
    """The checks above can fail: a broken file is refused by the same validators."""
    with pytest.raises(etree.DocumentInvalid):
        validate_junit("<testsuite name='x'><testcase/></testsuite>")  # no tests, no name
    broken = sarif_log(failing, "0.1.0")
    broken["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif(broken)
