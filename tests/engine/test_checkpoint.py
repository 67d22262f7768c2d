"""Safe checkpoint loading: formats, containers, validation, and refusal of pickles."""

import pickle
import zipfile

import numpy as np
import pytest
import torch

from ppr_engine import checkpoint, models
from ppr_engine.errors import CheckpointError


class Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_safetensors_round_trip_with_metadata(tmp_path):
    model = models.create("small_cnn")
    sha = checkpoint.save_model(model, tmp_path / "m.safetensors", note="x")
    assert sha == checkpoint.sha256_file(tmp_path / "m.safetensors")
    meta = checkpoint.read_metadata(tmp_path / "m.safetensors")
    assert meta["arch"] == "small_cnn" and meta["num_classes"] == "10" and meta["note"] == "x"
    loaded = checkpoint.load_model(tmp_path / "m.safetensors", "small_cnn", 10)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not list(tmp_path.glob(".tmp-*"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": Payload(marker)}}, bad)  # torch zip format
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps(Payload(marker)))  # legacy raw pickle
    for path in (bad, raw):
        with pytest.raises(CheckpointError) as err:
            checkpoint.load_model(path, "small_cnn", 10)
        assert path.name in str(err.value)
        assert "Traceback" not in str(err.value)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "net", "module_prefix"])
def test_common_containers_load(tmp_path, wrap):
    state = models.create("small_cnn").state_dict()
    obj = {"bare": state, "state_dict": {"state_dict": state, "epoch": 3},
           "model": {"model": state}, "net": {"net": state},
           "module_prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
    torch.save(obj, tmp_path / "c.pt")
    loaded = checkpoint.load_model(tmp_path / "c.pt", "small_cnn", 10)
    assert torch.equal(loaded.linear.weight, state["linear.weight"])


def test_backdoorbench_result_file_with_numpy_arrays_loads(tmp_path):
    state = models.create("small_cnn").state_dict()
    result = {"model_name": "small_cnn", "num_classes": 10, "model": state,
              "bd_test": {"x": np.zeros((2, 32, 32, 3), dtype=np.uint8), "y": np.array([0, 1])}}
    torch.save(result, tmp_path / "attack_result.pt")
    loaded = checkpoint.load_model(tmp_path / "attack_result.pt", "small_cnn", 10)
    assert torch.equal(loaded.linear.bias, state["linear.bias"])


def test_wrong_architecture_lists_the_mismatched_keys(tmp_path):
    checkpoint.save_model(models.create("small_cnn", 10), tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_model(tmp_path / "s.safetensors", "small_cnn", 5)
    assert "mismatched shapes: linear.bias (10,) != (5,)" in str(err.value)
    with pytest.raises(CheckpointError, match="missing keys: .*unexpected keys: "):
        checkpoint.load_model(tmp_path / "s.safetensors", "preact_resnet18", 10)


def test_nan_weights_and_oversized_files_are_refused(tmp_path):
    model = models.create("small_cnn")
    with torch.no_grad():
        model.linear.weight[0, 0] = float("nan")
    checkpoint.save_model(model, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="NaN or Inf .*linear.weight"):
        checkpoint.load_model(tmp_path / "nan.safetensors", "small_cnn", 10)
    with pytest.raises(CheckpointError, match="over the limit"):
        checkpoint.load_model(tmp_path / "nan.safetensors", "small_cnn", 10, max_bytes=100)


def test_garbage_files_get_a_clear_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as zf:
        zf.writestr("a.txt", "hello")
    for name in ("junk.safetensors", "junk.pt", "z.pt", "missing.pt"):
        with pytest.raises(CheckpointError) as err:
            checkpoint.load_model(tmp_path / name, "small_cnn", 10)
        assert name in str(err.value)


def test_width_16_checkpoint_round_trips_in_fp16(tmp_path):
    """A reduced-width ResNet-18 saved in half precision (the size of a committed bench
    fixture) loads back at its width, and not at another one."""
    model = models.create("resnet18_cifar", 10, width=16).eval()
    path = tmp_path / "w16.safetensors"
    checkpoint.save_model(model.half(), path)
    assert path.stat().st_size < 1.6e6
    assert checkpoint.read_metadata(path)["width"] == "16"
    loaded = checkpoint.load_model(path, "resnet18_cifar", 10, width=16)
    for k, v in model.state_dict().items():
        assert torch.equal(v.float(), loaded.state_dict()[k].float())
    with pytest.raises(CheckpointError, match="mismatched shapes"):
        checkpoint.load_model(path, "resnet18_cifar", 10)
