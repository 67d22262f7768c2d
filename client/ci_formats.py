"""What `ppr gate` writes for CI systems: JUnit XML, SARIF 2.1.0, a JSON summary.

Every writer takes the same `GateOutcome` (the report as JSON, or why there is none) and
works on plain dicts, so `ppr gate` needs neither torch nor the engine to write them. Files
are written atomically: a pipeline never uploads half a report.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppr_engine.util import atomic_write_text

TOOL = "ppr-audit"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

# SARIF rules: one per kind of finding.
RULES = {
    "gate-clause-failed": ("PPR001", "A release-gate clause failed",
                           "A clause of the release gate was not met by the audited model."),
    "backdoor-superficial": ("PPR002", "The backdoor is only hidden",
                             "The defense drove ASR down, but retuning with a few poisoned "
                             "images brings the backdoor back beyond the baseline."),
    "backdoor-not-removed": ("PPR003", "The backdoor is not removed",
                             "After the defense the model still answers the trigger."),
    "defense-degraded": ("PPR004", "The defense broke the model",
                         "The defense cost more clean accuracy than the audit allows "
                         "(plan.retune.max_acc_drop), so its low ASR is no evidence of "
                         "purification."),
    "no-backdoor": ("PPR005", "The trigger activates no backdoor",
                    "The submitted model's ASR for the trigger is below plan.min_asr: there "
                    "was nothing to purify, so no defense is judged and method gates fail "
                    "closed."),
    "verdict-inconclusive": ("PPR006", "The verdict is inconclusive",
                             "At some retuning budget the 95% interval of the gap to the "
                             "baseline straddles the margin: a re-run could call the defense "
                             "robust or superficial; more RA seeds decide."),
}
VERDICT_RULE = {"superficial": "backdoor-superficial", "not_removed": "backdoor-not-removed",
                "degraded": "defense-degraded", "no_backdoor": "no-backdoor",
                "inconclusive": "verdict-inconclusive"}


@dataclass
class GateOutcome:
    """The end of one gate run: the report (JSON dict) if the audit finished, else why not."""

    checkpoint: Path
    exit_code: int
    report: dict[str, Any] | None = None
    job: str | None = None
    error: str | None = None
    checkpoint_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gate(self) -> dict[str, Any]:
        return (self.report or {}).get("gate") or {}

    @property
    def clauses(self) -> list[dict[str, Any]]:
        return list(self.gate.get("clauses") or [])

    @property
    def methods(self) -> list[dict[str, Any]]:
        return list((self.report or {}).get("methods") or [])


def _num(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_num(x) for x in v) + "]"
    return "not computed" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def clause_message(c: dict[str, Any]) -> str:
    """'measured 0.41, required <= 0.2' (plus the clause's detail)."""
    need = (f"required {c['op']} {_num(c['threshold'])}" if c.get("op") is not None
            and c.get("threshold") is not None else f"required {c['expr']}")
    text = f"{c['expr']}: measured {_num(c.get('value'))}, {need}"
    return text + (f" ({c['detail']})" if c.get("detail") else "")


def junit_xml(o: GateOutcome) -> str:
    """One test case per gate clause; an audit that could not run is one erroring case."""
    suite = ET.Element("testsuite", name=f"{TOOL} gate: {o.checkpoint.name}")
    props = ET.SubElement(suite, "properties")
    for name, value in (("checkpoint", str(o.checkpoint)), ("job", o.job or ""),
                        ("sha256", o.checkpoint_sha256),
                        ("headline", (o.report or {}).get("headline", ""))):
        ET.SubElement(props, "property", name=name, value=value)
    failures = errors = 0
    if o.report is None:
        case = ET.SubElement(suite, "testcase", name="audit", classname=f"{TOOL}.gate")
        ET.SubElement(case, "error", type="audit-error", message=o.error or "no report").text = (
            o.error or "")
        errors = 1
    for c in o.clauses:
        case = ET.SubElement(suite, "testcase", name=c["expr"], classname=f"{TOOL}.gate")
        if not c.get("passed"):
            failures += 1
            ET.SubElement(case, "failure", type="gate-clause-failed",
                          message=clause_message(c)).text = clause_message(c)
        else:
            ET.SubElement(case, "system-out").text = clause_message(c)
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("time", f"{float((o.report or {}).get('seconds') or 0.0):.3f}")
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, "unicode") + "\n"


