"""QRA against many models at once (`ppr.batched_qra`, the `qra-batch` stage): the same
generators and numbers as QRA against each model alone, wherever the plan batches. The
audit batched and not is compared in `test_batched_ra` (RA and QRA batched together)."""

from __future__ import annotations

import copy

import pytest
import torch

from ppr_engine import attacks, data, models
from ppr_engine.audit.plan import plan_for
from ppr_engine.ppr.batched_qra import train_qra_together, transfer_asrs
from ppr_engine.ppr.qra import qra_asr, train_qra
from ppr_engine.spec import QRASpec, validate_spec

from .test_batched_ra import _largest_difference, _spec

CPU = torch.device("cpu")


def _untrained(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("small_cnn", 10).eval()


def test_batched_generators_are_each_models_own_generator_in_float64(backdoored,
                                                                      clean_model):
    """Three purified models of one structure (two trained, one not), each with its own
    guide, trained against as one vmapped QRA and each alone: in float64 the generators
    agree to 1e-10 of each tensor's scale (measured: 1e-16), and they differ from each other
    (the batch is not one member N times). A purified model with a forward hook trains
    alone, exactly as `train_qra` trains it. The shared reference is left as it was."""
    hooked = copy.deepcopy(clean_model)
    hooked.layer4.register_forward_hook(lambda m, i, o: o * 0.5)
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            purified = [copy.deepcopy(m).double() for m in
                        (backdoored, clean_model, hooked, _untrained(1))]
            guides = [copy.deepcopy(m).double() for m in
                      (clean_model, backdoored, backdoored, _untrained(2))]
            reference = copy.deepcopy(clean_model).double()
            before = copy.deepcopy(reference.state_dict())
            trig = attacks.build_trigger("badnets", {"target": 0})
            ds = attacks.triggered_test(data.make_synthetic(240, seed=3), trig)
            spec = QRASpec(epochs=2, hidden=32, batch_size=60, lr=0.5)
            together = train_qra_together(purified, guides, reference, ds, spec,
                                          device=CPU, seed=7)
            alone = [train_qra(p, g, reference, ds, spec, device=CPU, seed=7)
                     for p, g in zip(purified, guides, strict=True)]
        finally:
            torch.set_default_dtype(torch.float32)
    for a, b in zip(alone, together, strict=True):
        assert _largest_difference(a, b) < 1e-10
    assert _largest_difference(alone[2], together[2]) == 0.0  # the hooked one, alone
    assert min(_largest_difference(together[0], g) for g in together[1:]) > 1e-4
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())


def test_the_transfer_evaluated_together_is_each_models_own(backdoored, clean_model):
    """QRA's transfer: one generator's perturbation against several models, evaluated as
    one vmapped model (and a model of another structure alone), gives each model's
    `qra_asr` exactly."""
    torch.manual_seed(0)
    trig = attacks.build_trigger("badnets", {"target": 0})
    test = data.make_synthetic(300, seed=1)
    triggered = attacks.triggered_test(test, trig)
    gen = train_qra(backdoored, backdoored, clean_model, triggered,
                    QRASpec(epochs=1, hidden=32, batch_size=100), device=CPU, seed=1)
    hooked = copy.deepcopy(clean_model)
    hooked.layer4.register_forward_hook(lambda m, i, o: -o)
    targets = [backdoored, clean_model, hooked, _untrained(3)]
    found = transfer_asrs(gen, targets, triggered, trig, CPU)
    assert found == [qra_asr(gen, m, triggered, trig, CPU) for m in targets]
    assert len(set(found)) > 1


def _qra_spec(batched: str, device: str | None = None) -> dict:
    return _spec("off", device, qra_batched=batched)


def test_the_plan_batches_qra_where_the_spec_says():
    """auto batches for a spec that names CUDA, not on the CPU nor without a device. The
    batch waits for every method's model and RA model; each method's `qra` stage comes
    after it, reads it, and costs only its numbers."""
    def ids(spec, kind):
        return [s.id for s in plan_for(validate_spec(spec)) if s.kind == kind]

    assert ids(_qra_spec("auto", "cuda"), "qra-batch") == ["qra-batch:ft+fst+ep:badnets->0"]
    assert ids(_qra_spec("auto", "cpu"), "qra-batch") == ids(_qra_spec("auto"), "qra-batch") == []
    assert ids(_qra_spec("off", "cuda"), "qra-batch") == []
    on, off = plan_for(validate_spec(_qra_spec("on"))), plan_for(validate_spec(_qra_spec("off")))
    batch = on.get("qra-batch:ft+fst+ep:badnets->0")
    assert set(batch.after) == {"purify:ft", "purify:fst", "purify:ep",
                                "retune:ft:badnets->0:10x2", "retune:fst:badnets->0:10x2",
                                "retune:ep:badnets->0:10x2"}
    assert set(batch.needs) == {"evaluate", "baseline"}
    assert sorted(on.ids) == sorted(off.ids + [batch.id])
    for key in ("ft", "fst", "ep"):
        qra = on.get(f"qra:{key}:badnets->0")
        assert batch.id in qra.needs and on.ids.index(qra.id) > on.ids.index(batch.id)
        assert 0 < qra.cost < off.get(qra.id).cost
    assert on.total_cost == pytest.approx(off.total_cost)
