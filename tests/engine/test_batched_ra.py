"""RA against many models at once (`ppr.batched`, the `retune-batch` stage): the same
numbers as retuning each model alone, wherever the plan batches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ppr_engine import attacks, audit, data, models
from ppr_engine.audit.plan import plan_for
from ppr_engine.ppr.batched import groups, retune_together
from ppr_engine.ppr.retune import build_retune_set, retune
from ppr_engine.spec import RetuneSpec, validate_spec

CPU = torch.device("cpu")


def _rset(target: int = 3):
    trig = attacks.build_trigger("badnets", {"target": target})
    return build_retune_set(data.make_synthetic(400, seed=3), trig, 20, 180, seed=5)


def _largest_difference(a: nn.Module, b: nn.Module) -> float:
    """The largest difference of two models' tensors, relative to each tensor's largest
    value (integer buffers must be equal)."""
    worst = 0.0
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if x.is_floating_point():
            worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-6)))
        else:
            assert torch.equal(x, y), name
    return worst


@pytest.mark.parametrize("arch,width", [("small_cnn", None), ("resnet18_cifar", 8)])
def test_batched_retuning_is_each_models_own_retuning_in_float64(arch, width):
    """Three models of one architecture (different weights) retuned as one vmapped
    training, and each alone: in float64 they agree to 1e-10 of each tensor's scale
    (measured: 2e-14 for small_cnn), so the batch is the same computation. In float32 the
    two orders of rounding part after a few steps on untrained models (1e-2 after eight
    steps), as any two float32 runs of a chaotic training do; the audit test below checks
    what that leaves of P-ASR on trained models."""
    spec = RetuneSpec(poison_num=20, clean_num=180, epochs=1, batch_size=50, seed=7)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(models.create(arch, 10, width=width).double())
    before = [copy.deepcopy(m.state_dict()) for m in nets]
    together = retune_together(nets, _rset(), spec, device=CPU)
    for net, batched, state in zip(nets, together, before, strict=True):
        alone = retune(net, _rset(), spec, device=CPU)
        assert _largest_difference(alone, batched) < 1e-10
        moved = max(float((a - b).detach().abs().max())
                    for a, b in zip(alone.parameters(), net.parameters(), strict=True))
        assert moved > 1e-3  # it trained
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # untouched


def test_models_of_another_structure_are_retuned_alone():
    """A model with a forward hook, with dropout (whose draws a batch cannot share with a
    run alone) or with another BatchNorm momentum trains by itself, and exactly as `retune`
    trains it."""
    torch.manual_seed(0)
    plain = [models.create("small_cnn", 10) for _ in range(2)]
    hooked = models.create("small_cnn", 10)
    hooked.layer4.register_forward_hook(lambda m, i, o: o * 0.5)
    dropped = models.create("small_cnn", 10)
    dropped.pool = nn.Sequential(dropped.pool, nn.Dropout(0.1))
    slower = models.create("small_cnn", 10)
    slower.layer1[0][1].momentum = 0.01  # a BatchNorm setting the batch would not honour
    nets = [plain[0], hooked, plain[1], dropped, slower]
    assert groups(nets) == [[0, 2], [1], [3], [4]]
    spec = RetuneSpec(poison_num=20, clean_num=180, epochs=1, batch_size=64)
    together = retune_together(nets, _rset(), spec, device=CPU)
    alone = retune(hooked, _rset(), spec, device=CPU)
    assert _largest_difference(alone, together[1]) == 0.0


def _spec(batched: str, device: str | None = None, qra_batched: str = "off") -> dict:
    spec = {
        "model": {"arch": "small_cnn"},
        "data": {"clean": "synthetic:?n=1000&seed=2", "test": "synthetic:?n=1000&seed=1",
                 "attacker": "synthetic:?n=2000&seed=3"},
        "triggers": [{"attack": "badnets", "target": 0}],
        "plan": {"methods": [{"name": "ft", "epochs": 2, "augment": False},
                             {"name": "fst", "epochs": 2, "augment": False},
                             {"name": "ep", "epochs": 2, "augment": False}],
                 "retune": {"poison_num": 10, "clean_num": 190, "epochs": 2,
                            "sweep": [[20, 2]], "batched": batched},
                 "qra": {"epochs": 1, "hidden": 32, "clean_num": 100, "poison_num": 100,
                         "batched": qra_batched},
                 "lmc": {"enabled": False}}}
    return spec if device is None else {**spec, "device": device}


def test_an_audit_in_batches_reports_what_one_alone_reports(backdoored, tmp_path):
    """The same audit with RA and QRA (and QRA's transfer) batched and not: the plan has one
    `retune-batch` stage per budget and one `qra-batch` stage, every subject keeps its own
    `retune` and `qra` stages, and every P-ASR, P-C-Acc, QRA figure and verdict agrees.
    P-ASR may move by float32 rounding of the retuned weights: at most 0.005 here (measured
    on the demo's model: one image of 900); QRA's figures, which follow both the retuned
    guide and the generator, at most 0.01 (three triggered images of 300)."""
    from ppr_engine.checkpoint import save_model

    ckpt = tmp_path / "bd.safetensors"
    save_model(backdoored, ckpt)
    alone = audit.run(validate_spec(_spec("off")), ckpt).report
    together = audit.run(validate_spec(_spec("on", qra_batched="on")), ckpt).report
    names = [s.name for s in together.stages]
    assert [n for n in names if "-batch" in n] == [
        "retune-batch:ft+fst+ep+baseline:badnets->0:10x2",
        "retune-batch:ft+fst+ep+baseline:badnets->0:20x2", "qra-batch:ft+fst+ep:badnets->0"]
    assert {s.status for s in together.stages} == {"ok"}
    assert sorted(n for n in names if "-batch" not in n) == sorted(s.name for s in alone.stages)
    for a, b in zip(alone.methods, together.methods, strict=True):
        ta, tb = a.per_trigger[0], b.per_trigger[0]
        assert abs(ta.p_asr - tb.p_asr) <= 0.005, (a.key, ta.p_asr, tb.p_asr)
        for x, y in zip(ta.sweep, tb.sweep, strict=True):
            assert abs(x.p_asr - y.p_asr) <= 0.005, (a.key, x.key, x.p_asr, y.p_asr)
        assert ta.p_cacc == pytest.approx(tb.p_cacc, abs=0.005)
        for field in ("asr", "clean_to_target", "ref_asr", "ref_clean_to_target"):
            assert getattr(ta.qra, field) == pytest.approx(getattr(tb.qra, field), abs=0.01)
        assert ta.qra.transfer.keys() == tb.qra.transfer.keys() and len(ta.qra.transfer) == 2
        for k in ta.qra.transfer:
            assert ta.qra.transfer[k] == pytest.approx(tb.qra.transfer[k], abs=0.01), k
        assert a.verdict == b.verdict
    assert alone.baseline.p_asr == together.baseline.p_asr


def test_the_plan_batches_ra_where_the_spec_says():
    """auto batches for a spec that names CUDA (planned here, no GPU needed), not on the
    CPU nor for a spec without a device (the gateway and the GPU worker must plan alike)."""
    def batch_stages(spec):
        return [s.id for s in plan_for(validate_spec(spec)) if s.kind == "retune-batch"]

    assert len(batch_stages(_spec("auto", "cuda"))) == 2
    assert batch_stages(_spec("auto", "cpu")) == batch_stages(_spec("auto")) == []
    assert len(batch_stages(_spec("on"))) == 2 and batch_stages(_spec("off", "cuda")) == []
    plan = plan_for(validate_spec(_spec("on")))
    batch = plan.get("retune-batch:ft+fst+ep+baseline:badnets->0:10x2")
    assert set(batch.after) == {"purify:ft", "purify:fst", "purify:ep", "baseline"}
    assert "retune-batch:ft+fst+ep+baseline:badnets->0:10x2" in plan.get(
        "retune:fst:badnets->0:10x2").needs


@pytest.mark.parametrize("bn", ["recompute", "interpolate"])
def test_a_paths_points_evaluated_together_are_the_points_one_by_one(backdoored, bn):
    """LMC's points as one vmapped model (`points_together`, `plan.lmc.batched`) against
    `path_point` at each lambda: in float64 the same C-Acc and ASR at every point (the
    BatchNorm statistics recomputed per point with momentum 1/k are BatchNorm's own
    cumulative average)."""
    from ppr_engine.ppr.lmc import path_point, points_together, trace_path

    bd = copy.deepcopy(backdoored).double()
    torch.manual_seed(4)
    pur = models.create("small_cnn", 10).double()  # an untrained end: the path moves
    clean, test = data.make_synthetic(300, seed=2), data.make_synthetic(200, seed=1)
    trig = attacks.build_trigger("badnets", {"target": 0})
    triggered = attacks.triggered_test(test, trig)
    lams = [0.0, 0.3, 0.6, 1.0]
    together = points_together(pur, bd, lams, clean, test, triggered, 0, bn=bn, device=CPU)
    alone = [path_point(pur, bd, lam, clean, test, triggered, 0, bn=bn, device=CPU)
             for lam in lams]
    assert together == alone
    assert len({p.asr for p in alone}) > 1  # the path moves: the points are not one model
    traced = trace_path(pur, bd, clean, test, triggered, 0, points=4, bn=bn, device=CPU,
                        batched=True)
    assert [p.lam for p in traced] == [0.0, 1 / 3, 2 / 3, 1.0]
