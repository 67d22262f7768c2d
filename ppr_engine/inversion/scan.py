"""Backdoor scans: for every class, the smallest trigger of a family that sends images there,
and whether one class needs far less than the others (the test of Neural Cleanse, Wang et
al., S&P 2019, extended to triggers a patch cannot express).

Why the audit needs it: BTI-DBF's generator always ends at *some* class. On a small_cnn
trained without any poisoning, one round of its inversion sent 98% of the defender's images
of other classes to class 5 (a universal adversarial perturbation, not a backdoor; see
docs/RESULTS.md, "Unknown triggers"). A backdoor is a shortcut: its target is reached with a
much smaller trigger than any other class. For each family and class k we learn a trigger
t_k minimizing CE(f(t_k(x)), k) + weight * size(t_k), all classes in one batch, and report
each class's size and success rate on held-out images, the smallest class and its size over
the median of the others (`ratio`); a class is anomalous when `ratio <= max_ratio`.

Families (what each can express):
- `patch`: x' = (1 - m) x + m p, size |m|_1 (BadNets' patch, Blended's full-image blend);
- `additive`: x' = clip(x + d, 0, 1), size |d|_2 (a sinusoid, SIG's signal, is additive);
- `warp`: x' = x sampled at identity + a smooth flow field (a 4 x 4 control grid upsampled
  bicubically, as WaNet builds its field), size the mean displacement in pixels.
The additive and warp scans adapt each class's size weight as Neural Cleanse does: after every
epoch a class whose trigger sent at least `target_success` of that epoch's images of other
classes to it gets a weight 1.5 times larger, others 1.5 times smaller, so every class's
size is the size that *reaches* the target class (with a fixed weight, classes that cannot be
reached cheaply give up and end with the smallest, useless triggers: on a WaNet model the
target's warp was the only one that succeeded, and the largest). The patch scan keeps its
fixed weight, with which it was measured (docs/RESULTS.md). Neural Cleanse's anomaly index
(the MAD score) is reported too; the decision uses the ratio, which a single outlier among
ten classes moves less. A class whose adapted trigger never reached `target_success` in
the last epoch counts as unreachable by that family (size infinite in the ratio): on a
WaNet model no small warp reached any class but the target. Everything runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..bounds import budget
from ..data import DeviceLoader, ImageSet
from ..models import frozen_copy, head_of
from ..train import Progress, no_progress

Family = Literal["patch", "additive", "warp"]
FAMILIES: tuple[Family, ...] = ("patch", "additive", "warp")


class ScanParams(BaseModel):
    """Settings of the smallest-trigger scans."""

    model_config = ConfigDict(extra="forbid")
    families: list[Family] = Field(["patch", "warp"], min_length=1, max_length=3,
                                   description="trigger families scanned, in order: patch "
                                   "(mask and pattern), warp (a smooth flow), additive (a "
                                   "universal perturbation; measured and left out of the "
                                   "default, docs/RESULTS.md)")
    exhaustive: bool = Field(False, description="scan every family even after one has "
                             "confirmed the detected class (false: stop there; the verdict is "
                             "the same, the later families' numbers are not recorded)")
    epochs: int = budget("epochs", 15, le=200, description="passes over the defender's "
                         "images")
    batch_size: int = budget("batch", 64, le=1024, description="images per step (times the "
                             "classes)")
    lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate of the patch scan")
    l1_weight: float = Field(0.02, gt=0, le=100, description="patch: weight of the mask's "
                             "L1 size")
    additive_weight: float = Field(0.1, gt=0, le=100, description="additive: initial weight "
                                   "of the perturbation's L2 size (adapted per class)")
    warp_weight: float = Field(0.05, gt=0, le=100, description="warp: initial weight of the "
                               "mean displacement in pixels (adapted per class)")
    target_success: float = Field(0.9, gt=0, lt=1, description="additive and warp: the share "
                                  "of other classes' images a class's trigger must reach")
    warp_grid: int = Field(4, ge=2, le=16, description="warp: control grid side")
    max_images: int = budget("images", 1000, ge=10, le=100_000, description="defender's "
                             "images used (the first ones of a fixed shuffle)")
    max_ratio: float = Field(0.5, gt=0, le=1, description="a class whose smallest trigger "
                             "is at most this share of the other classes' median is anomalous")

    def work(self, n: int, classes: int) -> float:
        """Image passes: every family's epochs over every class's triggered copy."""
        return float(len(self.families) * self.epochs * min(n, self.max_images) * classes)


@dataclass
class ScanResult:
    """One family's scan: per class, the learnt trigger's size and its success rate on
    held-out images of other classes."""

    family: str
    size: list[float]
    success: list[float]  # on held-out images
    reached: list[bool]  # the trigger reached target_success in its last epoch (adaptive)
    smallest: int  # the class with the smallest trigger
    ratio: float  # its size over the median of the other classes'
    anomaly_index: list[float]  # Neural Cleanse's MAD score per class (positive: smaller)
    max_ratio: float
    trigger: nn.Module | None = field(default=None, repr=False, compare=False)  # the learnt

    @property
    def anomalous(self) -> bool:
        """Whether the smallest class's trigger is far smaller than the others'."""
        return self.ratio <= self.max_ratio

    def record(self) -> dict:
        """A JSON-able summary for the report."""
        return {"family": self.family, "size": [round(v, 3) for v in self.size],
                "success": [round(v, 4) for v in self.success], "reached": self.reached,
                "smallest": self.smallest,
                "ratio": round(self.ratio, 4), "max_ratio": self.max_ratio,
                "anomalous": self.anomalous,
                "anomaly_index": [round(v, 3) for v in self.anomaly_index]}


@dataclass
class Scan:
    """Every family's result; a class is flagged when some family finds it anomalous."""

    results: list[ScanResult] = field(default_factory=list)

    @property
    def anomalous(self) -> list[ScanResult]:
        """The families that found an anomalously easy class."""
        return [r for r in self.results if r.anomalous]

    def flags(self, k: int) -> list[ScanResult]:
        """The families that found class `k` anomalously easy to reach."""
        return [r for r in self.anomalous if r.smallest == k]

    @property
    def closest(self) -> ScanResult:
        """The family whose smallest class stands out most (lowest ratio)."""
        return min(self.results, key=lambda r: r.ratio)

    def record(self) -> dict:
        """The closest family's numbers on top (`smallest`, `ratio`, `anomalous`), every
        family's below."""
        top = self.closest.record()
        return {**top, "anomalous": bool(self.anomalous),
                "families": {r.family: r.record() for r in self.results}}


