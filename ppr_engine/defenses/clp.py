"""CLP, Channel Lipschitzness-based Pruning (Zheng et al., ECCV 2022), data-free, as
BackdoorBench runs it (`defense/clp.py`, config `u: 3`).

For every convolution followed by a BatchNorm, each output channel's upper Lipschitz bound
is the largest singular value of its kernel scaled by |gamma / sqrt(running_var)|; channels
whose bound is more than `u` standard deviations above their layer's mean are pruned (the
BN's gamma and beta set to zero). Backdoor channels react strongly to a small input pattern:
a large Lipschitz constant. No data is used at all.

Departure: the pairing of a convolution with its BatchNorm follows the module order, as
BackdoorBench's does; a BatchNorm whose preceding convolution has another channel count
(a pre-activation block's first BN sees the block's input, not a convolution's output) is
skipped and counted in the record. Architectures without BatchNorm are refused.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import SpecError
from .base import DATA_FREE, DEFENSES, NEEDS_BATCHNORM, DefenseContext, Purified


class CLPParams(BaseModel):
    """CLP's one parameter (BackdoorBench's default)."""

    model_config = ConfigDict(extra="forbid")
    u: float = Field(3.0, ge=0, le=20, description="prune channels whose Lipschitz bound is "
                     "more than u standard deviations above the layer's mean")

    def work(self, n: int, classes: int) -> float:
        """No image passes: CLP reads weights only."""
        return 0.0


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(BN name, the convolution before it, the BN) in module order, where the channel
    counts match."""
    pairs, conv = [], None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            conv = m
        elif isinstance(m, nn.BatchNorm2d) and conv is not None \
                and conv.out_channels == m.num_features:
            pairs.append((name, conv, m))
    return pairs


def require_bn(model: nn.Module, method: str) -> None:
    """A clear refusal for a method that needs BatchNorm on an architecture without it."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise SpecError(f"{method} needs BatchNorm layers, and {model.arch_name} has none; "
                        f"choose another method for this architecture")


def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Each output channel's upper Lipschitz bound through the convolution and its BN."""
    w = conv.weight.detach().flatten(2)  # out x in x k*k
    scale = (bn.weight.detach() / bn.running_var.detach().add(bn.eps).sqrt()).abs()
    return torch.linalg.matrix_norm(w, ord=2) * scale


@DEFENSES.register("clp", params=CLPParams, summary="CLP: data-free pruning of channels with "
                   "an outlying Lipschitz bound", tags=(DATA_FREE, NEEDS_BATCHNORM), reference=(
                       "Zheng et al., Data-free Backdoor Removal based on Channel "
                       "Lipschitzness, ECCV 2022; BackdoorBench defense/clp.py"))
def clp(model, ctx: DefenseContext, p: CLPParams) -> Purified:
    """Prune the channels whose Lipschitz bound is an outlier in their layer."""
    require_bn(model, "clp")
    pruned, layers = 0, 0
    with torch.no_grad():
        for _, conv, bn in conv_bn_pairs(model):
            lips = channel_lipschitz(conv, bn)
            off = lips > lips.mean() + p.u * lips.std()
            bn.weight[off] = 0
            bn.bias[off] = 0
            pruned += int(off.sum())
            layers += 1
    skipped = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) - layers
    return Purified(model, {"pruned_channels": pruned, "layers": layers,
                            "bn_without_conv": skipped})
