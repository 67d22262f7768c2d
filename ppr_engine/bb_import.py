"""`ppr import-backdoorbench DIR`: a BackdoorBench attack result made ready to audit.

From the result's `attack_result.pt` (read safely, `data.backdoorbench`) this writes:
- `model.safetensors`: the backdoored model, checked key for key against the architecture;
- `bd_test.tar.gz` and `bd_train.tar.gz`: the poisoned test and training samples as
  ImageFolder archives (PNG, class folders named by the samples' true classes), the trigger
  given by example, ready for `POST /v1/datasets` too;
- `audit.yaml`: an audit spec whose trigger is `{attack: examples}` over those archives
  (ASR on the poisoned test samples; RA, QRA and EP/PAM's oracle data from the poisoned
  training samples), so any of BackdoorBench's attacks can be audited, including the ones
  this project does not implement;
- `import.json`: what was imported (source hash, model, target, poisoned training indices).

The spec is validated before anything is written, and every file is written to a
temporary name and renamed, so a failed import leaves nothing half-written.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import models
from .checkpoint import check_state_dict, save_model, sha256_file
from .data.backdoorbench import PoisonedSamples, read_result
from .errors import InputError
from .spec import spec_yaml, validate_spec
from .util import atomic_write_bytes, atomic_write_text

# BackdoorBench model names (`utils/aggregate_block/model_trainer_generate.py`) whose
# layout a registered architecture reproduces key for key
ARCH_NAMES = {"preactresnet18": "preact_resnet18", "resnet18": "resnet18",
              "resnet50": "resnet50", "vit_b_16": "vit_b_16"}
DEFAULT_METHODS = ("ft", "fst", "bti_dbf", "ep", "pam")


@dataclass
class Imported:
    """Where the import put things, and what it found."""

    checkpoint: Path
    spec: Path
    manifest: Path
    arch: str
    target: int | None  # None: an all-to-all attack (label_map says which)
    test_examples: int
    train_examples: int


def examples_archive(samples: PoisonedSamples) -> bytes:
    """The samples as an ImageFolder .tar.gz: `<true class>/<index>.png`."""
    from PIL import Image

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for img, label, index in zip(samples.x.permute(0, 2, 3, 1).numpy(),
                                     samples.label.tolist(), samples.index.tolist(),
                                     strict=True):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{label}/{index:06d}.png")
            info.size, info.mtime = buf.tell(), int(time.time())
            buf.seek(0)
            tar.addfile(info, buf)
    return out.getvalue()


def default_data(result_path: Path, clean_data: str, data_path: str) -> tuple[str, str]:
    """BackdoorBench's own rule for the clean dataset (its `load_attack_result`: the part
    of the result's path before `record`, then `data_path` from `data` on), for CIFAR."""
    kinds = {"cifar10": ("cifar10", "cifar-10-batches-py"),
             "cifar100": ("cifar100", "cifar-100-python")}
    parts = result_path.resolve().parts
    if clean_data not in kinds or "record" not in parts or "data" not in Path(data_path).parts:
        raise InputError(f"cannot tell where the clean {clean_data or 'dataset'} of "
                         f"{result_path.name} is; give --clean and --test data references")
    base = Path(*parts[:parts.index("record")])
    rel = Path(data_path).parts
    kind, folder = kinds[clean_data]
    root = base.joinpath(*rel[rel.index("data"):], folder)
    if not root.exists():
        raise InputError(f"the clean {clean_data} is not at {root}; give --clean and --test "
                         f"data references")
    return f"{kind}:{root}?split=train&fraction=0.05&seed=0", f"{kind}:{root}?split=test"


def import_backdoorbench(location: Path, out: Path, *, clean: str | None = None,
                         test: str | None = None, arch: str | None = None,
                         methods: tuple[str, ...] = DEFAULT_METHODS) -> Imported:
    """Import the attack result at `location` (folder or file) into `out`."""
    result = read_result(Path(location))
    name = arch or ARCH_NAMES.get(result.model_name) or (
        result.model_name if result.model_name in models.list_models() else None)
    if name is None:
        raise InputError(f"BackdoorBench model {result.model_name!r} has no registered "
                         f"architecture with the same layout; pass --arch (one of "
                         f"{', '.join(models.list_models())})")
    size = models.architecture(name).input_size
    if result.img_size and result.img_size[0] != size:
        raise InputError(f"{result.path.name} was trained on {result.img_size[0]}-pixel "
                         f"images, but architecture {name} takes {size}; pass --arch with a "
                         f"registered architecture of that input size")
    model = models.create(name, result.num_classes)
    check_state_dict(model, result.state_dict, f"{result.path.name} (model)")
    model.load_state_dict(result.state_dict, strict=True)
    label_map = result.label_map
    target = label_map.get("target")
    if clean is None or test is None:
        derived = default_data(result.path, result.clean_data, result.data_path)
        clean, test = clean or derived[0], test or derived[1]
    out = Path(out)
    parts = {"data": ("bd_test.tar.gz", result.bd_test)}
    if result.bd_train is not None:
        parts["train_data"] = ("bd_train.tar.gz", result.bd_train)
    trigger = {"attack": "examples", **label_map, **{
        key: f"imagefolder:{(out / name).resolve()}" for key, (name, _) in parts.items()}}
    # validated before anything is written: a refused spec leaves no files behind
    spec = validate_spec({"model": {"arch": name, "num_classes": result.num_classes},
                          "data": {"clean": clean, "test": test}, "triggers": [trigger],
                          "plan": {"methods": [{"name": m} for m in methods]}})
    out.mkdir(parents=True, exist_ok=True)
    source_sha = sha256_file(result.path)
    ckpt = out / "model.safetensors"
    save_model(model, ckpt, source="backdoorbench", attack_result_sha256=source_sha,
               **{k: str(v) for k, v in label_map.items()})
    for file_name, samples in parts.values():
        atomic_write_bytes(out / file_name, examples_archive(samples))
    spec_path = out / "audit.yaml"
    atomic_write_text(spec_path, spec_yaml(spec))
    manifest = {
        "source": str(result.path), "source_sha256": source_sha,
        "model_name": result.model_name, "arch": name, "num_classes": result.num_classes,
        "clean_data": result.clean_data, "target": target, "label_map": label_map,
        "bd_test": len(result.bd_test.x),
        "bd_train": len(result.bd_train.x) if result.bd_train is not None else 0,
        "poisoned_train_indices": (result.bd_train.index.tolist()
                                   if result.bd_train is not None else []),
    }
    manifest_path = out / "import.json"
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return Imported(ckpt, spec_path, manifest_path, name, target, manifest["bd_test"],
                    manifest["bd_train"])
