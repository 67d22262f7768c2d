"""Safe checkpoint loading and saving.

Checkpoints are hostile until proven otherwise: `.safetensors` loads without code, and
`.pt/.pth/.bin` only through `torch.load(weights_only=True)` with a NumPy allow-list (for
BackdoorBench result files); nothing is ever fully unpickled. The state dict is unwrapped
from the common containers, checked against the architecture (missing, unexpected and
mismatched keys named), refused if it holds NaN/Inf, and hashed.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__, models
from .errors import CheckpointError
from .util import atomic_path

DEFAULT_MAX_BYTES = 4 << 30
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_NUMPY_ALLOW = [np.ndarray, np.dtype]
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    try:
        _NUMPY_ALLOW.append(__import__(_mod, fromlist=["_reconstruct"])._reconstruct)
    except (ImportError, AttributeError):
        pass
_NUMPY_ALLOW += [type(np.dtype(t)) for t in ("uint8", "int64", "float32", "float64", "bool")]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unwrap(obj: Any, shown: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside common containers (and BackdoorBench result files)."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{shown}: no state dict found (looked for a mapping of "
                              f"tensors, or one under {', '.join(CONTAINER_KEYS)})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise CheckpointError(f"{shown}: state dict entries are not tensors: {bad}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                    name: str | None = None) -> dict[str, torch.Tensor]:
    """Load tensors from `path` without executing anything it contains. `name` is the file
    name the caller knows (an upload's, not our temporary one): messages use it, and its
    suffix decides the format as the file's own would."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    shown = Path(name).name if name else path.name
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{shown} is {size} bytes, over the limit of {max_bytes}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    is_safetensors = Path(shown).suffix.lower() == ".safetensors" or (
        len(head) >= 9 and head[8:9] == b"{" and not head.startswith(b"PK"))
    if is_safetensors:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path)), shown)
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{shown}: not a valid safetensors file: {exc}") from None
    obj = weights_only_load(path, shown, _NUMPY_ALLOW, CheckpointError,
                            "tensors (checkpoints load weights-only)",
                            "a readable checkpoint (expected safetensors, or a PyTorch "
                            ".pt/.pth/.bin file)")
    return _unwrap(obj, shown)


def weights_only_load(path: Path, shown: str, allowed: list, error: type[Exception],
                      allowed_what: str, readable_what: str) -> Any:
    """`torch.load(weights_only=True)` with the globals `allowed`, nothing else: a pickled
    callable is refused before it runs. Failures become one `error` naming `shown`."""
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or
                 "Unsupported" in ln]
        what = f": {lines[0][:200]}" if lines else ""
        raise error(f"{shown}: refused, it holds pickled objects other than "
                    f"{allowed_what}{what}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError,
            KeyError, IndexError) as exc:
        raise error(f"{shown}: not {readable_what}: {str(exc)[:300]}") from None


def _fmt(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse `state` unless its keys and shapes match `model` exactly; name every problem."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape))
    if missing or unexpected or mismatched:
        arch = getattr(model, "arch_name", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"mismatched shapes: {_fmt(mismatched)}")
        raise CheckpointError(f"{what} does not fit architecture {arch}: " + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{what} holds NaN or Inf values in: {_fmt(bad)}")


def expected_shapes(arch: str, num_classes: int,
                    width: int | None = None) -> dict[str, tuple[int, ...]]:
    """The state dict's keys and shapes of `arch`, from a model built on the meta device
    (no memory, milliseconds even for a 100,000-class ViT)."""
    with torch.device("meta"):
        model = models.create(arch, num_classes, width=width)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _safetensors_header(path: Path, shown: str) -> dict[str, tuple[int, ...]] | None:
    """Keys and shapes from a safetensors header, read without the tensors (None: the file
    is not safetensors)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        size = int.from_bytes(head, "little")
        if size <= 1 or size > min(100 << 20, path.stat().st_size - 8):
            return None
        try:
            header = json.loads(fh.read(size))
        except (ValueError, RecursionError):
            return None
    if not isinstance(header, dict):
        return None
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise CheckpointError(f"{shown}: not a valid safetensors file: entry {key[:80]!r} "
                                  f"has no shape")
        out[key.removeprefix("module.")] = tuple(int(d) for d in info["shape"])
    return out


def precheck(path: Path, arch: str, num_classes: int, *, max_bytes: int = DEFAULT_MAX_BYTES,
             name: str | None = None, width: int | None = None) -> None:
    """Refuse a checkpoint that cannot fit `arch` before building the model: the file's
    size against the parameters' smallest encoding (2 bytes each), and a safetensors
    header's keys and shapes against the architecture's."""
    path = Path(path)
    shown = Path(name).name if name else path.name
    # an unknown architecture is named first
    expected = expected_shapes(arch, num_classes, width)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {shown} does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{shown} is {size} bytes, over the limit of {max_bytes}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    header = _safetensors_header(path, shown)
    if header is None and Path(shown).suffix.lower() == ".safetensors":
        raise CheckpointError(f"{shown}: not a valid safetensors file: its header cannot be "
                              "read (truncated, or another format)")
    if header is None and not head.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(f"{shown}: not a readable checkpoint (expected safetensors, or a "
                              "PyTorch .pt/.pth/.bin file)")
    if header is not None:
        missing = sorted(set(expected) - set(header))
        unexpected = sorted(set(header) - set(expected))
        mismatched = sorted(f"{k} {header[k]} != {v}" for k, v in expected.items()
                            if k in header and header[k] != v)
        if missing or unexpected or mismatched:
            parts = [f"{what}: {_fmt(keys)}" for what, keys in (
                ("missing keys", missing), ("unexpected keys", unexpected),
                ("mismatched shapes", mismatched)) if keys]
            raise CheckpointError(f"{shown} does not fit architecture {arch}: "
                                  + "; ".join(parts))
    numel = sum(math.prod(s) for s in expected.values())
    if size < 2 * numel:
        raise CheckpointError(f"{shown} is {size} bytes, too small for {arch} with "
                              f"{num_classes} classes ({numel} values, at least {2 * numel} "
                              f"bytes)")


def load_model(path: Path, arch: str, num_classes: int, *,
               max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None,
               width: int | None = None) -> nn.Module:
    """Build `arch` and load the checkpoint at `path` into it, strictly and safely (`name`:
    the file name to show and to take the format from, see read_state_dict). The cheap
    checks (`precheck`) come first, so a checkpoint that cannot fit costs no model."""
    precheck(path, arch, num_classes, max_bytes=max_bytes, name=name, width=width)
    state = read_state_dict(Path(path), max_bytes, name)
    model = models.create(arch, num_classes, width=width)
    check_state_dict(model, state, Path(name).name if name else Path(path).name)
    model.load_state_dict(state, strict=True)
    return model.eval()


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata block of a safetensors file ({} for other formats)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable metadata is simply absent metadata
        return {}


def save_model(model: nn.Module, path: Path, **metadata: str) -> str:
    """Write `model` as safetensors atomically (temp file + rename); return its SHA-256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = getattr(model, "arch_name", "")
    meta = {"arch": arch, "engine_version": __version__,
            "num_classes": str(models.head_of(model).out_features) if arch else "",
            "width": str(getattr(model, "arch_width", None) or ""),
            "mean": json.dumps(model.input_mean.flatten().tolist()) if hasattr(
                model, "input_mean") else "",
            "std": json.dumps(model.input_std.flatten().tolist()) if hasattr(
                model, "input_std") else ""}
    meta.update({k: str(v) for k, v in metadata.items()})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return sha256_file(path)
