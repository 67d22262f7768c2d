"""Models handed between stages that run in different processes: written as safetensors
with what it takes to rebuild them, and read back weights-only.

Three kinds travel: classifiers (the purified, retuned and baseline models: rebuilt from the
spec's architecture), BTI-DBF's generators (an inverted trigger) and QRA's perturbation
generators (for the transfer stage), each rebuilt from the configuration stored beside its
weights. Nothing here unpickles: the weights are safetensors, the configuration JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import models
from ..checkpoint import sha256_file
from ..errors import CheckpointError
from ..inversion.generator import UNet
from ..ppr.qra import PerturbationGenerator
from ..spec import AuditSpec
from ..util import atomic_path


def describe(module: nn.Module) -> dict[str, Any]:
    """How to rebuild `module`: its kind and configuration."""
    if isinstance(module, UNet):
        return {"kind": "unet", "width": module.down[0][0].out_channels,
                "blocks": module.blocks, "output": module.output}
    if isinstance(module, PerturbationGenerator):
        return {"kind": "qra", "shape": list(module.shape),
                "hidden": module.net[1].out_features, "eps": module.eps}
    if hasattr(module, "arch_name"):
        return {"kind": "classifier"}
    raise TypeError(f"no codec for {type(module).__name__}")


def write(module: nn.Module, path: Path) -> dict[str, Any]:
    """Save `module` at `path` (atomically); its record: kind, configuration, SHA-256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp))
    return {**describe(module), "sha256": sha256_file(path)}


def read(record: dict[str, Any], path: Path, spec: AuditSpec, device: torch.device
         ) -> nn.Module:
    """Rebuild the module `record` describes from the weights at `path` (checked against
    the recorded SHA-256: a stage's inputs are exactly what the stage before wrote)."""
    from safetensors.torch import load_file

    if sha256_file(path) != record["sha256"]:
        raise CheckpointError(f"{path.name}: its hash differs from the one recorded when the "
                              "stage that wrote it finished")
    kind = record["kind"]
    if kind == "classifier":
        module = models.create(spec.model.arch, spec.model.num_classes, width=spec.model.width,
                               mean=spec.model.mean, std=spec.model.std)
    elif kind == "unet":
        ones = torch.ones(3)
        module = UNet(ones, ones, record["width"], record["blocks"], record["output"])
    elif kind == "qra":
        module = PerturbationGenerator(tuple(record["shape"]), record["hidden"], record["eps"])
    else:
        raise CheckpointError(f"unknown module kind {kind!r}")
    module.load_state_dict(load_file(str(path)), strict=True)
    return module.to(device).eval()


def dumps(values: dict[str, Any]) -> str:
    """A stage's values as JSON (NaN and infinities as null: JSON has neither)."""
    return json.dumps(_finite(values), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
