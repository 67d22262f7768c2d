"""The model's last-stage features and BTI-DBF's decoupling mask over them.

The features are the output of the architecture's last stage (`Architecture.stages[-1]`:
layer4 of the CIFAR ResNet-18, the layer the authors' `from_input_to_features` returns); the
mask m in [0, 1] over that map separates benign features (m) from backdoor features (1 - m).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader
from ..models import architecture, frozen_copy, submodule


def last_stage(model: nn.Module) -> nn.Module:
    """The module whose output the inversion decouples."""
    return submodule(model, architecture(model.arch_name).stages[-1])


def stage_features(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the last stage's feature map); with `mask`, the map is multiplied by it
    before the head sees it (BTI-DBF's decoupling)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, out):
        seen.append(out)
        return out * mask if mask is not None else out

    handle = last_stage(model).register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, seen[0]


def decoupled_logits(model: nn.Module, x: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of m phi(x), logits of (1 - m) phi(x)) from one pass through the body: the
    feature map is computed once and the batch doubled after the last stage, where every
    registered architecture's tail (pooling, LayerNorm, head) works image by image. In
    train mode the body's BatchNorm statistics then move once per batch, as in the authors'
    code, which also computes the features once."""

    def hook(module, args, out):
        return torch.cat([out * mask, out * (1 - mask)])

    handle = last_stage(model).register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits[:len(x)], logits[len(x):]


def learn_feature_mask(model: nn.Module, loader: DeviceLoader, epochs: int, seed: int
                       ) -> tuple[torch.Tensor, nn.Module]:
    """The mask over the feature map, minimizing CE(h(m phi(x)), y) - CE(h((1-m) phi(x)), y)
    (Adam 0.01, fp32), and the model copy it was learnt on.

    As in the authors' `reverse()`, the copy runs in train mode while the mask is learnt, so
    its BatchNorm statistics move to the defender's images, and the generator is then
    trained against that same copy in eval mode: the copy is returned for that."""
    inv = frozen_copy(model, train_mode=True)
    x0, _ = next(iter(loader))
    with torch.no_grad():
        shape = stage_features(inv, x0[:2])[1].shape[1:]
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g).to(loader.device).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.01)
    for _ in range(epochs):
        for x, y in loader:
            benign, backdoor = decoupled_logits(inv, x, (torch.tanh(logits) + 1) / 2)
            loss = F.cross_entropy(benign, y) - F.cross_entropy(backdoor, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ((torch.tanh(logits) + 1) / 2).detach(), inv.eval()