class _Trigger(nn.Module):
    """A family's per-class triggers, learnt together: `forward(x)` gives every class's
    triggered copy of the batch (classes outermost), `sizes()` each class's size."""

    def __init__(self, family: Family, k: int, shape: tuple[int, int, int], p: ScanParams
                 ) -> None:
        super().__init__()
        c, h, w = shape
        self.family, self.h = family, h
        if family == "patch":  # masks start near 5% opacity, patterns at mid-grey
            self.a = nn.Parameter(torch.full((k, 1, h, w), -3.0))
            self.b = nn.Parameter(torch.zeros((k, c, h, w)))
            self.weight = p.l1_weight
        elif family == "additive":
            self.a = nn.Parameter(torch.zeros((k, c, h, w)))
            self.weight = p.additive_weight
        else:
            self.a = nn.Parameter(torch.zeros((k, 2, p.warp_grid, p.warp_grid)))
            self.weight = p.warp_weight
            lin = torch.linspace(-1, 1, h)
            gy, gx = torch.meshgrid(lin, lin, indexing="ij")
            self.register_buffer("identity", torch.stack((gx, gy), 2)[None])

    def _flow(self) -> torch.Tensor:
        """Per-class displacement in grid units (k x h x w x 2)."""
        up = F.interpolate(self.a, size=self.h, mode="bicubic", align_corners=True)
        return up.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = len(self.a), len(x)
        if self.family == "patch":
            m, pat = torch.sigmoid(self.a), torch.sigmoid(self.b)
            return ((1 - m[:, None]) * x[None] + (m * pat)[:, None]).flatten(0, 1)
        if self.family == "additive":
            return (x[None] + self.a[:, None]).clamp(0, 1).flatten(0, 1)
        grid = (self.identity + self._flow()).clamp(-1, 1)
        xs = x[None].expand(k, *x.shape).flatten(0, 1)
        return F.grid_sample(xs, grid.repeat_interleave(n, 0), align_corners=True)

    def apply_class(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Class `j`'s learnt trigger on a batch (Neural Cleanse's unlearning uses it)."""
        if self.family == "patch":
            m, pat = torch.sigmoid(self.a[j]), torch.sigmoid(self.b[j])
            return (1 - m) * x + m * pat
        if self.family == "additive":
            return (x + self.a[j]).clamp(0, 1)
        grid = (self.identity + self._flow()[j:j + 1]).clamp(-1, 1)
        return F.grid_sample(x, grid.expand(len(x), -1, -1, -1), align_corners=True)

    def sizes(self) -> torch.Tensor:
        """Per-class size: mask L1, perturbation L2, or mean displacement in pixels."""
        if self.family == "patch":
            return torch.sigmoid(self.a).flatten(1).sum(1)
        if self.family == "additive":
            return self.a.flatten(1).norm(dim=1)
        return self._flow().norm(dim=-1).flatten(1).mean(1) * (self.h - 1) / 2


def _scan_family(net: nn.Module, family: Family, train: ImageSet, held_out: ImageSet,
                 p: ScanParams, device: torch.device, seed: int, progress: Progress,
                 share: tuple[float, float]) -> ScanResult:
    k = head_of(net).out_features
    trig = _Trigger(family, k, tuple(train.x.shape[1:]), p).to(device)
    adaptive = family != "patch"
    opt = torch.optim.Adam(trig.parameters(), lr=p.lr if family == "patch" else 0.01)
    targets = torch.arange(k, device=device)
    weight = torch.full((k,), trig.weight, device=device)
    loader = DeviceLoader(train, p.batch_size, shuffle=True, device=device, seed=seed)
    for epoch in range(p.epochs):
        hits = torch.zeros(k, device=device)
        others = torch.zeros(k, device=device)
        for x, y in loader:
            logits = net(trig(x))
            # summed over classes: each class's trigger gets its own gradient
            loss = (F.cross_entropy(logits, targets.repeat_interleave(len(x))) * k
                    + (weight * trig.sizes()).sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if adaptive:
                with torch.no_grad():
                    other = y[None] != targets[:, None]
                    sent = logits.argmax(1).view(k, len(x)) == targets[:, None]
                    hits += (sent & other).sum(1)
                    others += other.sum(1)
        reached = hits / others.clamp_min(1) >= p.target_success
        if adaptive:  # Neural Cleanse's cost schedule, on the device
            weight = torch.where(reached, weight * 1.5, weight / 1.5)
        done = share[0] + share[1] * (epoch + 1) / p.epochs
        progress(f"trigger scan ({family}): epoch {epoch + 1}/{p.epochs}", done)
    with torch.no_grad():
        size = trig.sizes().float().cpu()
        success = _success(net, trig, held_out, k, device)
    reached_list = reached.cpu().tolist() if adaptive else [True] * k
    smallest, ratio = _ratio(size, torch.tensor(reached_list))
    median = size.median()
    mad = (size - median).abs().median().clamp_min(1e-8) * 1.4826
    trig.requires_grad_(False)
    return ScanResult(family, size.tolist(), success, reached_list, smallest, ratio,
                      ((median - size) / mad).tolist(), p.max_ratio, trig)


def _ratio(size: torch.Tensor, reached: torch.Tensor) -> tuple[int, float]:
    """(the smallest reachable class, its size over the median of the others'), an
    unreachable class counting as infinitely large; no reachable class: ratio 1."""
    eff = torch.where(reached, size, torch.full_like(size, float("inf")))
    smallest = int(eff.argmin())
    if not bool(reached[smallest]) or len(size) < 2:
        return int(size.argmin()), 1.0
    others = torch.cat([eff[:smallest], eff[smallest + 1:]])
    return smallest, float(size[smallest] / others.median().clamp_min(1e-8))


def smallest_triggers(model: nn.Module, train: ImageSet, held_out: ImageSet, p: ScanParams,
                      device: torch.device, seed: int, progress: Progress = no_progress,
                      confirm: int | None = None) -> Scan:
    """Learn each family's per-class triggers on `train`, measure them on `held_out`; with
    `confirm` (a detected class) and not `p.exhaustive`, stop after the first family that
    flags that class."""
    net = frozen_copy(model, train_mode=False)
    g = torch.Generator().manual_seed(seed)
    if len(train) > p.max_images:
        train = train.subset(torch.randperm(len(train), generator=g)[:p.max_images])
    n = len(p.families)
    scan = Scan()
    for i, fam in enumerate(p.families):
        scan.results.append(_scan_family(net, fam, train, held_out, p, device, seed, progress,
                                         (i / n, 1 / n)))
        if confirm is not None and not p.exhaustive and scan.flags(confirm):
            break
    return scan


@torch.no_grad()
def _success(net: nn.Module, trig: _Trigger, ds: ImageSet, k: int, device: torch.device
             ) -> list[float]:
    """Per class j: the share of `ds`'s images of other classes its trigger sends to j
    (counted on the device, one copy to the host at the end)."""
    hits = torch.zeros(k, device=device)
    total = torch.zeros(k, device=device)
    classes = torch.arange(k, device=device)[:, None]
    for x, y in DeviceLoader(ds, 256, shuffle=False, device=device):
        pred = net(trig(x)).argmax(1).view(k, len(x))
        other = y.to(device)[None] != classes
        hits += ((pred == classes) & other).sum(1).float()
        total += other.sum(1).float()
    return (hits / total.clamp_min(1)).tolist()
