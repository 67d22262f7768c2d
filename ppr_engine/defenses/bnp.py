"""BNP, BatchNorm-statistics neuron pruning (Zheng et al., NeurIPS 2022, *Pre-activation
Distributions Expose Backdoor Neurons*), as BackdoorBench runs it (`defense/bnp.py`, config
`u: 3`).

A BatchNorm's running statistics were collected on the training set, poisoned images
included; a backdoor neuron's pre-activations on those images differ from its
pre-activations on clean images. For every BatchNorm, the per-channel mean and variance of
its input on one batch of the defender's clean images are compared with its running
statistics by the KL divergence of the two Gaussians; channels whose divergence is more
than `u` standard deviations above the layer's mean are pruned (gamma and beta zeroed).

Departures: the KL divergence is the textbook one (BackdoorBench's formula doubles its log
term); the clean batch is the first `batch_size` images of the defender's set in a fixed
shuffle. It needs that one batch: with no clean data it says so (CLP is the data-free
pruning here). Architectures without BatchNorm are refused.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..bounds import budget
from ..data import to_float
from ..errors import SpecError
from .base import DEFENSES, NEEDS_BATCHNORM, DefenseContext, Purified
from .clp import require_bn


class BNPParams(BaseModel):
    """BNP's parameters (BackdoorBench's defaults)."""

    model_config = ConfigDict(extra="forbid")
    u: float = Field(3.0, ge=0, le=20, description="prune channels whose divergence is more "
                     "than u standard deviations above the layer's mean")
    batch_size: int = budget("batch", 256, description="clean images whose statistics are "
                             "compared with the running ones")

    def work(self, n: int, classes: int) -> float:
        """One forward pass of one batch."""
        return min(n, self.batch_size) / 3


def gaussian_kl(mean_p: torch.Tensor, var_p: torch.Tensor, mean_q: torch.Tensor,
                var_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, var_p) || N(mean_q, var_q)), per channel."""
    return 0.5 * ((var_q / var_p).log() + (var_p + (mean_p - mean_q).pow(2)) / var_q - 1)


@DEFENSES.register("bnp", params=BNPParams, summary="BNP: prune neurons whose clean "
                   "pre-activations diverge from their BN statistics",
                   tags=("mitigation", NEEDS_BATCHNORM),
                   reference=("Zheng et al., Pre-activation Distributions Expose Backdoor "
                              "Neurons, NeurIPS 2022; BackdoorBench defense/bnp.py"))
def bnp(model, ctx: DefenseContext, p: BNPParams) -> Purified:
    """Prune the BN channels whose clean statistics are outliers against the running ones."""
    require_bn(model, "bnp")
    if len(ctx.clean) == 0:
        raise SpecError("bnp compares one batch of the defender's clean images with the "
                        "BN statistics; with no clean data use clp, the data-free pruning")
    g = torch.Generator().manual_seed(ctx.seed)
    pick = torch.randperm(len(ctx.clean), generator=g)[:p.batch_size]
    x = to_float(ctx.clean.x[pick.to(ctx.clean.x.device)]).to(ctx.device)
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for name, bn in bns:
        def hook(module, args, name=name):
            h = args[0].detach().float()
            stats[name] = (h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False))
        hooks.append(bn.register_forward_pre_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    pruned = 0
    with torch.no_grad():
        for name, bn in bns:
            mean_b, var_b = stats[name]
            kl = gaussian_kl(mean_b, var_b.add(bn.eps), bn.running_mean.float(),
                             bn.running_var.float().add(bn.eps))
            off = kl > kl.mean() + p.u * kl.std()
            bn.weight[off] = 0
            bn.bias[off] = 0
            pruned += int(off.sum())
    return Purified(model, {"pruned_channels": pruned, "layers": len(bns),
                            "clean_images": len(pick)})
