"""The audit pipeline: the known-answer test (superficial safety must be caught), the
baseline bookkeeping, failed stages, progress and cancellation."""

from __future__ import annotations

import pytest
import torch

from ppr_engine import attacks, audit, data, models, train
from ppr_engine.checkpoint import save_model
from ppr_engine.errors import Cancelled
from ppr_engine.spec import validate_spec

DATA = {"clean": "synthetic:?n=1000&seed=2", "test": "synthetic:?n=1000&seed=1",
        "attacker": "synthetic:?n=2000&seed=3"}


def _train(ds, device):
    torch.manual_seed(0)
    return train.fit(models.create("small_cnn"), ds, epochs=15, lr=0.05, augment=True,
                     device=device)


@pytest.fixture(scope="module")
def augmented_pair(tmp_path_factory, device):
    """A BadNets model and a clean model, both trained with crop+flip (15 epochs), saved."""
    root = tmp_path_factory.mktemp("pair")
    tr = data.make_synthetic(4000, seed=0)
    trig = attacks.build_trigger("badnets", {"target": 0})
    bd = _train(attacks.poison_training_set(tr, trig, 0.1, seed=0).data, device)
    clean = _train(tr, device)
    save_model(bd, root / "bd.safetensors")
    save_model(clean, root / "clean.safetensors")
    return root / "bd.safetensors", root / "clean.safetensors"


def test_known_answer_lp_is_flagged_superficial(augmented_pair):
    """LP re-initializes the head and trains only the head: the backdoor features stay. Its
    O-ASR is low, yet a small RA budget (5 poisoned images, 10 epochs) brings the backdoor
    back far faster than on a model trained clean (measured: P-ASR 0.39 vs 0.08)."""
    bd, clean = augmented_pair
    spec = validate_spec({
        "model": {"arch": "small_cnn"}, "data": DATA, "reference": str(clean),
        "triggers": [{"attack": "badnets", "target": 0}],
        "plan": {"methods": [{"name": "lp", "epochs": 2, "augment": False}],
                 "retune": {"poison_num": 5, "clean_num": 995, "epochs": 10},
                 "qra": {"enabled": False}, "lmc": {"enabled": False}},
        "gate": ["lp.o_asr <= 0.2", "lp.gap <= 0.2"]})
    report = audit.run(spec, bd).report
    lp = report.method("lp")
    assert report.baseline.kind == "reference" and "clean.safetensors" in \
        report.baseline.description
    assert report.model.asr["badnets->0"] >= 0.9
    assert lp.o_asr <= 0.2, f"LP O-ASR {lp.o_asr:.3f}"
    assert lp.p_asr >= 3 * lp.baseline_p_asr and lp.gap >= 0.2, (lp.p_asr, lp.baseline_p_asr)
    assert lp.verdict == "superficial"
    assert report.gate.passed is False
    assert [c.passed for c in report.gate.clauses] == [True, False]


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
    assert {s for s, _ in events} >= {"load", "purify:ft", "retune:ft", "qra:ft", "lmc:ft"}
    assert report.provenance.data["clean"]["n"] == 1000 and report.provenance.seed == 0


def test_a_failed_stage_is_reported_and_the_audit_goes_on(bd_file):
    spec = _quick_spec(methods=[{"name": "ft", "epochs": 1},
                                {"name": "pam", "epochs": 1, "data": "trigger"}])
    spec = spec.model_copy(update={"triggers": []})  # no trigger: pam(trigger) cannot run
    report = audit.run(spec, bd_file).report
    pam = report.method("pam")
    assert pam.stages[0].status == "failed" and "needs a trigger" in pam.stages[0].error
    assert report.method("ft").o_cacc is not None  # the other method still ran
    base = next(s for s in report.stages if s.name == "baseline")
    assert base.status == "failed" and "ep needs the trigger" in base.error


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
