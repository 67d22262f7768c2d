"""PAM and BTI-DBF as deployed: the trigger is found by inversion, never handed to them;
targets other than 0, attacks other than BadNets."""

from __future__ import annotations

import copy

import pytest
import torch

from ppr_engine import audit, data
from ppr_engine.checkpoint import save_model
from ppr_engine.defenses import DefenseContext
from ppr_engine.demo import DEMO_ATTACKER, DEMO_CLEAN, DEMO_INVERSION, DEMO_TEST, demo_spec
from ppr_engine.inversion import Detection, InversionParams, Scan, ScanResult, invert
from ppr_engine.spec import validate_spec

from .test_attacks import IMPLANT, IMPLANT_TARGET


def test_pam_with_inverted_data_removes_blended_target_3_and_holds_under_ra(tmp_path,
                                                                            implanted):
    """The demo's EP and PAM settings on a Blended model with target 3: PAM finds the
    target itself (confident and verified) and removes the backdoor (O-ASR <= 0.2) within
    0.1 of the model's C-Acc. With the authors' generator (issue 23) it is no longer robust
    here: measured O-C-Acc 0.927 against the model's 0.982 (a drop of 0.055, over the 0.05
    of `degraded`) and a max gap of 0.27 at 50 poisoned images; three rounds closed the gap
    (0.014) at a drop of 0.064 (docs/RESULTS.md). The verdict is asserted to be what those
    numbers imply, not `robust`."""
    model, _ = implanted("blended", 3)
    ckpt = tmp_path / "blended3.safetensors"
    save_model(model, ckpt)
    methods = [m.model_dump() for m in demo_spec(quick=True).plan.methods
               if m.name in ("ep", "pam")]
    spec = validate_spec({
        "model": {"arch": "small_cnn"},
        "data": {"clean": DEMO_CLEAN, "test": DEMO_TEST, "attacker": DEMO_ATTACKER},
        "triggers": [{"attack": "blended", "target": 3}],
        "plan": {"methods": methods, "retune": {"poison_num": 20, "clean_num": 980,
                                                 "epochs": 5, "sweep": [[10, 5], [50, 5]]},
                 "qra": {"enabled": False}, "lmc": {"enabled": False}}})
    report = audit.run(spec, ckpt).report
    pam = report.method("pam")
    assert report.model.asr["blended->3"] >= 0.9
    det = pam.record["detection"]
    assert det["target"] == 3 and det["confident"] and det["verified"], det
    assert det["audit_targets"] == [3]  # the report can say whether the inversion was right
    assert pam.o_asr <= 0.2, pam.o_asr
    assert pam.o_cacc >= report.model.c_acc - 0.10, (pam.o_cacc, report.model.c_acc)
    assert pam.max_gap is not None
    expected = ("degraded" if pam.acc_drop > 0.05 else "superficial" if pam.max_gap > 0.2
                else "robust")
    assert pam.verdict == expected, (pam.verdict, pam.acc_drop, pam.max_gap)


@pytest.fixture(scope="module")
def demo_defender(device):
    """The demo's defender (1,000 images, 10% held out) with the process's inversion cache,
    as an audit on the demo's data has it: the tests below and the audits above that invert
    the same model share that work."""
    from ppr_engine.inversion.context import SharedCache

    train, val = data.train_val(data.load(DEMO_CLEAN), 0.1, seed=0)
    return DefenseContext(train, val, device, seed=0, cache=SharedCache(train, val, device))


def test_bti_dbf_detects_a_badnets_target_7(implanted, demo_defender):
    """Detection for another target than the demo's 3 and the Blended test's 3, confirmed by
    the smallest-trigger scan."""
    model, _ = implanted("badnets", 7)
    ctx = demo_defender
    inverter = invert(copy.deepcopy(model), ctx, InversionParams(**DEMO_INVERSION))
    det = inverter.detection
    assert det.target == 7 and det.confident and det.verified, det.record()
    assert [r.smallest for r in det.scan.flags(7)] == [7]
    assert inverter.record()["detection"]["scan"]["anomalous"]
    # a generator that finds the trigger alternates between moving the backdoor features
    # and being pulled back by the bounds; one whose pixel bound no image can meet spends
    # every step in the fall-back
    (held,) = inverter.rounds
    assert 0 < held.held_back < 0.95 and held.feature_scale > 0
    pinned = invert(copy.deepcopy(model), ctx, InversionParams(**{
        **DEMO_INVERSION, "pretrain_epochs": 0, "mask_epochs": 1, "gen_epochs": 1,
        "norm_bound": 1e-12, "verify": False}))
    assert [(r.held_back, r.held_back_pixel) for r in pinned.rounds] == [(1.0, 1.0)]
    assert pinned.detection.verified is None and pinned.detection.scan is None


