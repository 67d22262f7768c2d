"""Purification until robust (issue 32 item 3): a weak first attempt is escalated in the
documented order to a robust model; a ladder that never holds stops at the spec's budget and
returns its best attempt with the reason; the work estimate counts every attempt; the CLI
exits 1 when no attempt is robust. The demo's model: BadNets -> 3 on synthetic data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ppr_engine import audit
from ppr_engine.audit.escalate import ladder
from ppr_engine.audit.plan import estimated_work, plan_for
from ppr_engine.checkpoint import load_model
from ppr_engine.cli import app
from ppr_engine.demo import DEMO_ATTACKER, DEMO_CLEAN, DEMO_TARGET, DEMO_TEST
from ppr_engine.errors import SpecError
from ppr_engine.spec import MethodSpec, validate_spec

# PAM on the real trigger's images, one round of three epochs at the authors' momentum:
# too little unlearning to hold under RA on this model (superficial); two rounds hold
WEAK_PAM = {"name": "pam", "data": "trigger", "rounds": 1, "epochs": 3, "momentum": 0.1,
            "augment": False, "scale_to": None}


def _spec(method: dict, max_attempts: int, gate=()) -> dict:
    return {"model": {"arch": "small_cnn", "num_classes": 10},
            "data": {"clean": DEMO_CLEAN, "test": DEMO_TEST, "attacker": DEMO_ATTACKER},
            "triggers": [{"attack": "badnets", "target": DEMO_TARGET}],
            "plan": {"methods": [method], "until": "robust", "max_attempts": max_attempts,
                     "retune": {"poison_num": 20, "clean_num": 980, "epochs": 5,
                                "sweep": [[50, 5]]}},
            "seed": 0, "gate": list(gate)}


def test_the_ladder_follows_the_documented_order_within_bounds():
    pam = MethodSpec.model_validate({"name": "pam"})
    assert ladder(pam, 8) == [{}, {"rounds": 6}, {"rounds": 6, "rho": 0.7},
                              {"rounds": 6, "rho": 0.9}, {"rounds": 6, "rho": 0.9, "ratio": 0.3},
                              {"rounds": 6, "rho": 0.9, "ratio": 0.4}]
    assert ladder(pam, 2) == [{}, {"rounds": 6}]
    # a method without rounds gets more epochs; one with nothing to escalate, one attempt
    assert ladder(MethodSpec.model_validate({"name": "ft", "epochs": 3}), 4) == [
        {}, {"epochs": 6}]
    assert ladder(MethodSpec.model_validate({"name": "clp"}), 4) == [{}]
    # a step past the parameter's bound is left out: rho already at the top of the range
    assert ladder(MethodSpec.model_validate({"name": "pam", "rho": 0.9}), 8)[2] == {
        "rounds": 6, "ratio": 0.3}


def test_the_work_estimate_counts_every_attempt():
    one = validate_spec({**_spec(WEAK_PAM, 1)})
    four = validate_spec({**_spec(WEAK_PAM, 4)})
    plan = plan_for(four)
    # the shared stages (evaluate, baseline and its RA) once, each attempt's own stages
    assert sum(s.id.startswith("purify:") for s in plan) == 4
    assert sum(s.id.startswith("retune:baseline:") for s in plan) == 2
    assert estimated_work(four) == pytest.approx(plan.total_cost)
    assert estimated_work(four) > 3 * (estimated_work(one) - plan_for(one).get("baseline").cost)


def test_until_robust_needs_one_method_and_a_known_trigger():
    spec = _spec(WEAK_PAM, 2)
    spec["plan"]["methods"] = [WEAK_PAM, {"name": "ft"}]
    with pytest.raises(SpecError, match="one method"):
        validate_spec(spec)
    spec = _spec(WEAK_PAM, 2)
    spec["triggers"] = []
    with pytest.raises(SpecError, match="known trigger"):
        validate_spec(spec)


def test_a_weak_first_attempt_escalates_to_a_robust_model(demo_checkpoint):
    spec = validate_spec(_spec(WEAK_PAM, 4, gate=["pam.robust == 1"]))
    out = audit.run(spec, demo_checkpoint, kind="purify")
    esc = out.report.escalation
    first, second = esc.attempts
    assert first.verdict != "robust" and first.overrides == {}
    assert second.verdict == "robust" and second.overrides == {"rounds": 2}
    assert esc.robust and esc.chosen == 2 and "attempt 2 is robust" in esc.reason
    pam = out.report.method("pam")
    assert pam.verdict == "robust" and pam.max_gap == pytest.approx(second.max_gap)
    assert out.report.gate.passed is True
    # the returned model is the second attempt's; both attempts' models are kept
    assert out.models["pam"] is out.models["pam#2"] is not out.models["pam#1"]
    states = {s.name: s.status for s in out.report.stages}
    assert states["purify:pam#2"] == "ok" and states["purify:pam#3"] == "skipped"
    assert "Purified until robust: attempt 2 is robust (rounds 2)" in out.report.headline


def test_a_ladder_that_never_holds_returns_its_best_attempt_and_the_cli_exits_1(
        demo_checkpoint, tmp_path):
    """Plain unlearning (rho 0) at a tenth of the step: two attempts, neither robust."""
    spec = _spec({**WEAK_PAM, "rho": 0.0, "lr": 0.001}, 2)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    report = audit.run(validate_spec(spec), demo_checkpoint, kind="purify").report
    esc = report.escalation
    assert len(esc.attempts) == 2 and not esc.robust
    assert all(a.verdict != "robust" for a in esc.attempts)
    assert esc.reason.startswith("no attempt of 2 was robust")
    assert report.method("pam").verdict == esc.attempts[esc.chosen - 1].verdict

    # the CLI: linear probing leaves this backdoor in place (not_removed) at any epochs
    out = tmp_path / "purified.safetensors"
    result = CliRunner().invoke(app, [
        "purify", str(demo_checkpoint), "--method", "lp", "--arch", "small_cnn",
        "--clean", DEMO_CLEAN, "--test", DEMO_TEST, "--attacker", DEMO_ATTACKER, "--attack",
        "badnets", "--target", str(DEMO_TARGET), "--set", "epochs=1", "--set",
        "augment=false", "--until", "robust", "--max-attempts", "3", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "not robust: no attempt of 2 was robust" in result.output  # lp: epochs only
    for name in ("purified.safetensors", "purified-attempt1.safetensors",
                 "purified-attempt2.safetensors"):
        load_model(tmp_path / name, "small_cnn", 10)


def test_an_attempt_keeps_the_methods_explicit_nulls():
    """`scale_to: null` (no scaling to 2,500 images) survives into every attempt: attempt 1
    is the method as submitted, not its defaults."""
    from ppr_engine.audit.escalate import attempt_specs

    for spec in attempt_specs(validate_spec(_spec(WEAK_PAM, 3))):
        assert spec.plan.methods[0].parsed().scale_to is None


def test_a_written_spec_reads_back_as_the_same_spec():
    """What `ppr demo` writes as out/demo/audit.yaml (and the BackdoorBench import its
    spec) reproduces the run: explicit nulls kept."""
    from ppr_engine.demo import demo_spec
    from ppr_engine.spec import load_spec, spec_yaml

    demo = demo_spec()
    again = load_spec(spec_yaml(demo))
    assert again == demo
    assert [m.parsed() for m in again.plan.methods] == [m.parsed() for m in demo.plan.methods]


def test_the_best_of_attempts_that_all_broke_the_model_is_the_least_broken():
    """Measured on the demo (docs/RESULTS.md): PAM at momentum 0.1 was `degraded` at every
    rung, and rho 0.9 bought the smallest gap with C-Acc 0.61; the least accuracy lost is
    the better answer among degraded attempts, the smallest gap among the others."""
    from ppr_engine.audit.escalate import Attempt, choose
    from ppr_engine.report import MethodResult

    def attempt(i, verdict, drop, gap):
        return Attempt(i, {}, MethodResult(key="pam", method="pam", verdict=verdict,
                                           acc_drop=drop, max_gap=gap), model=object())

    degraded = [attempt(0, "degraded", 0.09, -0.04), attempt(1, "degraded", 0.38, -0.06)]
    assert choose(degraded)[0].index == 0
    mixed = [attempt(0, "superficial", 0.01, 0.5), attempt(1, "superficial", 0.02, 0.3),
             attempt(2, "degraded", 0.2, 0.0)]
    best, reason = choose(mixed)
    assert best.index == 1 and reason.startswith("no attempt of 3 was robust; attempt 2")
