"""The audit pipeline: the known-answer test (superficial safety must be caught), the
baseline bookkeeping, failed stages, progress and cancellation."""

from __future__ import annotations

import numpy as np
import pytest

from ppr_engine import audit, data
from ppr_engine.attacks import build_trigger
from ppr_engine.checkpoint import save_model
from ppr_engine.demo import DEMO_UNKNOWN_TRIGGER, demo_spec
from ppr_engine.errors import Cancelled
from ppr_engine.report import to_html, to_markdown
from ppr_engine.spec import validate_spec

DATA = {"clean": "synthetic:?n=1000&seed=2", "test": "synthetic:?n=1000&seed=1",
        "attacker": "synthetic:?n=2000&seed=3"}


def test_known_answer_the_demo_tells_the_papers_story(demo_report):
    """On the demo's data (BadNets, target 3): FT does not remove the backdoor; FST and
    BTI-DBF remove it but a retuning budget brings it back far faster than on the EP
    baseline (superficial); EP and PAM, which finds the trigger by inversion, are robust
    at both budgets; the demo's gate passes."""
    r = demo_report
    verdicts = {m.key: m.verdict for m in r.methods}
    assert r.model.asr["badnets->3"] >= 0.9
    assert verdicts == {"ft": "not_removed", "fst": "superficial", "bti_dbf": "superficial",
                        "ep": "robust", "pam": "robust"}, verdicts
    assert [(p.poison_num, p.epochs) for p in r.method("pam").per_trigger[0].sweep] == [
        (50, 5)]
    for key in ("fst", "bti_dbf"):  # caught by the sweep: some budget far above the baseline
        assert r.method(key).max_gap > 0.2 and r.method(key).o_asr <= 0.2
    pam = r.method("pam")
    assert pam.record["detection"]["target"] == 3 and pam.record["detection"]["confident"]
    assert pam.o_cacc >= r.model.c_acc - 0.10
    assert r.gate.passed, r.gate
    assert "max_gap" in r.verdict_rule


def test_the_demo_audited_by_example_agrees_with_the_parametric_audit(demo_report,
                                                                     demo_checkpoint,
                                                                     tmp_path):
    """The demo's BadNets (target 3) given only as 2,000 poisoned images under their true
    labels (half held out for ASR), FST and EP as in the demo, RA at its reference budget:
    the model's ASR and each method's O-ASR within 0.1 of the parametric audit's, FST
    flagged superficial and EP robust in both."""
    src = data.load("synthetic:?n=2000&seed=4")
    poisoned = build_trigger("badnets", {"target": 3}).apply_set(src)
    np.savez(tmp_path / "ex.npz", x=poisoned.permute(0, 2, 3, 1).numpy(), y=src.y.numpy())
    raw = demo_spec(quick=True).model_dump(mode="json")
    raw["triggers"] = [{"attack": "examples", "target": 3, "data": f"npz:{tmp_path}/ex.npz"}]
    raw["plan"]["methods"] = [m for m in raw["plan"]["methods"] if m["name"] in ("fst", "ep")]
    raw["plan"]["retune"]["sweep"], raw["gate"] = [], []
    given = audit.run(validate_spec(raw), demo_checkpoint).report
    assert abs(given.model.asr["examples->3"] - demo_report.model.asr["badnets->3"]) <= 0.1
    for key, verdict in (("fst", "superficial"), ("ep", "robust")):
        a, b = demo_report.method(key), given.method(key)
        assert a.verdict == b.verdict == verdict, (key, a.verdict, b.verdict)
        assert abs(a.o_asr - b.o_asr) <= 0.1
    prov = given.provenance.data["trigger examples->3"]
    assert prov["measured"] == prov["attacking"] == 1000


