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


class FeatureTap:
    """A forward hook that stays on the model's last stage: it records the stage's output
    when asked, and multiplies it by a mask (or doubles the batch into m phi and (1 - m)
    phi) when one is set. Registered once per model (`tap`), instead of a hook added and
    removed on every call: per-call hooks cost two graph breaks a step under compile and a
    registration per batch in eager. With nothing set it returns the output as it is."""

    def __init__(self) -> None:
        self.record = False
        self.mask: torch.Tensor | None = None
        self.split = False
        self.seen: torch.Tensor | None = None

    def __call__(self, module, args, out):
        if self.record:
            self.seen = out
        if self.mask is None:
            return None
        if self.split:
            return torch.cat([out * self.mask, out * (1 - self.mask)])
        return out * self.mask

    def run(self, model: nn.Module, x: torch.Tensor, *, record: bool,
            mask: torch.Tensor | None = None, split: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """model(x) with this setting, then the tap is cleared (no tensor is kept)."""
        self.record, self.mask, self.split = record, mask, split
        try:
            logits = model(x)
            return logits, self.seen
        finally:
            self.record, self.mask, self.split, self.seen = False, None, False, None


def tap(model: nn.Module) -> FeatureTap:
    """The model's standing feature tap on its last stage, registered on first use (a deep
    copy of the model carries its own)."""
    existing = model.__dict__.get("_ppr_feature_tap")
    if existing is None:
        existing = FeatureTap()
        last_stage(model).register_forward_hook(existing)
        model.__dict__["_ppr_feature_tap"] = existing
    return existing


def stage_features(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the last stage's feature map); with `mask`, the map is multiplied by it
    before the head sees it (BTI-DBF's decoupling)."""
    logits, features = tap(model).run(model, x, record=True, mask=mask)
    return logits, features


def decoupled_logits(model: nn.Module, x: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of m phi(x), logits of (1 - m) phi(x)) from one pass through the body: the
    feature map is computed once and the batch doubled after the last stage, where every
    registered architecture's tail (pooling, LayerNorm, head) works image by image. In
    train mode the body's BatchNorm statistics then move once per batch, as in the authors'
    code, which also computes the features once."""
    logits, _ = tap(model).run(model, x, record=False, mask=mask, split=True)
    return logits[:len(x)], logits[len(x):]


class MaskLogits(nn.Module):
    """The mask's free parameters: m = (tanh(logits) + 1) / 2."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self) -> torch.Tensor:
        return (torch.tanh(self.logits) + 1) / 2


def mask_loss(parts: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mask step's loss on `parts` (`mask`, the frozen `net` in train mode):
    CE(h(m phi(x)), y) - CE(h((1-m) phi(x)), y)."""
    benign, backdoor = decoupled_logits(parts["net"], x, parts["mask"]())
    return F.cross_entropy(benign, y) - F.cross_entropy(backdoor, y)


def learn_feature_mask(model: nn.Module, loader: DeviceLoader, epochs: int, seed: int, *,
                       capture_safe: bool = False) -> tuple[torch.Tensor, nn.Module]:
    """The mask over the feature map, minimizing CE(h(m phi(x)), y) - CE(h((1-m) phi(x)), y)
    (Adam 0.01, fp32), and the model copy it was learnt on; `capture_safe`: each step
    through `graphed_step.FitStep` (one CUDA graph on CUDA), see `Inverter`.

    As in the authors' `reverse()`, the copy runs in train mode while the mask is learnt, so
    its BatchNorm statistics move to the defender's images, and the generator is then
    trained against that same copy in eval mode: the copy is returned for that."""
    from ..graphed_step import FitStep, adam

    inv = frozen_copy(model, train_mode=True)
    x0, _ = next(iter(loader))
    with torch.no_grad():
        shape = stage_features(inv, x0[:2])[1].shape[1:]
    g = torch.Generator().manual_seed(seed)
    mask = MaskLogits(torch.randn(shape, generator=g).to(loader.device))

    step = FitStep(nn.ModuleDict({"mask": mask, "net": inv}),
                   adam(mask.parameters(), 0.01, loader.device, capture_safe), mask_loss,
                   loader.device, graph=capture_safe and loader.device.type == "cuda",
                   fp32=True)
    for _ in range(epochs):
        for x, y in loader:
            step.step(x, y)
    return mask().detach(), inv.eval()
