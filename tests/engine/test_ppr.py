"""Mechanisms of the post-purification attacks: RA's data and budget, QRA's bound and
regularizer, LMC's end points."""

import copy

import pytest
import torch

from ppr_engine import metrics
from ppr_engine.ppr.lmc import backdoored_end, interpolate, lambda50, trace_path
from ppr_engine.ppr.qra import PerturbationGenerator, qra_training_set, train_qra
from ppr_engine.ppr.retune import build_retune_set, retune
from ppr_engine.spec import QRASpec, RetuneSpec


def test_retune_set_has_exactly_the_configured_samples(defender_set, badnets):
    rs = build_retune_set(defender_set, badnets, poison_num=5, clean_num=95, seed=1000)
    assert len(rs.data) == 100 and int(rs.poisoned.sum()) == 5
    poisoned = rs.data.subset(torch.nonzero(rs.poisoned).flatten())
    assert (poisoned.y == 0).all()  # relabelled to the target
    assert (defender_set.y[rs.source_index[rs.poisoned]] != 0).all()  # from non-target images
    assert (poisoned.x[:, :, 29:32, 29:32] == 255).all()  # carry the trigger
    assert len(set(rs.source_index.tolist())) == 100  # no image twice
    again = build_retune_set(defender_set, badnets, 5, 95, seed=1000)
    assert torch.equal(again.data.x, rs.data.x)  # clean augmentation is frozen (seeded)
    other = build_retune_set(defender_set, badnets, 5, 95, seed=1001)
    assert not torch.equal(other.source_index, rs.source_index)  # RA's own seed matters


def test_retune_runs_within_its_budget_and_leaves_the_input_alone(defender_set, badnets,
                                                                  backdoored, device):
    rs = build_retune_set(defender_set, badnets, 5, 95, seed=1000)
    spec = RetuneSpec(epochs=3, batch_size=32)
    model = copy.deepcopy(backdoored)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]) if m.training
                                else None)
    attacked = retune(model, rs, spec, device=device)  # the hook travels with the copy
    assert attacked is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # every sample once per epoch, in batches of at most 32, for exactly 3 epochs
    assert sum(seen) == 3 * 100 and max(seen) <= 32 and len(seen) == 3 * 4


def test_qra_perturbation_is_bounded_by_eps():
    gen = PerturbationGenerator((3, 32, 32), hidden=32, eps=16 / 255)
    with torch.no_grad():
        for q in gen.parameters():
            q.mul_(50)  # saturate
        x = torch.rand(8, 3, 32, 32)
        assert float(gen.delta(x).abs().max()) <= 16 / 255 + 1e-7
        out = gen(x)
        assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_qra_regularizer_uses_the_reference_model(defender_set, badnets, backdoored,
                                                  clean_model, device):
    spec = QRASpec(epochs=2, hidden=64, clean_num=100, poison_num=100)
    ds = qra_training_set(defender_set, badnets, spec, seed=0)
    assert len(ds) == 200 and int((ds.x[:, :, 29:32, 29:32] == 255).all(1).all(1).all(1)
                                  .sum()) >= 100
    calls = {"ref": 0}
    ref = copy.deepcopy(clean_model)
    ref.register_forward_hook(lambda m, a, o: calls.__setitem__("ref", calls["ref"] + 1))
    g1 = train_qra(backdoored, backdoored, ref, ds, spec, device=device, seed=0)
    assert calls["ref"] == 2 * 2  # one CE term per batch: 2 epochs x 2 batches
    g2 = train_qra(backdoored, backdoored, copy.deepcopy(backdoored), ds, spec, device=device,
                   seed=0)
    diff = sum(float((a - b).abs().sum()) for a, b in zip(g1.parameters(), g2.parameters(),
                                                          strict=True))
    assert diff > 0  # another reference model, another generator
    # the caller's models are untouched (other stages share them): mode, flags, no grads
    given = copy.deepcopy(backdoored).train()
    before = {k: v.clone() for k, v in given.state_dict().items()}
    train_qra(given, given, given, ds, spec, device=device, seed=0)
    assert given.training and all(q.requires_grad and q.grad is None
                                  for q in given.parameters())
    assert all(torch.equal(v, before[k]) for k, v in given.state_dict().items())


