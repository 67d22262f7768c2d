"""The capture-safe training step (`graphed_step`): on the CPU it runs eagerly and must train
as `fit`'s own loop does; its replay check must keep whichever step is right. The CUDA
graph itself needs a GPU (bench/gpu_suite.sh measures it)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ppr_engine import data, graphed_step, models, train
from ppr_engine.graphed_step import FitStep, cosine_schedule, make_optimizer

CPU = torch.device("cpu")


def _compare(ref: dict, out: dict, start: dict) -> tuple[float, float]:
    """(the largest difference of `out` from `ref`, the largest move of `ref` from `start`),
    each relative to the tensor's largest value; integer tensors must be equal."""
    assert ref.keys() == out.keys()
    worst = moved = 0.0
    for name, value in ref.items():
        if value.is_floating_point():
            scale = value.abs().max().clamp_min(1e-6)
            worst = max(worst, float((out[name] - value).abs().max() / scale))
            moved = max(moved, float((value - start[name]).abs().max() / scale))
        else:
            assert torch.equal(out[name], value), name
    return worst, moved


def _trained(model, ds, capture_safe: bool, **kw):
    kw = {"lr": 0.05, **kw}
    return train.fit(copy.deepcopy(model), ds, epochs=2, batch_size=48, augment=True,
                     device=CPU, seed=3, capture_safe=capture_safe, **kw)


@pytest.mark.parametrize("arch,width,kw,dtype", [
    ("small_cnn", None, {}, torch.float32),
    ("resnet18_cifar", 8, {}, torch.float32),
    ("small_cnn", None, {"optimizer": "adam", "lr": 1e-3, "schedule": "constant",
                         "weight_decay": 0.0}, torch.float64),
    ("small_cnn", None, {"momentum": 0.0, "label_smoothing": 0.1}, torch.float32),
])
def test_the_capture_safe_step_trains_as_fits_own_loop(arch, width, kw, dtype):
    """Two epochs of 120 images at batch 48 (a tail batch of 24 each epoch), with crop and
    flip: the fused optimizer reading its learning rate from a device tensor and a schedule
    in closed form give the weights and BatchNorm statistics of the loop with a Python float
    and `CosineAnnealingLR`, to float32 rounding. Few steps: an untrained network at this
    learning rate multiplies a one-ulp difference about tenfold per step (measured on the
    ResNet: 2e-8 at step 3, 4e-3 at step 10), in float64 as in float32.
    Adam runs in float64: its update divides by the gradient's running magnitude, so where
    a gradient nearly cancels, float32 rounding moves the step by a visible share of it (on
    one AMD EPYC the fused and the loop Adam parted by 1.3e-4 of a weight's scale in float32,
    by 3.4e-9 in float64, where rounding is 1e-16)."""
    torch.manual_seed(0)
    model = models.create(arch, 10, width=width).to(dtype)
    ds = data.make_synthetic(120, seed=4)  # the float32 images are exact in float64
    ref = _trained(model, ds, capture_safe=False, **kw).state_dict()
    out = _trained(model, ds, capture_safe=True, **kw).state_dict()
    worst, moved = _compare(ref, out, model.state_dict())
    assert worst < 1e-5
    assert moved > 0.01  # the weights did move: the comparison is not of two copies


def test_the_cosine_schedule_is_the_schedulers_in_closed_form():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = train.cosine(opt, 37)
    stepwise = []
    for _ in range(37):
        stepwise.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    closed = cosine_schedule(0.1, 37, CPU)
    assert closed.dtype == torch.float32 and len(closed) == 37
    assert torch.allclose(closed, torch.tensor(stepwise, dtype=torch.float32), atol=1e-8)