def _location(o: GateOutcome) -> dict[str, Any]:
    return {"physicalLocation": {"artifactLocation": {"uri": o.checkpoint.as_posix(),
                                                      "index": 0}}}


def _result(o: GateOutcome, rule: str, text: str, key: str) -> dict[str, Any]:
    fingerprint = hashlib.sha256(f"{rule}|{key}|{o.checkpoint_sha256}".encode()).hexdigest()
    return {"ruleId": RULES[rule][0], "ruleIndex": list(RULES).index(rule), "level": "error",
            "message": {"text": text}, "locations": [_location(o)],
            "partialFingerprints": {"pprAudit/v1": fingerprint}}


def sarif_log(o: GateOutcome, version: str) -> dict[str, Any]:
    """SARIF 2.1.0: one result per failing clause and per method judged `superficial`,
    `not_removed` or `degraded`, located at the checkpoint, so code-scanning views list
    them."""
    results = [_result(o, "gate-clause-failed", clause_message(c), c["expr"])
               for c in o.clauses if not c.get("passed")]
    for m in o.methods:
        rule = VERDICT_RULE.get(m.get("verdict", ""))
        if rule is None:
            continue
        text = (f"{m['key']}: {m['verdict']} (O-C-Acc {_num(m.get('o_cacc'))}, accuracy drop "
                f"{_num(m.get('acc_drop'))}, O-ASR {_num(m.get('o_asr'))}, P-ASR "
                f"{_num(m.get('p_asr'))}, baseline P-ASR {_num(m.get('baseline_p_asr'))}, "
                f"max gap {_num(m.get('max_gap'))})")
        results.append(_result(o, rule, text, m["key"]))
    artifact: dict[str, Any] = {"location": {"uri": o.checkpoint.as_posix()}}
    if o.checkpoint_sha256:
        artifact["hashes"] = {"sha-256": o.checkpoint_sha256}
    invocation: dict[str, Any] = {"executionSuccessful": o.report is not None,
                                  "exitCode": o.exit_code}
    if o.error:
        invocation["toolExecutionNotifications"] = [{"level": "error",
                                                     "message": {"text": o.error}}]
    rules = [{"id": rid, "name": name, "shortDescription": {"text": short},
              "fullDescription": {"text": full},
              "defaultConfiguration": {"level": "error"}}
             for name, (rid, short, full) in RULES.items()]
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": TOOL, "version": version, "rules": rules}},
        "artifacts": [artifact], "invocations": [invocation], "results": results}]}


def summary(o: GateOutcome) -> dict[str, Any]:
    """The gate's verdict as JSON (for scripts): pass/fail, clauses, per-method verdicts."""
    return {"job": o.job, "checkpoint": str(o.checkpoint), "exit_code": o.exit_code,
            "passed": o.gate.get("passed") if o.report is not None else None,
            "error": o.error, "headline": (o.report or {}).get("headline"),
            "clauses": o.clauses,
            "methods": [{k: m.get(k) for k in ("key", "verdict", "o_cacc", "acc_drop", "o_asr",
                                               "p_asr", "baseline_p_asr", "max_gap")}
                        for m in o.methods]}




def write_outputs(o: GateOutcome, *, junit: Path | None, sarif: Path | None,
                  json_path: Path | None, version: str) -> None:
    """Write each requested file (`-` as the JSON path prints to stdout)."""
    if junit:
        atomic_write_text(junit, junit_xml(o))
    if sarif:
        atomic_write_text(sarif, json.dumps(sarif_log(o, version), indent=2) + "\n")
    if json_path:
        text = json.dumps(summary(o), indent=2) + "\n"
        if str(json_path) == "-":
            print(text, end="")
        else:
            atomic_write_text(json_path, text)
