"""BackdoorBench attack results (`attack_result.pt`), read without executing anything.

BackdoorBench (`utils/save_load_attack.py`, `utils/bd_dataset_v2.py`) saves one torch
pickle per attack: the model's name, class count and state dict, the clean dataset's name
and path, the image size, and the poisoned training and test samples
(`prepro_cls_DatasetBD_v2.retrieve_state()`). Each poisoned sample is kept under its index
in the clean set as (image, backdoor label, original label); the images are PIL images in
the pickle, or PNG files beside it when the attack saved them to disk.

The file is hostile until proven otherwise: it loads through `torch.load(weights_only=True)`
with an allow-list of tensors, NumPy arrays and scalars, and `PIL.Image.Image`, which is
rebuilt by an inert stand-in that keeps the image's mode, size and bytes and runs no PIL
code. Any other global (a callable smuggled into the pickle) is refused before it runs. PNG
files are read only from inside the result's folder, never through a symbolic link.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError
from .imageset import ImageSet

RESULT_FILE = "attack_result.pt"
PARTS = ("bd_test", "bd_train")
MAX_RESULT_BYTES = 4 << 30
_CHANNELS = {"RGB": 3, "L": 1}


class PickledImage:
    """Stands in for `PIL.Image.Image` while unpickling: keeps its state, decodes nothing."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def array(self, where: str) -> np.ndarray:
        """The image as uint8 H x W x 3 (modes RGB and L; PIL's state is [info, mode,
        size, palette, raw bytes])."""
        st = self.state
        if not isinstance(st, (list, tuple)) or len(st) < 4:
            raise DatasetError(f"{where}: a pickled image has no readable state")
        mode, size, raw = st[1], st[2], st[-1]
        if mode not in _CHANNELS or not isinstance(raw, bytes) or not (
                isinstance(size, (list, tuple)) and len(size) == 2):
            raise DatasetError(f"{where}: pickled image of mode {mode!r} is not supported "
                               f"(RGB or L)")
        w, h = int(size[0]), int(size[1])
        c = _CHANNELS[mode]
        if w <= 0 or h <= 0 or len(raw) != w * h * c:
            raise DatasetError(f"{where}: pickled image of size {w}x{h} holds {len(raw)} "
                               f"bytes, not {w * h * c}")
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, c)
        return np.repeat(arr, 3, axis=2) if c == 1 else arr


def _allowed_globals() -> list:
    from ..checkpoint import _NUMPY_ALLOW

    allowed: list = list(_NUMPY_ALLOW) + [(PickledImage, "PIL.Image.Image")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            allowed.append(__import__(mod, fromlist=["scalar"]).scalar)
        except (ImportError, AttributeError):
            pass
    allowed += [type(np.dtype(t)) for t in ("int32", "int16", "int8", "uint16")]
    return allowed


@dataclass
class PoisonedSamples:
    """One poisoned part of an attack result."""

    x: torch.Tensor  # uint8 N x 3 x H x W
    bd_label: torch.Tensor  # the label the attack gave each sample
    label: torch.Tensor  # its original (true) label
    index: torch.Tensor  # its position in the clean training or test set


@dataclass
class AttackResult:
    """What an `attack_result.pt` holds, checked and converted."""

    path: Path
    model_name: str
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    clean_data: str
    data_path: str
    img_size: tuple[int, ...]
    bd_test: PoisonedSamples
    bd_train: PoisonedSamples | None

    @property
    def label_map(self) -> dict[str, Any]:
        """The attack's label map as trigger parameters: {"target": t} (all-to-one), or
        {"label_map": "all_to_all", "shift": k} when every backdoored test sample's label is
        its true label + k mod C (BackdoorBench's all2all, k = 1)."""
        bd, true = self.bd_test.bd_label, self.bd_test.label
        targets = sorted(set(bd.tolist()))
        if len(targets) == 1:
            return {"target": int(targets[0])}
        shifts = sorted(set(((bd - true) % self.num_classes).tolist()))
        if len(shifts) == 1 and shifts[0] != 0:
            return {"label_map": "all_to_all", "shift": int(shifts[0])}
        raise DatasetError(f"{self.path.name}: the backdoored test samples carry "
                           f"{len(targets)} different target labels {targets[:5]}, and not "
                           f"one shift of their true labels; only all-to-one and all-to-all "
                           f"(y -> y + k mod C) attacks can be audited")


def result_path(location: Path) -> Path:
    """The result file at `location` (the file itself, or `attack_result.pt` inside it)."""
    path = location / RESULT_FILE if location.is_dir() else location
    if not path.is_file():
        raise DatasetError(f"{location}: no BackdoorBench {RESULT_FILE} there")
    return path


def _load(path: Path, max_bytes: int) -> dict:
    from ..checkpoint import weights_only_load

    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"{path.name} is {size} bytes, over the limit of {max_bytes}")
    obj = weights_only_load(path, path.name, _allowed_globals(), DatasetError,
                            "tensors, arrays and images", "a readable torch file")
    if not isinstance(obj, dict):
        raise DatasetError(f"{path.name}: expected a mapping, found {type(obj).__name__}")
    return obj