@pytest.mark.parametrize("arch,width", [("small_cnn", None), ("resnet18_cifar", 8)])
def test_the_steps_forward_and_loss_trace_without_a_graph_break(arch, width):
    """What a compiler would trace of the step (the model and the loss on the static
    batch) is one graph; backward and the fused optimizer run as captured kernels."""
    model = train.prepare(models.create(arch, 10, width=width), CPU).train()
    x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    explained = torch._dynamo.explain(lambda a, b: F.cross_entropy(model(a), b))(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


class _Replay:
    """A stand-in for a captured graph (the thing under test is the check, not CUDA): its
    replay takes an eager step on the static buffers at `factor` times the learning rate."""

    def __init__(self, step: FitStep, lr: torch.Tensor, factor: float) -> None:
        self.step, self.lr, self.factor = step, lr, factor
        self.static_x = torch.empty(16, 3, 32, 32)
        self.static_y = torch.empty(16, dtype=torch.long)
        self.calls = 0

    def replay(self) -> None:
        self.calls += 1
        base = self.lr.clone()
        self.lr.mul_(self.factor)
        self.step._eager(self.static_x, self.static_y)
        self.lr.copy_(base)


@pytest.mark.parametrize("factor,stands", [(1.0, True), (3.0, False)])
def test_a_replay_that_differs_from_the_eager_step_is_dropped(factor, stands, monkeypatch):
    monkeypatch.setattr(graphed_step, "_REPLAY_CHECKED", {})
    torch.manual_seed(0)
    model = train.prepare(models.create("small_cnn", 10), CPU).train()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))

    def runner(m):
        lr = torch.tensor(0.05)
        step = FitStep(m, make_optimizer(m.parameters(), "sgd", lr, 0.9, 5e-4),
                       lambda mm, a, b: F.cross_entropy(mm(a), b), CPU, graph=True)
        return step, lr

    eager_model = copy.deepcopy(model)
    eager, _ = runner(eager_model)
    eager._eager(x, y)
    checked, lr = runner(model)
    replay = _Replay(checked, lr, factor)
    checked._graphs[("shape",)] = (replay, replay.static_x, replay.static_y)
    checked._check_replay(checked._graphs[("shape",)], x, y)
    for a, b in zip(model.state_dict().values(), eager_model.state_dict().values(),
                    strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)  # either way: one right step
    assert checked.graph is stands
    assert bool(checked._graphs) is stands
    assert graphed_step.replays_trusted(CPU) is stands  # a mismatch: eager from now on
    # a held graph is replayed only while the process trusts its replays
    later = FitStep(model, checked.opt, checked.loss, CPU, graph=True)
    later._graphs[(tuple(x.shape), x.dtype, tuple(y.shape))] = (
        replay, replay.static_x, replay.static_y)
    replay.calls = 0
    later.step(x, y)
    assert replay.calls == (1 if stands else 0)
    # another kind of step keeps its graphs: each kind is checked on its own
    def other_loss(mm, a, b):
        return F.cross_entropy(mm(a), b, label_smoothing=0.1)

    other = FitStep(model, checked.opt, other_loss, CPU, graph=True)
    assert graphed_step.replays_trusted(CPU, graphed_step.step_kind(None, other_loss)) is None
    other._graphs[(tuple(x.shape), x.dtype, tuple(y.shape))] = (
        replay, replay.static_x, replay.static_y)
    replay.calls = 0
    other.step(x, y)
    assert replay.calls == 1


def test_predict_never_switches_the_models_mode():
    """Stages may share a model: predicting with one in train mode leaves it in train mode
    with its BatchNorm statistics, and predicts as its eval mode does."""
    torch.manual_seed(0)
    model = models.create("resnet18_cifar", 10, width=8).train()
    ds = data.make_synthetic(64, seed=5)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    labels = train.predict(model, ds, device=CPU)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert torch.equal(labels, train.predict(copy.deepcopy(model).eval(), ds, device=CPU))


def _bodies(model, reference):
    """The capture-safe step bodies of the defenses, on `model`."""
    from ppr_engine.defenses.pam import PAMStep
    from ppr_engine.defenses.sam import SAMStep

    return {"pam": PAMStep(model, reference, 0.5, CPU),
            "ft_sam": SAMStep(model, 2.0, True, CPU),
            "sam": SAMStep(model, 0.05, False, CPU)}


