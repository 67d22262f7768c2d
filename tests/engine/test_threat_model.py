"""What the audit's data must respect: the attacker's pool is disjoint from the defender's
set, a test set that shares images with either is refused, clean-label attacks retune with
target-class images, and sample-specific triggers find their images by role and index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppr_engine import attacks, audit, data
from ppr_engine.checkpoint import save_model
from ppr_engine.defenses.base import replace_share, triggers_fn
from ppr_engine.errors import SpecError
from ppr_engine.ppr.retune import build_retune_set
from ppr_engine.spec import validate_spec


def _save_npz(path, ds: data.ImageSet) -> str:
    np.savez(path, x=ds.x.permute(0, 2, 3, 1).numpy(), y=ds.y.numpy())
    return f"npz:{path}"


def _spec(clean: str, test: str, attacker: str | None = None, **plan) -> dict:
    return {"model": {"arch": "small_cnn"},
            "data": {"clean": clean, "test": test, **({"attacker": attacker} if attacker
                                                      else {})},
            "triggers": [{"attack": "badnets", "target": 3}],
            "plan": {"methods": [], "retune": {"poison_num": 5, "clean_num": 95, "epochs": 1,
                                               "sweep": []},
                     "qra": {"enabled": False}, "lmc": {"enabled": False}, **plan}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, backdoored):
    path = tmp_path_factory.mktemp("tm") / "bd.safetensors"
    save_model(backdoored, path)
    return path


def test_a_test_set_sharing_images_with_the_clean_set_is_refused(tmp_path, ckpt):
    clean = data.make_synthetic(300, seed=2)
    test = data.ImageSet.concat(data.make_synthetic(100, seed=1),
                                clean.subset(torch.tensor([4, 17, 250])))
    spec = validate_spec(_spec(_save_npz(tmp_path / "clean.npz", clean),
                               _save_npz(tmp_path / "test.npz", test)))
    with pytest.raises(SpecError, match=r"data.test shares 3 of its 103 images with "
                                        r"data.clean \(test images at positions 100, 101, 102"):
        audit.run(spec, ckpt)


def test_a_test_set_sharing_images_with_the_attacker_is_refused(ckpt):
    spec = validate_spec(_spec("synthetic:?n=300&seed=2", "synthetic:?n=200&seed=1",
                               attacker="synthetic:?n=200&seed=1"))
    with pytest.raises(SpecError, match="shares 200 of its 200 images with data.attacker"):
        audit.run(spec, ckpt)


def test_without_an_attacker_set_the_clean_reference_is_split(ckpt):
    spec = validate_spec(_spec("synthetic:?n=300&seed=2", "synthetic:?n=200&seed=1"))
    prov = audit.run(spec, ckpt).report.provenance.data
    assert prov["attacker"]["n"] == 100 and "split from data.clean" in prov["attacker"]["ref"]
    assert prov["clean"]["n"] == 200  # the defender keeps the rest
    assert prov["attacker"]["shared_with_clean"] == 0


def test_an_attacker_budget_the_clean_set_cannot_spare_is_refused(ckpt):
    spec = validate_spec(_spec("synthetic:?n=150&seed=2", "synthetic:?n=200&seed=1"))
    with pytest.raises(SpecError, match="too few to set 100 aside for the attacker"):
        audit.run(spec, ckpt)


def test_clean_label_ra_poisons_target_class_images():
    pool = data.make_synthetic(500, seed=3)
    sig = attacks.build_trigger("sig", {"target": 3})
    rs = build_retune_set(pool, sig, poison_num=10, clean_num=90, seed=1000)
    src = rs.source_index[rs.poisoned]
    assert (pool.y[src] == 3).all()  # the attack's own kind of poisoned image
    poisoned = rs.data.subset(torch.nonzero(rs.poisoned).flatten())
    assert (poisoned.y == 3).all()
    assert torch.equal(poisoned.x, sig.apply_set(pool.subset(src)))
    dirty = build_retune_set(pool, attacks.build_trigger("badnets", {"target": 3}), 10, 90,
                             seed=1000)
    assert (pool.y[dirty.source_index[dirty.poisoned]] != 3).all()


def _ssba(tmp_path, n_train: int, n_test: int) -> attacks.Trigger:
    """SSBA with imported banks: train images all 40, test images all 200 (by index)."""
    np.savez(tmp_path / "ssba_train.npz", x=np.full((n_train, 32, 32, 3), 40, np.uint8),
             y=np.zeros(n_train, int))
    np.savez(tmp_path / "ssba_test.npz", x=np.full((n_test, 32, 32, 3), 200, np.uint8),
             y=np.zeros(n_test, int))
    return attacks.build_trigger("ssba", {"target": 3,
                                          "train_images": str(tmp_path / "ssba_train.npz"),
                                          "test_images": str(tmp_path / "ssba_test.npz")})


def test_sample_specific_triggers_reach_ep_data_by_index(tmp_path):
    trig = _ssba(tmp_path, 300, 300)
    ds = data.make_synthetic(300, seed=2).subset(torch.arange(100, 200))
    loader = data.DeviceLoader(ds, 50, shuffle=True, seed=0)
    x, y, index = next(loader.indexed())
    assert index.min() >= 100  # indices into the source, not into the batch
    out, labels = replace_share(triggers_fn([trig], "train"), 0.2)(x, y, index)
    assert torch.allclose(out[:10], torch.full_like(out[:10], 40 / 255))
    assert torch.equal(out[10:], x[10:]) and torch.equal(labels, y)


def test_sample_specific_triggers_use_the_test_bank_for_test_images_whatever_the_ref(
        tmp_path, ckpt):
    trig_spec = {"attack": "ssba", "target": 3,
                 "train_images": str(_ssba(tmp_path, 300, 200).params.train_images),
                 "test_images": str(tmp_path / "ssba_test.npz")}
    test_ref = _save_npz(tmp_path / "test.npz", data.make_synthetic(200, seed=1))  # no split
    spec = _spec("synthetic:?n=300&seed=2", test_ref,
                 methods=[{"name": "ep", "epochs": 1, "augment": False}],
                 retune={"poison_num": 5, "clean_num": 95, "epochs": 1, "sweep": []})
    spec["triggers"] = [trig_spec]
    spec = validate_spec(spec)
    d = audit.load_inputs(spec, ckpt)
    # the test bank, though the npz names no split
    assert (d.triggers[0].triggered_test(d.test).x == 200).all()
    assert (d.triggers[0].apply_set(d.pool) == 40).all()  # attacker images: the train bank
    report = audit.run(spec, ckpt).report
    failed = [s.error for m in report.methods for s in m.stages if s.status == "failed"]
    assert not failed, failed
    ep = report.method("ep")
    assert ep.o_asr is not None and ep.p_asr is not None


def test_an_empty_attacker_pool_has_no_shared_images():
    """With RA and QRA off nothing is set aside for the attacker: the empty pool compares."""
    ds = data.make_synthetic(10, seed=0)
    empty = ds.subset(torch.tensor([], dtype=torch.long))
    assert len(empty.shared_with(ds)) == 0 and len(ds.shared_with(empty)) == 0
    assert len(ds.shared_with(ds)) == 10
