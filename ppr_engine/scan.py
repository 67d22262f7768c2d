"""Backdoor scan: the smallest patch trigger that sends images to each class, and whether
one class needs far less than the others (the test of Neural Cleanse, Wang et al., S&P 2019).

Why the audit needs it: BTI-DBF's generator always ends at *some* class. On a small_cnn
trained without any poisoning, one round of its inversion sent 98% of the defender's images
of other classes to class 5 (a universal adversarial perturbation, not a backdoor; see
docs/RESULTS.md, "Unknown triggers"). A backdoor is a shortcut: its target is reached with a
much smaller trigger than any other class. For each class k we learn a mask m_k and a pattern
p_k, x' = (1 - m_k) x + m_k p_k, minimizing CE(f(x'), k) + l1_weight * |m_k|_1, all classes in
one batch; the scan reports each class's mask size (L1) and success rate on held-out images,
the smallest class, and its size over the median of the others (`ratio`). Neural Cleanse's
anomaly index (the MAD score) is reported too; the decision uses the ratio, which a single
outlier among ten classes moves less.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .data import DeviceLoader, ImageSet
from .models import frozen_copy, head_of
from .train import Progress, autocast, no_progress


class ScanParams(BaseModel):
    """Settings of the smallest-trigger scan."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(15, ge=1, description="passes over the defender's images per class")
    batch_size: int = Field(64, ge=1, description="images per step (times the classes)")
    lr: float = Field(0.1, gt=0, description="Adam learning rate of masks and patterns")
    l1_weight: float = Field(0.02, gt=0, description="weight of the mask's L1 size")
    max_images: int = Field(1000, ge=10, description="defender's images used (the first "
                            "ones of a fixed shuffle)")
    max_ratio: float = Field(0.5, gt=0, le=1, description="a class whose smallest trigger is "
                             "at most this share of the other classes' median is anomalous")


@dataclass
class ScanResult:
    """Per class: the learnt mask's L1 size and its success rate on held-out images."""

    mask_l1: list[float]
    success: list[float]
    smallest: int  # the class with the smallest mask
    ratio: float  # its mask size over the median of the other classes'
    anomaly_index: list[float]  # Neural Cleanse's MAD score per class (positive: smaller)
    max_ratio: float

    @property
    def anomalous(self) -> bool:
        """Whether the smallest class's trigger is far smaller than the others'."""
        return self.ratio <= self.max_ratio

    def record(self) -> dict:
        """A JSON-able summary for the report."""
        return {"mask_l1": [round(v, 2) for v in self.mask_l1],
                "success": [round(v, 4) for v in self.success], "smallest": self.smallest,
                "ratio": round(self.ratio, 4), "max_ratio": self.max_ratio,
                "anomalous": self.anomalous,
                "anomaly_index": [round(v, 3) for v in self.anomaly_index]}


def smallest_triggers(model: nn.Module, train: ImageSet, held_out: ImageSet, p: ScanParams,
                      device: torch.device, seed: int, progress: Progress = no_progress
                      ) -> ScanResult:
    """Learn one mask-and-pattern trigger per class on `train`, measure it on `held_out`."""
    net = frozen_copy(model, train_mode=False)
    k = head_of(model).out_features
    g = torch.Generator().manual_seed(seed)
    if len(train) > p.max_images:
        train = train.subset(torch.randperm(len(train), generator=g)[:p.max_images])
    c, h, w = train.x.shape[1:]
    # masks start near 5% opacity, patterns at mid-grey
    mask_logit = torch.full((k, 1, h, w), -3.0, device=device, requires_grad=True)
    pattern_logit = torch.zeros((k, c, h, w), device=device, requires_grad=True)
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=p.lr)
    targets = torch.arange(k, device=device)
    loader = DeviceLoader(train, p.batch_size, shuffle=True, device=device, seed=seed)
    for epoch in range(p.epochs):
        for x, _ in loader:
            m, pat = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
            xt = ((1 - m[:, None]) * x[None] + (m * pat)[:, None]).flatten(0, 1)
            y = targets.repeat_interleave(len(x))
            with autocast(device):
                logits = net(xt)
            # summed over classes: each class's mask and pattern get their own gradient
            loss = (F.cross_entropy(logits.float(), y) * k
                    + p.l1_weight * m.flatten(1).sum(1).sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        progress(f"trigger scan: epoch {epoch + 1}", (epoch + 1) / p.epochs)
    with torch.no_grad():
        m, pat = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
        l1 = m.flatten(1).sum(1).float().cpu()
        success = [_success(net, held_out, m[j], pat[j], j, device) for j in range(k)]
    smallest = int(l1.argmin())
    others = torch.cat([l1[:smallest], l1[smallest + 1:]])
    ratio = float(l1[smallest] / others.median().clamp_min(1e-8)) if len(others) else 1.0
    median = l1.median()
    mad = (l1 - median).abs().median().clamp_min(1e-8) * 1.4826
    return ScanResult(l1.tolist(), success, smallest, ratio, ((median - l1) / mad).tolist(),
                      p.max_ratio)


def _success(net: nn.Module, ds: ImageSet, m: torch.Tensor, pat: torch.Tensor, k: int,
             device: torch.device) -> float:
    """Share of `ds`'s images of other classes that the trigger (m, pat) sends to `k`."""
    hits = total = 0
    for x, y in DeviceLoader(ds, 512, shuffle=False, device=device):
        keep = y != k
        with autocast(device):
            pred = net((1 - m) * x[keep] + m * pat).argmax(1)
        hits += int((pred == k).sum())
        total += int(keep.sum())
    return hits / max(1, total)