def test_the_demo_audited_with_an_inverted_trigger_agrees_with_the_known_trigger(
        demo_report, demo_checkpoint):
    """The demo's model audited without its trigger (`attack: inverted`): the inversion finds
    class 3 and the scan confirms it; FST's backdoor comes back under RA with the inverted
    trigger and EP's does not, as in the audit that knows the trigger; the report says the
    trigger was inverted and shows images.

    FST's verdict itself is not compared: RA with the inverted trigger also teaches the EP
    baseline a good part of it (P-ASR 0.59 measured, against 0.10 with the true trigger), so
    FST's gap (0.35 measured) sits near enough to the 0.2 margin that two CPU runs have put
    it on either side.

    The demo's audit inverted this model from the same data with the same settings (its
    BTI-DBF and PAM): this audit takes that first round from the process's cache."""
    raw = demo_spec(quick=True).model_dump(mode="json")
    raw["triggers"] = [DEMO_UNKNOWN_TRIGGER]
    raw["plan"]["methods"] = [m for m in raw["plan"]["methods"] if m["name"] in ("fst", "ep")]
    raw["plan"]["retune"]["sweep"] = []
    raw["gate"] = ["model.backdoors_found == 0"]
    messages = []
    r = audit.run(validate_spec(raw), demo_checkpoint,
                  progress=lambda stage, f, message: messages.append(message)).report
    assert any("the audit's earlier inversion of this model" in m for m in messages)
    inv = r.inversions[0]
    assert inv.found and inv.target == 3 and inv.trigger == "inverted", inv.conclusion
    assert inv.scan["smallest"] == 3 and inv.scan["ratio"] <= 0.5
    assert r.model.asr["inverted"] >= 0.9 and r.model.backdoors_found == 1
    fst, ep = r.method("fst"), r.method("ep")
    assert demo_report.method("fst").verdict == "superficial"
    assert fst.o_asr <= 0.2 and fst.p_asr >= 0.8 and fst.p_asr > ep.p_asr + 0.2, (
        fst.o_asr, fst.p_asr, ep.p_asr)
    assert demo_report.method("ep").verdict == ep.verdict == "robust"
    assert r.headline.startswith("The trigger was inverted from the model: class 3")
    assert not r.gate.passed and r.gate.clauses[0].value == 1.0  # a release gate catches it
    assert len(inv.examples) == 4 and sum(e.predicted == 3 for e in inv.examples) >= 3
    md, page = to_markdown(r), to_html(r)
    assert "Trigger `inverted` inverted from the model" in md and "data:image/png;base64," in md
    assert page.count("<img alt='inverted'") == 4


def _quick_spec(**plan):
    return validate_spec({
        "model": {"arch": "small_cnn"}, "data": DATA,
        "triggers": [{"attack": "badnets", "target": 0}],
        "plan": {"methods": [{"name": "ft", "epochs": 1, "augment": False},
                             {"name": "ep", "epochs": 2, "augment": False}],
                 "retune": {"poison_num": 5, "clean_num": 195, "epochs": 1,
                            "sweep": [[10, 1]]},
                 "qra": {"epochs": 1, "hidden": 32, "clean_num": 100, "poison_num": 100},
                 "lmc": {"points": 3}, **plan},
    })


@pytest.fixture(scope="module")
def bd_file(tmp_path_factory, backdoored):
    path = tmp_path_factory.mktemp("bd") / "bd.safetensors"
    save_model(backdoored, path)
    return path


def test_baseline_is_the_ep_model_when_no_reference_is_given(bd_file):
    events = []
    report = audit.run(_quick_spec(), bd_file,
                       progress=lambda s, f, m: events.append((s, f))).report
    assert report.baseline.kind == "ep" and "(ep)" in report.baseline.description
    ft, ep = report.method("ft"), report.method("ep")
    assert ft.baseline_p_asr == report.baseline.p_asr["badnets->0"] == ep.p_asr
    t = ft.per_trigger[0]
    assert [(p.poison_num, p.epochs) for p in t.sweep] == [(10, 1)]
    assert t.sweep[0].baseline_p_asr is not None
    # the baseline's sweep is run once and shared by every method
    assert report.baseline.sweep["badnets->0"][0].p_asr == t.sweep[0].baseline_p_asr
    assert ep.per_trigger[0].sweep[0].baseline_p_asr == t.sweep[0].baseline_p_asr
    assert t.lmc.lambdas == [0.0, 0.5, 1.0]
    assert set(t.qra.transfer) == {"ep"}
    fractions = [f for _, f in events if f >= 0]
    assert fractions[-1] == pytest.approx(1.0) and max(fractions) <= 1.0 + 1e-9
    assert {s for s, _ in events} >= {"load", "purify:ft", "retune:ft:badnets->0:5x1",
                                      "retune:ft:badnets->0:10x1", "qra:ft:badnets->0",
                                      "lmc:ft:badnets->0", "baseline", "report"}
    assert report.provenance.data["clean"]["n"] == 1000 and report.provenance.seed == 0