@pytest.mark.parametrize("name", ["pam", "ft_sam", "sam"])
def test_a_defenses_step_through_the_capture_safe_path_trains_as_its_eager_step(
        name, backdoored, monkeypatch):
    """PAM's step (gradient at the point shifted toward theta_bd, update at theta) and
    FT-SAM's (adaptive and plain: gradient at the ascent point w + e, BatchNorm frozen,
    update at w) declare themselves capture-safe, so `fit` takes them through `FitStep`,
    with the fused optimizer and the learning rate as a device tensor: the same weights as
    the eager loop with `torch.optim.SGD`, to float32 rounding, over two epochs from near
    the backdoored model (so PAM's shift is not zero)."""
    ds = data.make_synthetic(120, seed=4)
    reference = copy.deepcopy(backdoored).eval()
    start = copy.deepcopy(backdoored)
    with torch.no_grad():  # a start away from the reference, so the path has a direction
        for q in start.parameters():
            q.add_(0.01 * torch.randn_like(q))
    bodies = []
    through = FitStep.step
    monkeypatch.setattr(FitStep, "step", lambda self, x, y: (bodies.append(self.body),
                                                              through(self, x, y)))
    trained = {}
    for safe in (False, True):
        model = copy.deepcopy(start)
        step = _bodies(model, reference)[name]
        trained[safe] = train.fit(model, ds, epochs=2, lr=0.05, momentum=0.9, batch_size=48,
                                  augment=False, device=CPU, seed=3, step_fn=step,
                                  capture_safe=safe, label_smoothing=0.1).state_dict()
        # three batches an epoch, each through the body on the capture-safe path
        assert bodies == ([step] * 6 if safe else [])
        bodies.clear()
    worst, moved = _compare(trained[False], trained[True], start.state_dict())
    assert worst < 1e-5 and moved > 0.01