@pytest.mark.parametrize("attack,target", [("badnets", 7), ("blended", 3), ("blended", 7)])
def test_pam_at_its_defaults_purifies_other_attacks_and_targets(attack, target, implanted,
                                                                 demo_defender):
    """PAM with its default inversion (no pull after the first round), at the demo's
    budget, finds the target and purifies BadNets and Blended models with targets other
    than the demo's: ASR at most 0.2, clean accuracy within 0.05 of the model's. (BadNets
    -> 3 is the demo's own audit; Blended -> 3 is also audited under RA above.)"""
    from ppr_engine.attacks import triggered_test
    from ppr_engine.defenses import purify
    from ppr_engine.metrics import attack_success_rate, clean_accuracy

    model, trig = implanted(attack, target)
    pam = next(m for m in demo_spec(quick=True).plan.methods if m.name == "pam")
    out = purify("pam", model, demo_defender, pam.params())
    assert out.record["inversion_settings"]["pull"] == "never"
    assert out.record["detection"]["target"] == target, out.record["detection"]
    test = data.load(DEMO_TEST)
    acc0, acc = clean_accuracy(model, test), clean_accuracy(out.model, test)
    asr = attack_success_rate(out.model, triggered_test(test, trig), target)
    assert asr <= 0.2 and acc >= acc0 - 0.05, (asr, acc0, acc)


@pytest.mark.parametrize("attack,target", [(a, IMPLANT_TARGET[a]) for a in ("sig", "wanet")])
def test_bti_dbf_is_never_confidently_wrong_on_sig_and_wanet(attack, target, implanted,
                                                             device):
    """SIG and WaNet at this scale: the generator sends most images to a class that a
    universal adversarial perturbation reaches, often 'confidently' by its own share (the
    detection bench, docs/RESULTS.md). The verified detection either names the target or
    says it is not confident, and why. Defender's seed 1, unlike the bench's runs."""
    model, _ = implanted(attack, target, noise=0.8, epochs=10, **IMPLANT[attack])
    train, val = data.train_val(data.make_synthetic(1000, seed=2, noise=0.8), 0.1, seed=1)
    det = invert(copy.deepcopy(model), DefenseContext(train, val, device, seed=1),
                 InversionParams(**DEMO_INVERSION)).detection
    record = det.record()
    assert det.target == target or not det.confident, record
    assert record["scan"] is not None and f"class {det.target}" in record["reason"], record
    if not det.confident:  # and the record says which test said no
        assert any(w in record["reason"] for w in ("below the", "universal", "disagree")), record


def test_detection_confidence_is_the_share_of_other_classes_sent_to_the_target(implanted,
                                                                              device):
    """A generator that pastes the real trigger sends every other image to the target: full
    confidence; the identity sends none there: no confidence."""
    from ppr_engine.inversion import detect_target

    model, trig = implanted("badnets", 3)
    clean = data.make_synthetic(300, seed=2)

    class Paste(torch.nn.Module):
        def forward(self, x):
            return trig.apply(x)

    # the model was trained without crop and flip: the detection looks at its images as
    # they are (the inversion's `augment`, off for these models)
    det = detect_target(model, Paste(), clean, device, 0, min_confidence=0.5, augment=False)
    assert det.target == 3 and det.confidence >= 0.95 and det.confident
    idle = detect_target(model, torch.nn.Identity(), clean, device, 0, min_confidence=0.5,
                         augment=False)
    assert idle.confidence <= 0.2 and not idle.confident


def _scan(smallest: int, ratio: float) -> Scan:
    return Scan([ScanResult("patch", [1.0] * 10, [0.0] * 10, [True] * 10, smallest, ratio,
                            [0.0] * 10, max_ratio=0.5)])


@pytest.mark.parametrize("share,scan,confident,says", [
    (0.9, (7, 0.3), True, "at or below 0.50"),  # the scan agrees
    (0.9, (7, 0.8), False, "universal adversarial perturbation"),  # no anomalous class
    (0.9, (2, 0.3), False, "disagree"),  # an anomalous class, but another one
    (0.3, (7, 0.3), False, "below the 50%"),  # the generator reached too few images
])
def test_the_detection_rule_needs_the_generator_and_the_scan(share, scan, confident, says):
    """The rule of bti.Detection, case by case, for a generator that went to class 7."""
    det = Detection(7, share, 0.1, 0.5, [0.1] * 10, scan=_scan(*scan))
    record = det.record()
    assert det.confident == confident == record["confident"]
    assert says in record["reason"] and "class 7" in record["reason"], record["reason"]
    assert det.tests_disagree == (says == "disagree")
    unchecked = Detection(7, share, 0.1, 0.5)  # verify: false, the authors' rule
    assert unchecked.confident == (share >= 0.5) and unchecked.verified is None


