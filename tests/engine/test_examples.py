"""Triggers given by example and BackdoorBench results: the audit with poisoned images in
place of a trigger function agrees with the parametric one; the examples that measure ASR
are never the ones RA and the unlearning use; a BackdoorBench-shaped result file is
imported and audited, and one carrying a pickle payload is refused before it runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ppr_engine import attacks, audit, data
from ppr_engine.checkpoint import read_state_dict
from ppr_engine.cli import app
from ppr_engine.defenses.base import replace_share, triggers_fn
from ppr_engine.demo import DEMO_ATTACKER, DEMO_CLEAN, DEMO_TEST, DEMO_TRAIN
from ppr_engine.errors import DatasetError, SpecError
from ppr_engine.ppr.retune import build_retune_set
from ppr_engine.report import to_markdown
from ppr_engine.spec import load_spec, validate_spec

TARGET = 3  # the demo model's target


def save_npz(path: Path, ds: data.ImageSet) -> str:
    np.savez(path, x=ds.x.permute(0, 2, 3, 1).numpy(), y=ds.y.numpy())
    return f"npz:{path}"


def badnets_examples(ref: str) -> data.ImageSet:
    """Images of `ref` with the BadNets patch, labelled with their true classes."""
    src = data.load(ref)
    return src.with_images(attacks.build_trigger("badnets", {"target": TARGET}).apply_set(src))


def bound(params: dict) -> attacks.Trigger:
    trig = attacks.build_trigger("examples", {"target": TARGET, **params})
    trig.bind(data.load)
    return trig


def test_examples_split_so_that_no_image_both_measures_and_attacks(tmp_path):
    ex = badnets_examples("synthetic:?n=300&seed=5")
    doubled = data.ImageSet.concat(ex, ex.subset(torch.arange(100)))  # 100 repeated images
    trig = bound({"data": save_npz(tmp_path / "ex.npz", doubled), "holdout": 0.4})
    assert len(trig.measured) + len(trig.attacking) == 300  # repeats kept once
    assert len(trig.measured.shared_with(trig.attacking)) == 0
    test = trig.triggered_test(data.load(DEMO_TEST))
    assert len(test) == int((trig.measured.y != TARGET).sum())  # target class never counts
    with pytest.raises(SpecError, match="no trigger function"):
        trig.apply(torch.rand(1, 3, 32, 32))
    # given apart, the two sets must not share an image
    half = save_npz(tmp_path / "half.npz", ex.subset(torch.arange(150)))
    with pytest.raises(SpecError, match="150 images appear in both data and train_data"):
        bound({"data": save_npz(tmp_path / "all.npz", ex), "train_data": half})
    only_target = ex.subset(torch.nonzero(ex.y == TARGET).flatten())
    with pytest.raises(SpecError, match="every held-out example is of the target class 3"):
        bound({"data": save_npz(tmp_path / "t.npz", only_target)})


def test_ra_qra_and_ep_draw_from_the_attackers_examples(tmp_path):
    ex = badnets_examples("synthetic:?n=400&seed=5")
    trig = bound({"data": save_npz(tmp_path / "ex.npz", ex)})
    pool = data.load(DEMO_ATTACKER)
    rs = build_retune_set(pool, trig, 20, 80, seed=1)
    poisoned = rs.data.subset(torch.nonzero(rs.poisoned).flatten())
    assert len(poisoned) == 20 and (poisoned.y == TARGET).all()
    assert len(poisoned.shared_with(trig.attacking)) == 20
    assert len(poisoned.shared_with(trig.measured)) == 0
    assert (rs.source_index[rs.poisoned] == -1).all()  # not from the pool
    larger = build_retune_set(pool, trig, 50, 50, seed=1)  # budgets nest, as for a trigger
    assert len(poisoned.shared_with(larger.data)) == 20
    qra, _ = trig.draw_triggered(pool, torch.arange(len(pool)), 30, clean_label_rule=False)
    assert (qra.y != TARGET).all()  # QRA keeps true, non-target labels
    with pytest.raises(SpecError, match="500 poisoned images are asked for"):
        build_retune_set(pool, trig, 500, 10, seed=1)
    # EP/PAM's oracle share: the attacker's examples under their true labels
    x, y = torch.rand(10, 3, 32, 32), torch.full((10,), 9)
    new_x, new_y = replace_share(triggers_fn([trig]), 0.5)(x, y, torch.arange(10))
    assert torch.equal(new_x[5:], x[5:]) and (new_y[5:] == 9).all()
    replaced = data.ImageSet((new_x[:5] * 255).round().to(torch.uint8), new_y[:5], 10)
    assert len(replaced.shared_with(trig.attacking)) == 5


def build_backdoorbench_result(folder: Path, checkpoint: Path) -> Path:
    """An `attack_result.pt` laid out as BackdoorBench v2 saves one: the poisoned test
    samples as PIL images in the pickle, the poisoned training samples as PNG files on
    disk under a path recorded on another machine, NumPy indices and scalar keys."""
    record = folder / "record" / "badnet_demo"
    trig = attacks.build_trigger("badnets", {"target": TARGET})
    test = data.load(DEMO_TEST)
    nontarget = torch.nonzero(test.y != TARGET).flatten()
    test_x = trig.apply_set(test.subset(nontarget)).permute(0, 2, 3, 1).numpy()
    test_dict = {np.int64(i): (Image.fromarray(test_x[k]), TARGET, int(test.y[i]))
                 for k, i in enumerate(nontarget.tolist())}
    train = data.load(DEMO_TRAIN)
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:300]
    train_x = trig.apply_set(train.subset(chosen)).permute(0, 2, 3, 1).numpy()
    train_dict = {}
    for k, i in enumerate(chosen.tolist()):
        label = int(train.y[i])
        (record / "bd_train_dataset" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(train_x[k]).save(record / "bd_train_dataset" / str(label) / f"{i}.png")
        train_dict[np.int64(i)] = {"path": f"/home/someone/BackdoorBench/record/badnet_demo/"
                                           f"bd_train_dataset/{label}/{i}.png",
                                   "other_info": [TARGET, label]}
    indicator = np.zeros(len(train))
    indicator[chosen.numpy()] = 1

    def state(items: dict, saved: str | None, index: np.ndarray) -> dict:
        return {"bd_data_container": {"save_folder_path": saved, "data_dict": items,
                                      "save_file_format": ".png"},
                "getitem_all": True, "getitem_all_switch": False,
                "original_index_array": index, "poison_indicator": indicator,
                "save_folder_path": saved}

    torch.save({"model_name": "small_cnn", "num_classes": 10,
                "model": read_state_dict(checkpoint), "data_path": "./data/synthetic",
                "img_size": [32, 32, 3], "clean_data": "synthetic",
                "bd_train": state(train_dict, "./record/badnet_demo/bd_train_dataset",
                                  chosen.numpy()),
                "bd_test": state(test_dict, None, nontarget.numpy())},
               record / "attack_result.pt")
    return record


def test_a_backdoorbench_result_is_imported_and_audited(demo_checkpoint, tmp_path):
    record = build_backdoorbench_result(tmp_path / "bb", demo_checkpoint)
    out = tmp_path / "imported"
    res = CliRunner().invoke(app, ["import-backdoorbench", str(record), "--out", str(out),
                                   "--clean", DEMO_CLEAN, "--test", DEMO_TEST, "--json"])
    assert res.exit_code == 0, res.output
    # BackdoorBench trains torchvision's resnet18 on 32-pixel CIFAR; ours takes 224 pixels
    wrong = CliRunner().invoke(app, ["import-backdoorbench", str(record), "--out",
                                     str(tmp_path / "no"), "--arch", "resnet18"])
    assert wrong.exit_code == 2 and "trained on 32-pixel images" in wrong.output
    assert not (tmp_path / "no").exists()
    refused = CliRunner().invoke(app, ["import-backdoorbench", str(record), "--out",
                                       str(tmp_path / "no"), "--clean", DEMO_CLEAN, "--test",
                                       DEMO_TEST, "--methods", "ft,magic"])
    assert refused.exit_code == 2 and "unknown purification method 'magic'" in refused.output
    assert not (tmp_path / "no").exists()  # the spec is checked before anything is written
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "audit.yaml", "import.json",
                                               "bd_test.tar.gz", "bd_train.tar.gz"}
    weights, ours = read_state_dict(out / "model.safetensors"), read_state_dict(demo_checkpoint)
    assert all(torch.equal(weights[k], ours[k]) for k in ours)
    raw = load_spec(out / "audit.yaml").model_dump(mode="json")
    assert raw["triggers"][0]["attack"] == "examples" and raw["triggers"][0]["target"] == TARGET
    raw["plan"] = {"methods": [{"name": "ep", "epochs": 2, "augment": False}],
                   "retune": {"enabled": False}, "qra": {"enabled": False},
                   "lmc": {"enabled": False}}
    report = audit.run(validate_spec(raw), out / "model.safetensors").report
    assert report.model.asr["examples->3"] >= 0.9  # measured on BackdoorBench's bd_test
    prov = report.provenance.data["trigger examples->3"]
    assert (prov["measured"], prov["attacking"]) == (900, 300)
    assert "given by example: 900 held-out images measure ASR, 300 others" in to_markdown(
        report)
    # the data reference reads the result directly, true labels and source indices kept
    part = data.load(f"backdoorbench:{record}?part=bd_train")
    assert len(part) == 300 and (part.y != TARGET).any()
    assert sorted(part.index.tolist()) == sorted(
        int(i) for i in load_json(out / "import.json")["poisoned_train_indices"])


def load_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_result_file_carrying_a_pickle_payload_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"model_name": "small_cnn", "num_classes": 10, "model": {},
                "bd_test": _Payload(marker)}, folder / "attack_result.pt")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["import-backdoorbench", str(folder), "--out", str(out),
                                   "--clean", DEMO_CLEAN, "--test", DEMO_TEST])
    assert res.exit_code == 2
    assert "refused, it holds pickled objects other than tensors" in res.output
    assert "system" in res.output and "Traceback" not in res.output
    assert not marker.exists() and not out.exists()
    with pytest.raises(DatasetError, match="refused"):
        data.load(f"backdoorbench:{folder}")


def test_recorded_image_paths_cannot_leave_the_result_folder(tmp_path, demo_checkpoint):
    from ppr_engine.data.backdoorbench import _png

    (tmp_path / "secret.png").write_bytes(b"not yours")
    inside = tmp_path / "result"
    inside.mkdir()
    with pytest.raises(DatasetError, match="climbs out"):
        _png(inside, "../secret.png", "bd_train[1]")
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DatasetError, match="symbolic link"):
        _png(inside, "/elsewhere/link.png", "bd_train[1]")
    with pytest.raises(DatasetError, match="is not inside"):
        _png(inside, "/elsewhere/missing.png", "bd_train[1]")
