"""Audits without a known trigger (`attack: inverted`): a Blended backdoor is found and
judged as the audit that knows it judges it; a model trained clean gets "no backdoor found
by inversion" and no verdict, however confidently the generator reaches one class.

Cases unlike the ones the scan's threshold was set on (docs/RESULTS.md): Blended with target
5 and seed 2, a clean model with seed 3."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ppr_engine import attacks, audit
from ppr_engine.checkpoint import save_model
from ppr_engine.demo import DEMO_UNKNOWN_TRIGGER
from ppr_engine.errors import SpecError
from ppr_engine.report import InvertedExample
from ppr_engine.spec import validate_spec

from ..conftest import train_small

DATA = {"clean": "synthetic:?n=1000&seed=2", "test": "synthetic:?n=1000&seed=1",
        "attacker": "synthetic:?n=2000&seed=3"}


def _spec(trigger: dict, gate: list[str] | None = None):
    return validate_spec({
        "model": {"arch": "small_cnn"}, "data": DATA, "triggers": [trigger],
        "plan": {"methods": [{"name": "fst", "epochs": 10, "augment": False}],
                 "retune": {"poison_num": 10, "clean_num": 990, "epochs": 5, "sweep": []},
                 "qra": {"enabled": False}, "lmc": {"enabled": False}},
        "gate": gate or []})


def test_a_blended_backdoor_is_found_and_judged_as_with_the_known_trigger(
        train_set, device, tmp_path):
    blended = attacks.build_trigger("blended", {"target": 5})
    model = train_small(attacks.poison_training_set(train_set, blended, 0.1, seed=2).data,
                        device, seed=2)
    path = tmp_path / "blended.safetensors"
    save_model(model, path)
    known = audit.run(_spec({"attack": "blended", "target": 5}), path).report
    found = audit.run(_spec(DEMO_UNKNOWN_TRIGGER), path).report
    inv = found.inversions[0]
    assert inv.found and inv.target == 5, inv.conclusion
    assert found.model.asr["inverted"] >= 0.5 and known.model.asr["blended->5"] >= 0.9
    assert found.method("fst").verdict == known.method("fst").verdict != "unknown"
    assert found.provenance.data["trigger inverted"]["target"] == 5


def test_a_clean_model_gets_no_backdoor_found_and_no_verdict(train_set, device, tmp_path):
    path = tmp_path / "clean.safetensors"
    save_model(train_small(train_set, device, seed=3), path)
    r = audit.run(_spec(DEMO_UNKNOWN_TRIGGER, gate=["fst.max_gap <= 0.1",
                                                    "model.backdoors_found == 0"]), path).report
    inv = r.inversions[0]
    assert not inv.found, inv.conclusion
    assert inv.conclusion.startswith("No backdoor found by inversion")
    assert r.headline == inv.conclusion
    assert r.methods == [] and r.model.asr == {} and r.model.backdoors_found == 0
    assert r.model.c_acc >= 0.9
    assert {s.name.split(":")[0] for s in r.stages if s.status == "skipped"} >= {
        "purify", "retune"}
    fst_clause, found_clause = r.gate.clauses
    assert not fst_clause.passed and "no backdoor found by inversion" in fst_clause.detail
    assert found_clause.passed and not r.gate.passed


def test_an_inverted_trigger_takes_no_target_and_cannot_poison(train_set):
    with pytest.raises(SpecError, match="target"):
        validate_spec({"model": {"arch": "small_cnn"}, "data": DATA,
                       "triggers": [{"attack": "inverted", "target": 3}]})
    for bad, says in (({"scan": {}}, "inversion.scan"), ({"inversion": {"verify": False}},
                                                         "needs inversion.verify")):
        with pytest.raises(SpecError, match=says):
            validate_spec({"model": {"arch": "small_cnn"}, "data": DATA,
                           "triggers": [{"attack": "inverted", **bad}]})
    trig = attacks.build_trigger("inverted", {})
    with pytest.raises(SpecError, match="not learnt yet"):
        attacks.poison_training_set(train_set, trig, 0.1)


def test_a_report_carries_only_inline_png_images():
    png = "data:image/png;base64,iVBORw0KGgo="
    InvertedExample(true_class=1, predicted=3, clean_png=png, inverted_png=png)
    for bad in ("https://example.com/x.png", "data:text/html;base64,PGI+", png + "'><script>"):
        with pytest.raises(ValidationError):
            InvertedExample(true_class=1, predicted=3, clean_png=bad, inverted_png=png)
