"""All-to-all backdoors: a label map y -> (y + shift) mod C instead of one target, through
poisoning, ASR, RA, QRA, EP, LMC and the report."""

import pytest
import torch

from ppr_engine import attacks, audit, metrics
from ppr_engine.checkpoint import save_model
from ppr_engine.errors import SpecError
from ppr_engine.report import to_markdown
from ppr_engine.spec import validate_spec

from ..conftest import train_small

DATA = {"clean": "synthetic:?n=1000&seed=2", "test": "synthetic:?n=1000&seed=1",
        "attacker": "synthetic:?n=2000&seed=3"}
ALL_TO_ALL = {"attack": "badnets", "label_map": "all_to_all"}


def bound(params: dict) -> attacks.Trigger:
    trigger = attacks.build_trigger(params.pop("attack"), params)
    trigger.bind_classes(10)
    return trigger


def test_the_label_map_relabels_the_poisoned_samples_and_asr_counts_every_image(
        train_set, test_set):
    trigger = bound({"attack": "badnets", "label_map": "all_to_all", "shift": 3})
    poisoned = attacks.poison_training_set(train_set, trigger, 0.1, seed=1)
    was = train_set.y[poisoned.poisoned]
    assert torch.equal(poisoned.data.y[poisoned.poisoned], (was + 3) % 10)
    assert torch.equal(poisoned.relabelled, poisoned.poisoned)  # every one changes class
    assert torch.equal(poisoned.data.y[~poisoned.poisoned], train_set.y[~poisoned.poisoned])
    moved = trigger.triggered_test(test_set)
    assert len(moved) == len(test_set)  # no class is the target: every image counts
    assert torch.equal(trigger.targets(moved.y), (moved.y + 3) % 10)
    one = bound({"attack": "badnets", "target": 7})
    assert len(one.triggered_test(test_set)) == int((test_set.y != 7).sum())


def test_all_to_all_refusals():
    base = {"model": {"arch": "small_cnn"}, "data": DATA}
    with pytest.raises(SpecError, match="no target"):
        validate_spec({**base, "triggers": [{**ALL_TO_ALL, "target": 4}]})
    with pytest.raises(SpecError, match="clean-label"):
        validate_spec({**base, "triggers": [{"attack": "sig", "label_map": "all_to_all"}]})
    trigger = attacks.build_trigger("badnets", {"label_map": "all_to_all", "shift": 10})
    with pytest.raises(SpecError, match="maps every class of 10 to itself"):
        trigger.bind_classes(10)
    with pytest.raises(SpecError, match="not a class"):
        attacks.build_trigger("badnets", {"target": 12}).bind_classes(10)


@pytest.fixture(scope="module")
def all_to_all_model(train_set, device, tmp_path_factory):
    """small_cnn trained with 10% all-to-all BadNets (y -> y + 1), seed 5."""
    poisoned = attacks.poison_training_set(train_set, bound(dict(ALL_TO_ALL)), 0.1, seed=5)
    path = tmp_path_factory.mktemp("a2a") / "a2a.safetensors"
    model = train_small(poisoned.data, device, epochs=10, seed=5)
    save_model(model, path)
    return model, path


def test_an_all_to_all_badnets_model_is_audited_end_to_end(all_to_all_model, test_set):
    """The audit's ASR is the share of triggered images sent to y + 1 (not to any one class);
    EP, which unlearns the trigger under true labels, removes it; RA, QRA and LMC run on the
    label map, and the report names the trigger by it."""
    model, path = all_to_all_model
    trigger = bound(dict(ALL_TO_ALL))
    moved = trigger.triggered_test(test_set)
    direct = metrics.attack_success_rate(model, moved, trigger.targets(moved.y))
    as_if_one = max(metrics.attack_success_rate(model, moved, k) for k in range(10))
    # measured: 0.71 over the map, at most 0.13 towards any single class (10 epochs; the
    # all-to-all task is harder to implant than one target, as in BackdoorBench's tables)
    assert direct >= 0.6 and as_if_one <= 0.3, (direct, as_if_one)
    spec = validate_spec({
        "model": {"arch": "small_cnn"}, "data": DATA, "triggers": [ALL_TO_ALL],
        "plan": {"methods": [{"name": "ft", "epochs": 2, "augment": False},
                             {"name": "ep", "epochs": 5, "augment": False}],
                 "retune": {"poison_num": 20, "clean_num": 180, "epochs": 3, "sweep": []},
                 "qra": {"epochs": 1, "hidden": 32, "clean_num": 100, "poison_num": 100},
                 "lmc": {"points": 3}},
        "gate": ["ep.o_asr <= 0.2"]})
    report = audit.run(spec, path).report
    label = "badnets->y+1"
    assert report.model.asr[label] == pytest.approx(direct, abs=1e-6)
    ep, ft = report.method("ep"), report.method("ft")
    assert ep.o_asr <= 0.2 < report.model.asr[label], ep.o_asr
    for m in (ep, ft):
        t = m.per_trigger[0]
        # lambda = 1 is the submitted model (BN statistics re-estimated on clean data)
        assert t.trigger == label and t.p_asr is not None and t.lmc.asr[-1] >= 0.6
    assert ft.per_trigger[0].qra is not None and report.gate.passed
    assert label in to_markdown(report)
