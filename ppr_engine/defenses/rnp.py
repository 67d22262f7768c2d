"""RNP, Reconstructive Neuron Pruning (Li et al., ICML 2023), as BackdoorBench runs it
(`defense/rnp.py` and its argument defaults).

(1) Unlearn: gradient ascent on the defender's clean images (SGD lr 0.01, momentum 0.9,
weight decay 5e-4) until their accuracy is at most `clean_threshold` (0.2), at most
`unlearning_epochs` (20). Unlearning erases the clean features first and leaves the
backdoor. (2) Recover: on the unlearned model, learn a mask in [0, 1] per BatchNorm neuron
(SGD lr 0.2, momentum 0.9, `recovering_epochs` 20, loss alpha x CE on the clean images,
weights frozen): neurons that must stay off to recover clean accuracy are the backdoor's.
(3) Prune: in the *original* model, zero the gamma of neurons whose mask is at most a
threshold.

Departure: the threshold is chosen, as ANP's is here, as the largest of 0, 0.05, ..., 0.90
whose model keeps the defender's validation accuracy within `acc_ratio` (the reference code
selects with test-set numbers). Architectures without BatchNorm are refused.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..bounds import budget
from ..data import DeviceLoader
from .anp import choose_threshold, wrap_bn
from .base import DEFENSES, NEEDS_BATCHNORM, DefenseContext, Purified
from .clp import require_bn
from .tsbd import clean_unlearn


class RNPParams(BaseModel):
    """RNP's parameters (BackdoorBench's defaults)."""

    model_config = ConfigDict(extra="forbid")
    unlearning_lr: float = Field(0.01, gt=0, le=10)
    unlearning_epochs: int = budget("epochs", 20, description="at most this many epochs of "
                                    "clean unlearning")
    clean_threshold: float = Field(0.2, ge=0, le=1, description="stop unlearning at this "
                                   "clean accuracy")
    recovering_lr: float = Field(0.2, gt=0, le=10, description="mask learning rate")
    recovering_epochs: int = budget("epochs", 20, description="mask epochs")
    alpha: float = Field(0.2, gt=0, le=10, description="weight of the recovering loss")
    batch_size: int = budget("batch", 128)
    prune_max: float = Field(0.9, gt=0, le=1)
    prune_step: float = Field(0.05, ge=0.001, le=1)
    acc_ratio: float = Field(0.1, gt=0, lt=1, description="allowed relative drop of the "
                             "defender's validation accuracy")

    def work(self, n: int, classes: int) -> float:
        """Unlearning, mask recovery, and one validation pass per threshold."""
        return float((self.unlearning_epochs + self.recovering_epochs) * n
                     + (self.prune_max / self.prune_step + 1) * n / 3)


def recover_masks(unlearned, ctx: DefenseContext, p: RNPParams) -> dict[str, torch.Tensor]:
    """Per-neuron masks that recover the unlearned model's clean accuracy."""
    work = copy.deepcopy(unlearned)
    for q in work.parameters():
        q.requires_grad_(False)
    layers = wrap_bn(work)
    masks = [nb.mask for _, nb in layers]
    for m in masks:
        m.requires_grad_(True)
    opt = torch.optim.SGD(masks, lr=p.recovering_lr, momentum=0.9)
    loader = DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=True,
                          device=ctx.device, seed=ctx.seed)
    work.train()
    for epoch in range(p.recovering_epochs):
        for x, y in loader:
            loss = p.alpha * F.cross_entropy(work(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                torch._foreach_clamp_min_(masks, 0.0)
                torch._foreach_clamp_max_(masks, 1.0)
        ctx.progress(f"rnp: recovering epoch {epoch + 1}/{p.recovering_epochs}",
                     0.5 + 0.4 * (epoch + 1) / p.recovering_epochs)
    return {name: nb.mask.detach().clone() for name, nb in layers}


@DEFENSES.register("rnp", params=RNPParams, summary="RNP: unlearn, recover neuron masks, prune "
                   "the neurons the recovery keeps off", tags=("mitigation", NEEDS_BATCHNORM),
                   reference=("Li et al., Reconstructive Neuron Pruning for Backdoor Defense, "
                              "ICML 2023; BackdoorBench defense/rnp.py"))
def rnp(model, ctx: DefenseContext, p: RNPParams) -> Purified:
    """Unlearn, recover masks on the unlearned model, prune the original at a threshold."""
    require_bn(model, "rnp")
    unlearned, record = clean_unlearn(model, ctx, lr=p.unlearning_lr, batch_size=p.batch_size,
                                      stop_acc=p.clean_threshold,
                                      max_epochs=p.unlearning_epochs, weight_decay=5e-4)
    ctx.progress("rnp: unlearned", 0.5)
    masks = recover_masks(unlearned, ctx, p)
    chosen, pruned = choose_threshold(model, masks, ctx.val, p.prune_max, p.prune_step,
                                      p.acc_ratio)
    return Purified(chosen, {**record, **pruned})
