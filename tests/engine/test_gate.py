"""Gate expressions: grammar, values, verdicts and clear errors."""

import pytest

from ppr_engine.errors import GateError
from ppr_engine.gate import evaluate, parse_clause
from ppr_engine.report import AuditReport, MethodResult, ModelResult, TriggerResult


def _report() -> AuditReport:
    return AuditReport(model=ModelResult(c_acc=0.9, asr={"badnets->0": 0.97}), methods=[
        MethodResult(key="pam", method="pam", o_cacc=0.88, o_asr=0.02, p_asr=0.1),
        MethodResult(key="ft", method="ft", o_cacc=0.91, o_asr=0.05, p_asr=0.8,
                     per_trigger=[TriggerResult(trigger="t")]),
    ])


def test_clauses_are_evaluated_with_their_values():
    v = evaluate(["pam.p_asr <= 0.2", "all.o_cacc >= 0.85", "model.asr > 0.5"], _report())
    assert v.passed is True
    assert [c.value for c in v.clauses] == [0.1, [0.88, 0.91], 0.97]
    v = evaluate(["all.p_asr <= 0.3", "any.p_asr <= 0.3"], _report())
    assert v.passed is False
    assert not v.clauses[0].passed and v.clauses[0].detail == "failing: ft"
    assert v.clauses[1].passed


def test_missing_values_fail_and_say_so():
    v = evaluate(["pam.qra_asr <= 0.5"], _report())
    assert v.passed is False and "not computed" in v.clauses[0].detail


def test_empty_gate_has_no_verdict():
    assert evaluate([], _report()).passed is None


@pytest.mark.parametrize("bad, message", [
    ("pam.p_asr", "must look like"),
    ("pam.accuracy <= 0.2", "unknown field 'accuracy'"),
    ("model.p_asr <= 0.2", "unknown field 'p_asr' for 'model'"),
    ("pam.p_asr =< 0.2", "must look like"),
])
def test_malformed_clauses_are_refused(bad, message):
    with pytest.raises(GateError, match=message):
        parse_clause(bad)


def test_a_method_not_in_the_report_is_named():
    with pytest.raises(GateError, match="method 'nad' is not in this audit"):
        evaluate(["nad.p_asr <= 0.2"], _report())