def test_a_failed_stage_is_reported_and_the_audit_goes_on(bd_file):
    spec = _quick_spec(methods=[{"name": "ft", "epochs": 1},
                                {"name": "pam", "epochs": 1, "data": "trigger"}])
    spec = spec.model_copy(update={"triggers": []})  # no trigger: pam(trigger) cannot run
    report = audit.run(spec, bd_file).report
    pam = report.method("pam")
    assert pam.stages[0].status == "failed" and "needs a trigger" in pam.stages[0].error
    assert report.method("ft").o_cacc is not None  # the other method still ran
    # without a trigger there is nothing to attack: the plan has no baseline or RA stages
    assert [s.name for s in report.stages] == ["evaluate", "purify:ft", "purify:pam", "report"]


def test_a_method_that_breaks_the_model_is_degraded_whatever_its_asr(bd_file):
    """FT at a learning rate that wrecks the model: whatever its ASR, its verdict is
    `degraded` (never robust), the headline says so, and the gate fields see it; the same
    run with the accuracy limit lifted judges it on ASR alone, so the rule, not the method,
    made the call."""
    methods = [{"name": "ft", "epochs": 2, "augment": False},
               {"name": "ft", "label": "wrecked", "epochs": 2, "lr": 1.5, "momentum": 0.9,
                "augment": False}]
    gate = ["wrecked.robust == 1", "wrecked.acc_drop <= 0.05", "ft.acc_drop <= 0.05"]
    raw = _quick_spec(methods=methods, qra={"enabled": False}, lmc={"enabled": False}
                      ).model_dump(mode="json")
    raw["plan"]["retune"]["sweep"] = []
    r = audit.run(validate_spec({**raw, "gate": gate}), bd_file).report
    wrecked, ft = r.method("wrecked"), r.method("ft")
    assert wrecked.acc_drop == pytest.approx(r.model.c_acc - wrecked.o_cacc)
    assert wrecked.acc_drop > 0.3, wrecked.o_cacc
    assert wrecked.verdict == "degraded" and ft.verdict != "degraded", ft.acc_drop
    assert "WRECKED breaks the model" in r.headline and "degraded" in r.verdict_rule
    assert [c.passed for c in r.gate.clauses] == [False, False, True]
    assert "degraded" in to_markdown(r) and "v-degraded" in to_html(r)
    raw["plan"]["retune"]["max_acc_drop"] = 1.0
    raw["plan"]["methods"] = methods[1:]
    lifted = audit.run(validate_spec(raw), bd_file).report.method("wrecked")
    assert lifted.verdict in ("robust", "superficial", "not_removed")
    assert lifted.o_cacc == pytest.approx(wrecked.o_cacc)


def test_empty_plan_audits_the_submitted_model_as_it_is(bd_file):
    spec = _quick_spec(methods=[], lmc={"enabled": False})
    report = audit.run(spec, bd_file).report
    assert [m.key for m in report.methods] == ["model"]
    m = report.methods[0]
    assert m.o_asr == report.model.asr["badnets->0"] and m.p_asr is not None
    assert m.verdict == "not_removed"


def test_cancellation_stops_between_steps(bd_file):
    def cancel(stage, fraction, message):
        if stage.startswith("purify"):
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        audit.run(_quick_spec(), bd_file, progress=cancel)


def test_spec_errors_are_clear():
    from ppr_engine.errors import SpecError

    with pytest.raises(SpecError, match="plan.methods.0: .*unknown purification method"):
        validate_spec({"data": DATA, "plan": {"methods": [{"name": "magic"}]}})
    with pytest.raises(SpecError, match="gate.*must look like"):
        validate_spec({"data": DATA, "gate": ["pam is fine"]})
    with pytest.raises(SpecError, match="data.clean.*unknown data kind"):
        validate_spec({"data": {"clean": "s3://x", "test": "synthetic:"}})
