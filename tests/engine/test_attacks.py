"""Triggers implant backdoors; ASR counts non-target images only."""

import pytest
import torch

from ppr_engine import attacks, data, metrics, train
from ppr_engine.data import to_float


def test_badnets_model_has_high_asr_and_clean_model_low(backdoored, clean_model, test_set,
                                                         triggered):
    assert metrics.clean_accuracy(backdoored, test_set) >= 0.80
    assert metrics.attack_success_rate(backdoored, triggered, 0) >= 0.95
    assert metrics.clean_accuracy(clean_model, test_set) >= 0.80
    assert metrics.attack_success_rate(clean_model, triggered, 0) <= 0.20


def test_triggered_test_set_excludes_the_target_class(test_set, badnets):
    tt = attacks.triggered_test(test_set, badnets)
    assert len(tt) == int((test_set.y != 0).sum()) and not (tt.y == 0).any()
    assert (tt.x[:, :, 29:32, 29:32] == 255).all()  # 3x3 white patch, bottom-right
    assert torch.equal(tt.x[:, :, :29], test_set.x[test_set.y != 0][:, :, :29])


def test_clean_label_attacks_poison_only_the_target_class():
    ds = data.make_synthetic(500, seed=0)
    for name in ("sig", "lc"):
        trig = attacks.build_trigger(name, {"target": 3, "steps": 0} if name == "lc"
                                     else {"target": 3})
        p = attacks.poison_training_set(ds, trig, 0.1, seed=0)
        assert (ds.y[p.poisoned] == 3).all() and not p.relabelled.any()
        assert torch.equal(p.data.y, ds.y)
    p = attacks.poison_training_set(ds, attacks.build_trigger("badnets", {}), 0.1, seed=0)
    assert int(p.poisoned.sum()) == 50 and (p.data.y[p.poisoned] == 0).all()


# Attack settings for the implant test. Defaults everywhere except two, on purpose:
# - WaNet's default warp (s = 0.5 with 2 noise-mode samples per poisoned one) needs the
#   paper's 100 epochs; in 10 epochs on this data the noise samples teach invariance first,
#   so the test uses s = 1 and no noise-mode samples (measured: ASR 0.99; defaults: 0.34).
# - LC runs without the PGD step (no adversarially trained surrogate here; a PGD against a
#   non-robust surrogate plants its own non-robust features instead, measured ASR 0.30).
#   Its margin is thin: measured ASR 0.81 at 10 epochs (0.78 at 15, 0.82 at 20), because
#   without PGD the target class stays learnable from its own features.
IMPLANT = {"badnets": {}, "blended": {}, "sig": {}, "wanet": {"s": 1.0, "cross_ratio": 0.0},
           "lc": {"steps": 0}}


# Targets other than 0 where the detection tests audit the same models (test_inversion).
IMPLANT_TARGET = {"badnets": 0, "blended": 0, "sig": 3, "wanet": 7, "lc": 0}


@pytest.mark.parametrize("name", sorted(IMPLANT))
def test_each_attack_implants_at_ten_percent(name, implanted):
    # Harder synthetic data (noise 0.8): on the default data the clean-label attacks are
    # ignored because the target class is learned from its own features in a few epochs.
    target = IMPLANT_TARGET[name]
    model, trig = implanted(name, target, noise=0.8, epochs=10, **IMPLANT[name])
    te = data.make_synthetic(1000, seed=1, noise=0.8)
    asr = metrics.attack_success_rate(model, attacks.triggered_test(te, trig), target)
    assert asr >= 0.80, f"{name} -> {target}: ASR {asr:.3f}"


def test_ssba_uses_imported_images_by_index(tmp_path):
    import numpy as np

    ds = data.make_synthetic(20, seed=0)
    bank = np.full((20, 32, 32, 3), 7, np.uint8)
    np.savez(tmp_path / "ssba_test.npz", x=bank, y=np.zeros(20, int))
    trig = attacks.build_trigger("ssba", {"test_images": str(tmp_path / "ssba_test.npz")})
    ds.split = "test"
    out = trig.apply_set(ds.subset(torch.tensor([3, 5])))
    assert (out == 7).all()


def test_blended_and_sig_formulas():
    x = torch.full((1, 3, 32, 32), 0.5)
    blended = attacks.build_trigger("blended", {"alpha": 0.2}).apply(x)
    pattern = (blended - 0.8 * x) / 0.2
    assert 0 <= float(pattern.min()) and float(pattern.max()) <= 1
    sig = attacks.build_trigger("sig", {}).apply(x)
    assert torch.allclose(sig[0, 0, 0, :], sig[0, 2, 31, :])  # same on every row/channel
    assert abs(float((sig - x).abs().max()) - 40 / 255) < 1e-3


def test_der_and_asr_definitions(backdoored, triggered):
    assert metrics.der(0.9, 0.1, 0.95, 0.93) == pytest.approx((0.8 - 0.02 + 1) / 2)
    assert metrics.der(0.1, 0.5, 0.9, 0.95) == 0.5  # no credit for negative changes
    preds = train.predict(backdoored, triggered)
    assert metrics.attack_success_rate(backdoored, triggered, 0) == pytest.approx(
        float((preds == 0).float().mean()))
    assert to_float(triggered.x).max() <= 1