def test_lmc_end_points_reproduce_the_two_models(backdoored, clean_model, defender_set,
                                                 test_set, triggered, device):
    path = trace_path(clean_model, backdoored, defender_set, test_set, triggered, 0, points=3,
                      bn="interpolate", device=device)
    assert [p.lam for p in path] == [0.0, 0.5, 1.0]
    assert path[0].c_acc == metrics.clean_accuracy(clean_model, test_set)
    assert path[0].asr == metrics.attack_success_rate(clean_model, triggered, 0)
    assert path[-1].c_acc == metrics.clean_accuracy(backdoored, test_set)
    assert path[-1].asr == metrics.attack_success_rate(backdoored, triggered, 0)
    mid = interpolate(clean_model, backdoored, 0.5, buffers=True)
    k = "linear.weight"
    assert torch.allclose(mid.state_dict()[k], (clean_model.state_dict()[k]
                                                + backdoored.state_dict()[k]) / 2)
    rec = trace_path(clean_model, backdoored, defender_set, test_set, triggered, 0, points=2,
                     bn="recompute", device=device)
    assert rec[0].asr == pytest.approx(path[0].asr, abs=0.05)
    assert rec[-1].asr == pytest.approx(path[-1].asr, abs=0.05)
    assert lambda50(path) == next(p.lam for p in path if p.asr > 0.5)


@pytest.mark.parametrize("bn", ["recompute", "interpolate"])
def test_lmc_with_the_backdoored_end_computed_once_gives_the_same_path(
        bn, backdoored, clean_model, defender_set, test_set, triggered, device):
    """Every method's path ends at the submitted model: the audit computes that point once
    per trigger; the path it gives is the path computed point by point."""
    kw = {"points": 3, "bn": bn, "device": device}
    full = trace_path(clean_model, backdoored, defender_set, test_set, triggered, 0, **kw)
    end = backdoored_end(backdoored, defender_set, test_set, triggered, 0, bn=bn,
                         device=device)
    assert end == full[-1]
    assert trace_path(clean_model, backdoored, defender_set, test_set, triggered, 0, end=end,
                      **kw) == full
    assert end.asr > 0.5 > full[0].asr  # the two ends differ: the check can fail


def test_qra_with_the_retuned_answers_computed_once_learns_the_per_epoch_generator(
        defender_set, badnets, backdoored, clean_model, device):
    """QRA takes the retuned model's answers once per image instead of once per epoch: the
    generator it learns is the one the per-epoch loop (the oracle, below) learns."""
    import torch.nn.functional as F

    from ppr_engine.data import DeviceLoader
    from ppr_engine.models import frozen_copy
    from ppr_engine.ppr.qra import PerturbationGenerator

    spec = QRASpec(epochs=3, hidden=64, clean_num=100, poison_num=100)
    ds = qra_training_set(defender_set, badnets, spec, seed=0)
    retuned, purified, ref = (copy.deepcopy(m).eval() for m in (backdoored, clean_model,
                                                                  clean_model))
    got = train_qra(purified, retuned, ref, ds, spec, device=device, seed=0)
    torch.manual_seed(0)
    gen = PerturbationGenerator(tuple(ds.x.shape[1:]), spec.hidden, spec.eps / 255).to(device)
    opt = torch.optim.SGD(gen.parameters(), lr=spec.lr, momentum=spec.momentum)
    # the same frozen eval-mode copies QRA differentiates through (BatchNorms folded)
    purified, retuned, ref = (frozen_copy(m, train_mode=False) for m in (purified, retuned, ref))
    loader = DeviceLoader(ds, spec.batch_size, shuffle=True, device=device, seed=0)
    for _ in range(spec.epochs):
        for x, y in loader:
            with torch.no_grad():
                p_ra = F.softmax(retuned(x).float(), 1)
            xp = gen(x)
            loss = spec.alpha * F.kl_div(F.log_softmax(purified(xp).float(), 1), p_ra,
                                         reduction="batchmean") + F.cross_entropy(ref(xp), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for a, b in zip(got.parameters(), gen.parameters(), strict=True):
        assert torch.equal(a, b), float((a - b).abs().max())
