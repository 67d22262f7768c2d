"""The registry of stage kinds: every stage of a plan belongs to a registered kind and
carries a typed id; a gate field belongs to one kind; and a new kind is one class and its
registration, which the plan, the estimate, the executor and the report all pick up."""

from __future__ import annotations

import pickle
import random

import pytest

from ppr_engine import audit
from ppr_engine.audit import kinds
from ppr_engine.audit.kinds import KINDS, Filling, Planner, StageKind, field_kinds
from ppr_engine.audit.kinds.base import subject_model
from ppr_engine.audit.plan import estimated_work, plan_for
from ppr_engine.audit.stage import Stage, StageId, StageResult
from ppr_engine.checkpoint import save_model
from ppr_engine.errors import SpecError
from ppr_engine.gate import METHOD_FIELDS
from ppr_engine.spec import validate_spec

from .test_cost import _random_spec

DATA = {"clean": "synthetic:?n=600&seed=2", "test": "synthetic:?n=600&seed=1"}


@pytest.mark.parametrize("seed", range(8))
def test_every_stage_has_a_registered_kind_and_an_id_built_from_its_parts(seed):
    raw = _random_spec(random.Random(seed))
    raw["triggers"] = raw["triggers"] + [{"attack": "inverted"}] * (seed % 2)
    plan = plan_for(validate_spec(raw))
    seen: set[str] = set()
    for s in plan:
        assert s.kind in KINDS
        rebuilt = StageId(s.id.kind, s.id.method, s.id.label, s.id.budget)
        assert rebuilt == s.id and str(rebuilt) == str(s.id)
        assert pickle.loads(pickle.dumps(s.id)).label == s.id.label
        assert set(s.waits_for()) <= seen, f"{s.id} waits for a stage planned after it"
        seen.add(s.id)
    assert plan.stages[-1].id == "report" and len(seen) == len(plan)


def test_a_gate_field_belongs_to_one_kind_and_a_clause_on_it_needs_that_kind():
    owners = field_kinds()
    assert set(owners) <= set(METHOD_FIELDS)
    assert {owners["p_asr"].name, owners["qra_asr"].name, owners["lmc_lambda50"].name} == {
        "retune", "qra", "lmc"}
    base = {"data": DATA, "triggers": [{"attack": "badnets", "target": 0}],
            "plan": {"methods": [{"name": "ft"}], "lmc": {"enabled": False}}}
    validate_spec({**base, "gate": ["ft.max_gap <= 0.1"]})
    with pytest.raises(SpecError, match="needs the lmc stages.*plan.lmc.enabled is false"):
        validate_spec({**base, "gate": ["ft.lmc_lambda50 >= 0.5"]})


class Probe(StageKind):
    """A kind a test adds: the subject's ASR on the trigger, measured again per chain."""

    name = "probe"

    def __init__(self) -> None:
        self.filled: dict[str, float] = {}

    def chain(self, p: Planner, subject: str, trigger: int) -> list[Stage]:
        if subject in ("baseline", "model"):
            return []
        return [Stage(StageId("probe", subject, p.labels[trigger]),
                      needs=(StageId("purify", subject),), trigger=trigger, cost=123.0)]

    def run(self, stage, inputs, results, progress) -> StageResult:
        return StageResult({"asr": inputs.asr(subject_model(stage, inputs, results),
                                              stage.trigger)})

    def fill(self, f: Filling, stage, values) -> None:
        self.filled[stage.id] = values["asr"]


def test_a_new_kind_is_one_class_and_its_registration(monkeypatch, tmp_path, backdoored):
    probe = Probe()
    monkeypatch.setitem(KINDS, "probe", probe)
    monkeypatch.setattr(kinds, "CHAIN", (*kinds.CHAIN, probe))
    spec = validate_spec({
        "model": {"arch": "small_cnn"}, "data": DATA,
        "triggers": [{"attack": "badnets", "target": 0}],
        "plan": {"methods": [{"name": "ft", "epochs": 1, "augment": False}],
                 "retune": {"enabled": False}, "qra": {"enabled": False},
                 "lmc": {"enabled": False}}})
    plan = plan_for(spec)
    assert plan.ids == ["evaluate", "purify:ft", "probe:ft:badnets->0", "report"]
    without = sum(s.cost for s in plan if s.kind != "probe")
    probe_cost = plan.get("probe:ft:badnets->0").cost
    assert probe_cost > 0 and estimated_work(spec) == pytest.approx(without + probe_cost)
    save_model(backdoored, tmp_path / "bd.safetensors")
    report = audit.run(spec, tmp_path / "bd.safetensors").report
    stage = next(s for s in report.stages if s.name == "probe:ft:badnets->0")
    assert stage.status == "ok"
    # the probe measured the purified model on the same trigger as the purify stage did
    assert probe.filled == {"probe:ft:badnets->0": report.methods[0].o_asr}
    assert stage in report.methods[0].stages