def test_the_generator_is_the_same_in_train_and_eval_mode():
    """The authors' UNet normalizes with InstanceNorm (no running statistics): the generator
    used for detection and unlearning (eval mode) is the one that was optimised (train
    mode), which a BatchNorm generator is not."""
    from ppr_engine.inversion.generator import UNet

    torch.manual_seed(0)
    gen = UNet(torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26]), 8, 3)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        trained = gen.train()(x)
        used = gen.eval()(x)
    assert torch.equal(trained, used)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gen.modules())
    # the output is linear in the model's normalized space: no clamp to [0, 1]
    with torch.no_grad():
        gen.out.bias.fill_(50.0)
    assert float(gen(x).max()) > 1.0


@pytest.mark.parametrize("arch,absolute", [("resnet18_cifar", True), ("small_cnn", False)])
def test_the_feature_bound_is_in_the_authors_units_on_the_cifar_resnet18(arch, absolute,
                                                                        device):
    """The authors' bound is an absolute 3 on the mean squared layer-4 difference of their
    CIFAR ResNet-18; this project's CIFAR ResNet-18s have the same layer and normalization,
    so the bound applies as it is there, and relative to E[phi^2] on other networks."""
    from ppr_engine import models

    assert InversionParams().bound_is_absolute("preact_resnet18")  # BackdoorBench's, too
    torch.manual_seed(0)
    model = models.create(arch, 10).to(device).eval()
    train, val = data.train_val(data.make_synthetic(40, seed=2), 0.1, seed=0)
    tiny = {"pretrain_epochs": 0, "mask_epochs": 1, "gen_epochs": 1, "gen_width": 4,
            "gen_blocks": 2, "batch_size": 32, "augment": False, "verify": False}
    inverter = invert(model, DefenseContext(train, val, device, seed=0), InversionParams(**tiny))
    (r,) = inverter.rounds
    assert inverter.record()["feature_bound_units"] == ("absolute" if absolute else "relative")
    if absolute:
        assert r.feature_bound == pytest.approx(3.0)
    else:
        assert r.feature_bound == pytest.approx(3.0 * r.feature_scale, rel=1e-4)
    forced = invert(model, DefenseContext(train, val, device, seed=0),
                    InversionParams(**tiny, feat_bound_units="relative"))
    assert forced.rounds[0].feature_bound == pytest.approx(3.0 * forced.rounds[0].feature_scale,
                                                           rel=1e-4)


def test_one_pass_decoupling_equals_two_masked_passes(backdoored):
    """The mask step computes the body once and doubles the batch after the last stage;
    in eval mode that gives exactly the two masked passes' logits."""
    from ppr_engine.inversion.features import decoupled_logits, stage_features

    model = copy.deepcopy(backdoored).eval()
    x = torch.rand(8, 3, 32, 32)
    mask = torch.rand(stage_features(model, x[:1])[1].shape[1:])
    with torch.no_grad():
        benign, backdoor = decoupled_logits(model, x, mask)
        assert torch.allclose(benign, stage_features(model, x, mask)[0], atol=1e-5)
        assert torch.allclose(backdoor, stage_features(model, x, 1 - mask)[0], atol=1e-5)


