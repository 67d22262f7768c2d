"""LMC, the backdoor-connected path: theta(lambda) = (1 - lambda) theta_pur + lambda theta_bd.

At each point BN statistics are recomputed on the clean set (`bn="recompute"`, the default)
or interpolated with the weights (`bn="interpolate"`); backdoor error (1 - ASR) and C-Acc
are measured. A robust purification keeps a high backdoor error far along the path; the
scalar is the smallest lambda at which ASR exceeds 50% (None: never on the path).

`batched` evaluates every point of a path as one `torch.func` vmap over the points' stacked
weights (`LMCSpec.batched_on`: on CUDA, where eleven evaluations of a small model leave the
GPU idle). The recomputed BatchNorm statistics are the same cumulative average: BatchNorm's
own (momentum None) reads its batch count on the host, which vmap cannot, so the batch sets
momentum 1/k before the k-th batch, the same update.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..data import DeviceLoader, ImageSet
from ..metrics import attack_success_rate, clean_accuracy
from ..train import Progress, autocast, eval_batches, no_progress


@dataclass
class PathPoint:
    """Metrics at one point of the path."""

    lam: float
    c_acc: float
    asr: float

    @property
    def backdoor_error(self) -> float:
        """1 - ASR."""
        return 1.0 - self.asr


def interpolate(pur: nn.Module, bd: nn.Module, lam: float, *, buffers: bool) -> nn.Module:
    """A model at (1 - lam) pur + lam bd; buffers interpolated too when `buffers`."""
    out = copy.deepcopy(pur)
    sp, sb = pur.state_dict(), bd.state_dict()
    param_names = {n for n, _ in pur.named_parameters()}
    mixed = {}
    for k, v in sp.items():
        if v.is_floating_point() and (k in param_names or buffers):
            mixed[k] = (1 - lam) * v + lam * sb[k].to(v.device)
        else:
            mixed[k] = v
    out.load_state_dict(mixed)
    return out


def bezier(p0: torch.Tensor, pc: torch.Tensor, p1: torch.Tensor, t: float) -> torch.Tensor:
    """The quadratic Bezier curve through end points p0, p1 with control point pc, at t:
    (1 - t)^2 p0 + 2 t (1 - t) pc + t^2 p1 (MCR's path between two modes; t = 0 and 1 are
    the end points, as lambda is on the straight LMC path)."""
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * pc + t ** 2 * p1


@torch.no_grad()
def recompute_bn(model: nn.Module, data: ImageSet, device: torch.device) -> None:
    """Reset BN running statistics and re-estimate them (cumulative) on `data`."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in DeviceLoader(data, 256, shuffle=False, device=device):
        model(x)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


def path_point(pur: nn.Module, bd: nn.Module, lam: float, clean: ImageSet, test: ImageSet,
               triggered: ImageSet, target: int | torch.Tensor, *, bn: str,
               device: torch.device) -> PathPoint:
    """C-Acc and ASR of the model at `lam` on the path (BN statistics as `bn` says)."""
    model = interpolate(pur, bd, lam, buffers=(bn == "interpolate")).to(device)
    if bn == "recompute":
        recompute_bn(model, clean, device)
    return PathPoint(lam, clean_accuracy(model, test), attack_success_rate(model, triggered,
                                                                           target))


def backdoored_end(bd: nn.Module, clean: ImageSet, test: ImageSet, triggered: ImageSet,
                   target: int | torch.Tensor, *, bn: str, device: torch.device) -> PathPoint:
    """The path's lambda = 1 point, the submitted model itself: the same for every purified
    model, so an audit computes it once per trigger and hands it to `trace_path`."""
    return path_point(bd, bd, 1.0, clean, test, triggered, target, bn=bn, device=device)


def trace_path(pur: nn.Module, bd: nn.Module, clean: ImageSet, test: ImageSet,
               triggered: ImageSet, target: int | torch.Tensor, *, points: int = 11,
               bn: str = "recompute", device: torch.device,
               progress: Progress = no_progress, end: PathPoint | None = None,
               batched: bool = False) -> list[PathPoint]:
    """Metrics at `points` evenly spaced lambdas from the purified (0) to the backdoored (1)
    (`target`: the backdoor label, one class or one per triggered image); `end`, the
    lambda = 1 point from `backdoored_end` for the same data and `bn`, is used as it is;
    `batched`: every other point in one vmapped evaluation."""
    lams = [i / (points - 1) for i in range(points)]
    if batched:
        todo = [lam for lam in lams if not (lam == 1.0 and end is not None)]
        found = dict(zip(todo, points_together(pur, bd, todo, clean, test, triggered, target,
                                               bn=bn, device=device), strict=True))
        progress("lmc: every lambda at once", 1.0)
        return [found.get(lam, end) for lam in lams]  # type: ignore[misc]
    out = []
    for lam in lams:
        out.append(end if lam == 1.0 and end is not None else
                   path_point(pur, bd, lam, clean, test, triggered, target, bn=bn,
                              device=device))
        progress(f"lmc: lambda {lam:.2f}", len(out) / points)
    return out


@torch.no_grad()
def points_together(pur: nn.Module, bd: nn.Module, lams: list[float], clean: ImageSet,
                    test: ImageSet, triggered: ImageSet, target: int | torch.Tensor, *,
                    bn: str, device: torch.device) -> list[PathPoint]:
    """`path_point` at every lambda of `lams`, as one vmapped model: each point's model
    from `interpolate`, its BatchNorm statistics recomputed (or interpolated), C-Acc and ASR
    from one pass over each evaluation set."""
    from .batched import stacked_state

    points = [interpolate(pur, bd, lam, buffers=(bn == "interpolate")).to(device)
              for lam in lams]
    base = points[0]
    bns = [m for m in base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    recompute = bn == "recompute" and bool(bns)
    if recompute:
        for model in points:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
    params, buffers = stacked_state(points)
    run = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    if recompute:
        _recompute_stacked_bn(base, bns, params, buffers, run, clean, device)
    base.eval()

    def predictions(ds: ImageSet) -> torch.Tensor:  # (points, images), on the CPU
        out = []
        for x in eval_batches(ds, device):
            with autocast(device):
                out.append(run(params, buffers, x).argmax(-1))
        return torch.cat(out, 1).cpu() if out else torch.empty(len(lams), 0, dtype=torch.long)

    test_hits = (predictions(test) == test.y.cpu()).float().mean(1)
    sent = (predictions(triggered) == torch.as_tensor(target).cpu()).float()
    asr = sent.mean(1) if sent.shape[1] else torch.full((len(lams),), float("nan"))
    return [PathPoint(lam, float(c), float(a)) for lam, c, a in
            zip(lams, test_hits, asr, strict=True)]


def _recompute_stacked_bn(base: nn.Module, bns: list[nn.Module], params: dict,
                          buffers: dict, run, clean: ImageSet, device: torch.device) -> None:
    """`recompute_bn` for every point at once, from reset statistics: the cumulative average
    over `clean`'s batches (momentum 1/k at the k-th batch, BatchNorm's own update)."""
    saved = [m.momentum for m in bns]
    base.train()
    try:
        for k, (x, _) in enumerate(DeviceLoader(clean, 256, shuffle=False, device=device)):
            for m in bns:
                m.momentum = 1.0 / (k + 1)
            run(params, buffers, x)
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


def lambda50(path: list[PathPoint]) -> float | None:
    """Smallest lambda at which ASR exceeds 50% (None if it never does)."""
    return next((p.lam for p in path if p.asr > 0.5), None)
