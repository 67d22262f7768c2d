"""FP, Fine-Pruning: prune the least-active last-stage channels, then fine-tune.

Channels are the inputs of the final linear layer (BackdoorBench masks the head's
columns). Pruning goes 1% of channels per step while held-out *validation* accuracy stays
within `acc_ratio` (relative) of the unpruned model; the last passing mask is kept. This
departs from BackdoorBench on purpose: it stops on clean-test accuracy and keeps the mask
of the failing step (REFERENCE-ALGORITHMS.md §4).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..data import DeviceLoader
from ..models import features, head_of
from ..train import accuracy, autocast, eval_batches, fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams


class FPParams(TuneParams):
    """FP parameters."""

    acc_ratio: float = Field(0.1, gt=0, lt=1, description="allowed relative val-acc drop")
    prune_step: float = Field(0.01, ge=0.001, le=0.5, description="share of channels per step")
    max_prune: float = Field(0.95, gt=0, le=1, description="never prune more than this share")

    def work(self, n: int, classes: int) -> float:
        """Activations, one validation pass per pruning step, then fine-tuning."""
        return float(self.epochs * n + (self.max_prune / self.prune_step + 1) * n / 3)


@torch.no_grad()
def mean_activations(model, ctx: DefenseContext) -> torch.Tensor:
    """Mean penultimate activation per channel over the defender's clean set."""
    model.eval()
    total = None
    for x, _ in DeviceLoader(ctx.clean, 512, shuffle=False, device=ctx.device):
        feats, _ = features(model, x)
        s = feats.float().sum(0)
        total = s if total is None else total + s
    return total / len(ctx.clean)


@torch.no_grad()
def head_inputs(model, data) -> list[torch.Tensor]:
    """The head's input for each of `data`'s evaluation batches (`eval_batches`, under the
    same autocast as `predict`): pruning changes only the head, so each pruning step's
    validation accuracy needs the head alone, not a forward pass through the body."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for x in eval_batches(data, device):
        with autocast(device):
            out.append(features(model, x)[0])
    return out


@torch.no_grad()
def head_accuracy(head, inputs: list[torch.Tensor], labels: torch.Tensor) -> float:
    """The accuracy `accuracy(model, data)` gives, from the cached head inputs."""
    device = head.weight.device
    with autocast(device):
        predicted = torch.cat([head(f).argmax(1) for f in inputs]).cpu()
    return float((predicted == labels.cpu()).float().mean())


@DEFENSES.register("fp", params=FPParams, summary="FP: fine-pruning of dormant channels",
                   tags=("mitigation",), reference=(
                       "Liu et al., Fine-Pruning, RAID 2018; BackdoorBench defense/fp.py"))
def fp(model, ctx: DefenseContext, p: FPParams) -> Purified:
    """Mask head columns of dormant channels (chosen on val accuracy), then fine-tune."""
    head = head_of(model)
    order = mean_activations(model, ctx).argsort()  # least active first
    w0 = head.weight.detach().clone()
    acc0 = accuracy(model, ctx.val)
    val_inputs = head_inputs(model, ctx.val)
    step = max(1, math.ceil(p.prune_step * head.in_features))
    keep_mask = torch.ones(head.in_features, device=w0.device)
    pruned = 0
    limit = int(p.max_prune * head.in_features)
    for n in range(step, limit + 1, step):
        mask = torch.ones_like(keep_mask)
        mask[order[:n]] = 0
        with torch.no_grad():
            head.weight.copy_(w0 * mask)
        acc = head_accuracy(head, val_inputs, ctx.val.y)
        if (acc0 - acc) / max(acc0, 1e-8) > p.acc_ratio:
            break
        keep_mask, pruned = mask, n
    with torch.no_grad():
        head.weight.copy_(w0 * keep_mask)
    ctx.progress(f"fp: pruned {pruned}/{head.in_features} channels", 0.1)

    def reapply() -> None:
        with torch.no_grad():
            head.weight.mul_(keep_mask)

    fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        after_step=reapply, stage="fp", **p.fit_kwargs())
    return Purified(model, {"pruned_channels": pruned, "channels": head.in_features,
                            "val_acc_unpruned": acc0})