def test_the_inversion_needs_nothing_from_the_defenses_or_the_attacks():
    """`ppr_engine.attacks` imports nothing from `ppr_engine.defenses` (the inverted trigger
    uses the inversion package), and the inversion imports neither."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "ppr_engine"

    def imports(pkg: str) -> set[str]:
        found = set()
        for f in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found.add("." * node.level + node.module)
        return found

    assert not [m for m in imports("attacks") if "defenses" in m]
    assert not [m for m in imports("inversion") if "defenses" in m or "attacks" in m]


def test_a_cached_pre_training_leaves_the_callers_random_streams_as_a_fresh_one(backdoored,
                                                                               defender_set):
    """BTI-DBF and PAM share the pre-trained generator of one audit: whether it is trained or
    taken from the cache, the global stream and the caller's loader are where they were, so
    PAM's result does not depend on whether BTI-DBF ran first in the same process."""
    from ppr_engine.data import DeviceLoader
    from ppr_engine.inversion import InversionContext
    from ppr_engine.inversion.generator import pretrained_generator

    kw = {"width": 4, "blocks": 2, "output": "residual", "epochs": 1, "lr": 1e-3}
    images = defender_set.subset(torch.arange(64))
    after = []
    for warm in (False, True):
        ctx = InversionContext(images, images, torch.device("cpu"), seed=0)
        loader = DeviceLoader(images, 32, shuffle=True, seed=5)
        if warm:  # another method pre-trained it first
            pretrained_generator(backdoored, ctx, DeviceLoader(images, 32, seed=9), **kw)
        torch.manual_seed(1)
        gen = pretrained_generator(backdoored, ctx, loader, **kw)
        after.append((torch.get_rng_state(), loader.generator.get_state(),
                      [q.detach().clone() for q in gen.parameters()]))
    (rng_a, load_a, gen_a), (rng_b, load_b, gen_b) = after
    assert torch.equal(rng_a, rng_b) and torch.equal(load_a, load_b)
    assert all(torch.equal(a, b) for a, b in zip(gen_a, gen_b, strict=True))
    assert torch.equal(rng_a, torch.manual_seed(1).get_state())  # nothing drawn from it


def test_the_first_round_is_inverted_once_per_audit_and_a_hit_equals_a_miss(backdoored,
                                                                            defender_set):
    """BTI-DBF, PAM and the `inverted` trigger all invert the submitted model first: the
    second inverter of one audit takes that round from the cache, and its second round (on
    a changed model) is the one it would have run had it done the first round itself."""
    from ppr_engine.inversion import InversionContext, Inverter

    images = defender_set.subset(torch.arange(96))
    tiny = InversionParams(pretrain_epochs=1, mask_epochs=1, gen_epochs=1, gen_width=4,
                           gen_blocks=2, gen_output="residual", batch_size=32, augment=False,
                           verify=False)
    changed = copy.deepcopy(backdoored)
    with torch.no_grad():
        changed.linear.bias.add_(0.5)

    def two_rounds(ctx, messages):
        inverter = Inverter(backdoored, ctx, tiny)
        inverter.run_round(backdoored, lambda m, f: messages.append(m))
        inverter.run_round(changed)
        return inverter

    shared = InversionContext(images, images, torch.device("cpu"), seed=0)
    first, cold, warm = [], [], []
    two_rounds(shared, first)
    torch.manual_seed(3)
    again = two_rounds(shared, warm)
    rng_warm = torch.get_rng_state()
    torch.manual_seed(3)
    alone = two_rounds(InversionContext(images, images, torch.device("cpu"), seed=0), cold)
    assert warm == ["inversion round 1: the audit's earlier inversion of this model"]
    assert any("generator epoch" in m for m in cold)
    assert torch.equal(rng_warm, torch.get_rng_state())
    for a, b in zip(again.gen.parameters(), alone.gen.parameters(), strict=True):
        assert torch.equal(a, b)
    assert again.record() == alone.record()
    assert again.detection is not shared.cache[next(k for k in shared.cache
                                                   if k[0] == "first round")]["detection"]


def test_the_inversions_tf32_flags_are_its_own_and_restored():
    """The inversion allows TF32 for its own fp32 work on CUDA and gives the process its
    flags back, so a stage run after it (or beside it) computes as it would alone."""
    from ppr_engine.scoped import tf32_matmuls

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with tf32_matmuls(torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError), tf32_matmuls(torch.device("cuda")):
            raise RuntimeError("a failed round")
        assert not torch.backends.cuda.matmul.allow_tf32  # restored on an error too
        with tf32_matmuls(torch.device("cpu")):  # nothing to change off CUDA
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_process_cache_is_scoped_by_the_defenders_data_and_bounded(defender_set):
    """Audits in one process share inversion work only when the defender's data and the
    device are the same (the keys name the model and settings, the scope the rest); the
    oldest entries go first once the bound is reached."""
    from ppr_engine.inversion.context import SharedCache

    a, b = defender_set.subset(torch.arange(50)), defender_set.subset(torch.arange(50, 100))
    cpu = torch.device("cpu")
    SharedCache.clear()
    first, again, other = SharedCache(a, b, cpu), SharedCache(a, b, cpu), SharedCache(b, a, cpu)
    first["generator"] = "G"
    assert "generator" in again and again["generator"] == "G" and list(again) == ["generator"]
    assert "generator" not in other and len(other) == 0
    for i in range(SharedCache.MAX_ENTRIES):
        other[i] = i
    assert "generator" not in first  # evicted: the least recently used
    assert len(other) == SharedCache.MAX_ENTRIES
    SharedCache.clear()
    assert len(other) == 0