def _int(value: Any, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DatasetError(f"{where}: expected an integer, found {type(value).__name__}")
    return int(value)


def _png(folder: Path, saved_path: Any, where: str) -> np.ndarray:
    """A sample BackdoorBench wrote to disk: found by the longest tail of its recorded path
    that exists inside `folder` (the result was made on another machine)."""
    from .sources import _decode

    if not isinstance(saved_path, str):
        raise DatasetError(f"{where}: the recorded image path is not a string")
    parts = [p for p in Path(saved_path).parts if p not in ("/", "")]
    if ".." in parts:
        raise DatasetError(f"{where}: the recorded image path {saved_path!r} climbs out")
    root = folder.resolve()
    for k in range(len(parts)):
        candidate = folder.joinpath(*parts[k:])
        if candidate.is_symlink():
            raise DatasetError(f"{where}: {candidate.name} is a symbolic link")
        if candidate.is_file() and root in candidate.resolve().parents:
            return _decode(str(candidate), candidate.read_bytes(), None)
    raise DatasetError(f"{where}: image {saved_path!r} is not inside {folder}")


def _samples(state: Any, folder: Path, where: str) -> PoisonedSamples:
    """Convert one `prepro_cls_DatasetBD_v2` state (its poisoned samples only)."""
    if not isinstance(state, dict) or not isinstance(state.get("bd_data_container"), dict):
        raise DatasetError(f"{where}: not BackdoorBench's dataset state (no "
                           f"bd_data_container); results from before BackdoorBench v2 are "
                           f"not supported")
    items = state["bd_data_container"].get("data_dict")
    if not isinstance(items, dict) or not items:
        raise DatasetError(f"{where}: holds no poisoned samples")
    xs, bd, orig, idx = [], [], [], []
    for key in sorted(items, key=lambda k: _int(k, where)):
        value = items[key]
        at = f"{where}[{_int(key, where)}]"
        if isinstance(value, dict):  # saved to disk: {"path": ..., "other_info": [bd, label]}
            img = _png(folder, value.get("path"), at)
            info = list(value.get("other_info") or [])
        elif isinstance(value, (list, tuple)) and len(value) >= 3:
            img, info = value[0], list(value[1:])
            if isinstance(img, PickledImage):
                img = img.array(at)
            elif isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3:
                img = img if img.shape[-1] == 3 else np.transpose(img, (1, 2, 0))
            else:
                raise DatasetError(f"{at}: image of type {type(img).__name__} is not supported")
        else:
            raise DatasetError(f"{at}: expected (image, backdoor label, label)")
        if len(info) < 2:
            raise DatasetError(f"{at}: the backdoor and original labels are missing")
        xs.append(img)
        bd.append(_int(info[0], at))
        orig.append(_int(info[1], at))
        idx.append(_int(key, at))
    shapes = {a.shape for a in xs}
    if len(shapes) != 1:
        raise DatasetError(f"{where}: images differ in size {sorted(shapes)[:3]}")
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return PoisonedSamples(x, torch.tensor(bd), torch.tensor(orig), torch.tensor(idx))


def read_result(location: Path, max_bytes: int = MAX_RESULT_BYTES) -> AttackResult:
    """Read and check the attack result at `location` (its folder or the file)."""
    path = result_path(Path(location))
    obj = _load(path, max_bytes)
    missing = [k for k in ("model_name", "num_classes", "model", "bd_test") if k not in obj]
    if missing:
        raise DatasetError(f"{path.name}: not a BackdoorBench attack result (missing "
                           f"{', '.join(missing)})")
    from ..checkpoint import _unwrap

    state = _unwrap(obj["model"], path.name)
    folder = path.parent
    size = obj.get("img_size") or ()
    return AttackResult(
        path=path, model_name=str(obj["model_name"]),
        num_classes=_int(obj["num_classes"], "num_classes"), state_dict=state,
        clean_data=str(obj.get("clean_data") or ""), data_path=str(obj.get("data_path") or ""),
        img_size=tuple(int(v) for v in size) if isinstance(size, (list, tuple)) else (),
        bd_test=_samples(obj["bd_test"], folder, "bd_test"),
        bd_train=(_samples(obj["bd_train"], folder, "bd_train")
                  if obj.get("bd_train") is not None else None))


def load_part(location: Path, part: str, source: str) -> ImageSet:
    """One poisoned part as an ImageSet: labels are the true classes, `index` the
    positions in the clean set (the `backdoorbench:` data reference)."""
    if part not in PARTS:
        raise DatasetError(f"{source}: part must be one of {', '.join(PARTS)}, not {part!r}")
    result = read_result(location)
    samples = result.bd_test if part == "bd_test" else result.bd_train
    if samples is None:
        raise DatasetError(f"{source}: the attack result holds no poisoned training samples")
    return ImageSet(samples.x, samples.label, result.num_classes, source=source,
                    index=samples.index, split="test" if part == "bd_test" else "train")
