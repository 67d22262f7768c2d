"""No verdict without a backdoor to judge (issue 32 item 1): a trigger the submitted model
does not answer gives every method the verdict `no_backdoor`, the headline says so, and a
gate on methods fails closed, with the reason in JUnit and SARIF, unless it allows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.ci_formats import GateOutcome, junit_xml, sarif_log
from ppr_engine import audit
from ppr_engine.checkpoint import save_model
from ppr_engine.spec import validate_spec


def _spec(gate, **options) -> dict:
    return {"model": {"arch": "small_cnn"},
            "data": {"clean": "synthetic:?n=400&seed=2", "test": "synthetic:?n=300&seed=1"},
            # the fixture's backdoor is BadNets -> 0; Blended -> 7 activates nothing in it
            "triggers": [{"attack": "blended", "target": 7}],
            "plan": {"methods": [{"name": "ft", "epochs": 1}], "qra": {"enabled": False},
                     "lmc": {"enabled": False},
                     "retune": {"epochs": 1, "clean_num": 95, "sweep": []}},
            "gate": gate, **options}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, backdoored) -> Path:
    path = tmp_path_factory.mktemp("nb") / "bd.safetensors"
    save_model(backdoored, path)
    return path


def test_an_inactive_trigger_judges_nothing_and_the_gate_fails_closed(ckpt):
    report = audit.run(validate_spec(_spec(["ft.robust == 1", "model.c_acc >= 0.5"])),
                       ckpt).report
    asr = report.model.asr["blended->7"]
    assert asr < 0.5 and report.model.inactive == ["blended->7"]
    assert report.method("ft").verdict == "no_backdoor"
    assert report.headline == (f"Trigger blended->7 does not activate a backdoor in the "
                               f"submitted model (ASR {asr:.2f}); nothing to purify.")
    robust, c_acc = report.gate.clauses
    assert report.gate.passed is False and not robust.passed and c_acc.passed
    assert "does not activate a backdoor" in robust.detail and "fails closed" in robust.detail
    outcome = GateOutcome(checkpoint=ckpt, exit_code=1,
                          report=json.loads(report.model_dump_json()))
    assert "does not activate a backdoor" in junit_xml(outcome)
    results = sarif_log(outcome, "test")["runs"][0]["results"]
    assert {r["ruleId"] for r in results} == {"PPR001", "PPR005"}
    assert any("does not activate a backdoor" in r["message"]["text"] for r in results)


def test_a_gate_that_allows_it_is_evaluated(ckpt):
    spec = _spec({"require": ["ft.o_asr <= 0.5"], "allow_no_backdoor": True})
    s = validate_spec(spec)
    assert s.gate == ["ft.o_asr <= 0.5"] and s.gate_options.allow_no_backdoor
    report = audit.run(s, ckpt).report
    assert report.method("ft").verdict == "no_backdoor" and report.gate.passed is True


def test_a_higher_min_asr_still_judges_a_working_backdoor(ckpt):
    """The rule reads plan.min_asr: the fixture's own trigger (ASR near 1) is judged."""
    spec = _spec(["ft.o_cacc >= 0.0"])
    spec["triggers"] = [{"attack": "badnets", "target": 0}]
    spec["plan"]["min_asr"] = 0.9
    report = audit.run(validate_spec(spec), ckpt).report
    assert report.model.inactive == [] and report.method("ft").verdict != "no_backdoor"