@pytest.mark.parametrize("adaptive", [True, False])
def test_sams_ascent_in_foreach_kernels_is_the_per_weight_formula(adaptive):
    """e = rho w^2 g / || |w| g || (adaptive) or rho g / ||g||, the norm over every weight,
    zeros for a weight without a gradient."""
    from ppr_engine.defenses.sam import sam_perturbation

    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True),
              torch.randn(2, requires_grad=True)]
    for q in params[:2]:
        q.grad = torch.randn_like(q)
    scaled = [(q.abs() * q.grad if adaptive else q.grad) for q in params[:2]]
    norm = torch.sqrt(sum((s ** 2).sum() for s in scaled))
    expected = [(q.detach() ** 2 * q.grad if adaptive else q.grad) * 2.0 / norm
                for q in params[:2]] + [torch.zeros(2)]
    for got, want in zip(sam_perturbation(params, 2.0, adaptive), expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_pams_shift_and_loss_trace_without_a_graph_break(backdoored):
    """What a compiler would trace of PAM's step before backward: the shift toward the
    reference (device-side norm, no host read) and the loss at the shifted point."""
    from ppr_engine.defenses.pam import path_shift

    model = train.prepare(copy.deepcopy(backdoored), CPU).train()
    params = list(model.parameters())
    reference = [q.detach() + 0.01 for q in params]
    x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))

    def shifted_loss(a, b):
        shift = path_shift(params, reference, 0.5)
        with torch.no_grad():
            torch._foreach_add_(params, shift)
        return F.cross_entropy(model(a), b), shift

    explained = torch._dynamo.explain(shifted_loss)(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_the_inversions_capture_safe_steps_invert_as_its_eager_steps(backdoored, defender_set):
    """The inversion's pre-training, mask and generator steps with fused Adam reading its
    learning rate from a device tensor (`capture_safe`, the CUDA default, where each step
    is one graph) against `torch.optim.Adam` (the CPU default): pre-training and two rounds,
    the second pulled toward the detected class, give the same generator and round records.
    In float64: the generator maximizes a feature distance and switches to the pixel
    fall-back at a bound, so in float32 the two orders of rounding part (measured on 270
    images: 0.65 of a weight's scale after two rounds), while in float64 they agree to
    5e-9."""
    from ppr_engine.defenses import DefenseContext
    from ppr_engine.inversion import InversionParams
    from ppr_engine.inversion.inverter import Inverter

    train_part, val = data.train_val(defender_set.subset(torch.arange(160)), 0.1, seed=0)
    params = InversionParams(pretrain_epochs=1, mask_epochs=1, gen_epochs=2, gen_width=8,
                             gen_blocks=3, gen_output="residual", batch_size=32,
                             augment=False, verify=False)
    found = {}
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            for safe in (False, True):
                model = copy.deepcopy(backdoored).double()
                inverter = Inverter(model, DefenseContext(train_part, val, CPU, seed=0), params,
                                    capture_safe=safe)
                inverter.run_round(model)
                inverter.run_round(model)
                assert torch.is_tensor(inverter.opt.param_groups[0]["lr"]) is safe
                found[safe] = inverter
        finally:
            torch.set_default_dtype(torch.float32)
    eager, safe = found[False], found[True]
    assert eager.rounds == safe.rounds and eager.rounds[1].pulled_to is not None
    worst, _ = _compare(eager.gen.state_dict(), safe.gen.state_dict(), eager.gen.state_dict())
    assert worst < 1e-7


@pytest.mark.parametrize("pull", [None, 3])
def test_the_inversions_step_losses_trace_without_a_graph_break(backdoored, pull):
    """What a compiler would trace of the inversion's pre-training, mask and generator steps
    before backward (the feature tap standing on the model, the bounds chosen on the device, the
    round's sums added on the device) is one graph each, from the second step on (the first
    registers the tap)."""
    from torch import nn

    from ppr_engine.inversion import InversionParams
    from ppr_engine.inversion.features import MaskLogits, mask_loss, tap
    from ppr_engine.inversion.generator import UNet, pretraining_loss
    from ppr_engine.inversion.inverter import GeneratorLoss, RoundSums
    from ppr_engine.models import frozen_copy

    net = frozen_copy(backdoored, train_mode=True)
    tap(net)  # standing before the first step, as `learn_feature_mask` leaves it
    x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    mask = MaskLogits(torch.randn(128, 4, 4))
    masked = torch._dynamo.explain(mask_loss)(nn.ModuleDict({"mask": mask, "net": net}), x, y)
    assert masked.graph_break_count == 0 and masked.graph_count == 1, masked.break_reasons
    gen = UNet(net.input_mean, net.input_std, width=8, blocks=3, output="residual")
    loss = GeneratorLoss(InversionParams(), mask().detach(), net.input_std, False, pull)
    parts = nn.ModuleDict({"gen": gen, "net": net.eval(), "sums": RoundSums(CPU)})
    generated = torch._dynamo.explain(loss)(parts, x, y)
    assert generated.graph_break_count == 0 and generated.graph_count == 1, \
        generated.break_reasons
    pretrained = torch._dynamo.explain(pretraining_loss)(
        nn.ModuleDict({"gen": gen, "net": net}), x, y)
    assert pretrained.graph_break_count == 0 and pretrained.graph_count == 1, \
        pretrained.break_reasons


def test_bti_dbfs_unlearning_step_through_the_capture_safe_path_trains_as_its_eager_step(
        backdoored, defender_set, monkeypatch):
    """BTI-DBF(U)'s unlearning step mixes G(x) into the clean batch inside the step (so the
    clean batch its feature term reads is the step's own input, which a graph holds) and is
    taken through `FitStep` with fused Adam: the same weights as `torch.optim.Adam` in the
    eager loop. In float64, for Adam's sake (see the Adam case above)."""
    from ppr_engine.defenses import DefenseContext
    from ppr_engine.defenses.bti import UnlearningStep
    from ppr_engine.inversion import InversionParams
    from ppr_engine.inversion.features import tap
    from ppr_engine.inversion.inverter import Inverter

    ds = data.make_synthetic(120, seed=4)
    bodies = []
    through = FitStep.step
    monkeypatch.setattr(FitStep, "step", lambda self, x, y: (bodies.append(self.body),
                                                              through(self, x, y)))
    trained = {}
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            start = copy.deepcopy(backdoored).double()
            train_part, val = data.train_val(defender_set.subset(torch.arange(100)), 0.1,
                                             seed=0)
            inverter = Inverter(start, DefenseContext(train_part, val, CPU, seed=0),
                                InversionParams(pretrain_epochs=0, gen_width=8, gen_blocks=3,
                                                gen_output="residual", verify=False))
            for safe in (False, True):
                model = copy.deepcopy(start)
                step = UnlearningStep(inverter, 0.2, 1.0, CPU)
                trained[safe] = train.fit(
                    model, ds, epochs=2, lr=1e-3, optimizer="adam", weight_decay=0.0,
                    schedule="constant", batch_size=48, augment=False, device=CPU, seed=3,
                    step_fn=step, capture_safe=safe).state_dict()
                assert bodies == ([step] * 6 if safe else [])
                bodies.clear()
        finally:
            torch.set_default_dtype(torch.float32)
    worst, moved = _compare(trained[False], trained[True], start.state_dict())
    assert worst < 1e-8 and moved > 1e-3
    net = train.prepare(copy.deepcopy(backdoored), CPU).train()
    tap(net)  # standing, as after the round's first step
    x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    explained = torch._dynamo.explain(UnlearningStep(inverter, 0.2, 1.0, CPU).loss)(
        net, x.flip(0), torch.randint(0, 10, (8,)), x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, \
        explained.break_reasons
