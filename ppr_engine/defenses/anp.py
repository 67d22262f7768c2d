"""ANP, Adversarial Neuron Pruning: learn a mask per BN neuron under adversarial
multiplicative noise, then prune the neurons with small masks.

BN layers are swapped for noisy ones computing BN with gamma * (m + delta) and
beta * (1 + xi). Per batch: draw delta, xi ~ U[-eps, eps]; one signed ascent step on CE
for the noise; mask loss alpha * CE(clean mask) + (1 - alpha) * CE(noisy); SGD on the mask
only, clamped to [0, 1]. Pruning sets gamma to 0 on a fresh copy for thresholds 0..0.9.
Departure from BackdoorBench (which picks on test ASR): the threshold is the largest one
whose held-out validation accuracy drops by at most `acc_ratio` (relative).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..bounds import budget
from ..data import DeviceLoader
from ..train import accuracy, autocast
from .base import DEFENSES, DefenseContext, Purified


class ANPParams(BaseModel):
    """ANP parameters (mask lr 0.2 as in the authors' release; BackdoorBench uses 0.01)."""

    model_config = ConfigDict(extra="forbid")
    eps: float = Field(0.4, ge=0, le=10, description="noise radius")
    steps: int = budget("iterations", 1, le=100, description="noise ascent steps")
    alpha: float = Field(0.2, ge=0, le=1, description="clean/noisy trade-off")
    iterations: int = budget("iterations", 2000, le=200_000, description="mask optimization "
                             "steps")
    lr: float = Field(0.2, gt=0, le=10)
    batch_size: int = budget("batch", 128)
    prune_max: float = Field(0.9, gt=0, le=1)
    prune_step: float = Field(0.05, ge=0.001, le=1, description="threshold step (at most "
                              "1,000 thresholds are tried)")
    acc_ratio: float = Field(0.1, gt=0, lt=1)

    def work(self, n: int, classes: int) -> float:
        """Mask steps (each: noise ascent steps, then a clean and a noisy pass), then one
        validation pass per pruning threshold."""
        thresholds = self.prune_max / self.prune_step + 1
        return float(self.iterations * self.batch_size * (self.steps + 2) + thresholds * n / 3)


class NoisyBN(nn.Module):
    """A BatchNorm2d whose gamma is masked and whose gamma/beta can carry noise."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn
        c = bn.num_features
        self.mask = nn.Parameter(torch.ones(c, device=bn.weight.device))
        self.w_noise = nn.Parameter(torch.zeros(c, device=bn.weight.device))
        self.b_noise = nn.Parameter(torch.zeros(c, device=bn.weight.device))
        self.noisy = False

    def forward(self, x):
        bn = self.bn
        w = bn.weight * (self.mask + (self.w_noise if self.noisy else 0))
        b = bn.bias * (1 + self.b_noise) if self.noisy else bn.bias
        return F.batch_norm(x, bn.running_mean, bn.running_var, w, b, self.training,
                            bn.momentum if bn.momentum is not None else 0.1, bn.eps)


def wrap_bn(model: nn.Module) -> list[tuple[str, NoisyBN]]:
    """Replace every BatchNorm2d in `model` by a NoisyBN; return them with their names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                nb = NoisyBN(child)
                setattr(module, child_name, nb)
                wrapped.append((f"{name}.{child_name}".lstrip("."), nb))
    return wrapped


def learn_masks(model: nn.Module, ctx: DefenseContext, p: ANPParams) -> dict[str, torch.Tensor]:
    """Optimize the neuron masks; returns mask values by BN layer name."""
    work = copy.deepcopy(model)
    for q in work.parameters():
        q.requires_grad_(False)
    layers = wrap_bn(work)
    if not layers:
        return {}
    masks = [nb.mask for _, nb in layers]
    noises = [t for _, nb in layers for t in (nb.w_noise, nb.b_noise)]
    for t in masks + noises:
        t.requires_grad_(True)
    mask_opt = torch.optim.SGD(masks, lr=p.lr, momentum=0.9)
    work.train()
    done = 0
    loader = DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=True,
                          device=ctx.device, seed=ctx.seed, drop_last=len(ctx.clean) > p.batch_size)
    while done < p.iterations:
        for x, y in loader:
            with torch.no_grad():
                for t in noises:
                    t.uniform_(-p.eps, p.eps)
            for nb in (nb for _, nb in layers):
                nb.noisy = True
            for _ in range(p.steps):
                with autocast(ctx.device):
                    loss = -F.cross_entropy(work(x), y)
                grads = torch.autograd.grad(loss, noises)
                with torch.no_grad():  # descent on -CE = ascent on CE
                    torch._foreach_sub_(noises, torch._foreach_mul(
                        torch._foreach_sign(grads), p.eps / p.steps))
            with autocast(ctx.device):
                noisy_loss = F.cross_entropy(work(x), y)
                for _, nb in layers:
                    nb.noisy = False
                clean_loss = F.cross_entropy(work(x), y)
            mask_opt.zero_grad(set_to_none=True)
            (p.alpha * clean_loss + (1 - p.alpha) * noisy_loss).backward()
            mask_opt.step()
            with torch.no_grad():
                torch._foreach_clamp_min_(masks, 0.0)
                torch._foreach_clamp_max_(masks, 1.0)
            done += 1
            if done % 50 == 0:
                ctx.progress(f"anp: mask step {done}/{p.iterations}", 0.8 * done / p.iterations)
            if done >= p.iterations:
                break
    return {name: nb.mask.detach().clone() for name, nb in layers}


def prune(model: nn.Module, masks: dict[str, torch.Tensor], threshold: float) -> int:
    """Zero BN gamma of neurons whose mask is <= threshold; return how many were pruned."""
    count = 0
    with torch.no_grad():
        for name, m in masks.items():
            bn = model.get_submodule(name)
            off = m <= threshold
            bn.weight[off] = 0
            count += int(off.sum())
    return count


def choose_threshold(model: nn.Module, masks: dict[str, torch.Tensor], val, prune_max: float,
                     prune_step: float, acc_ratio: float) -> tuple[nn.Module, dict]:
    """Prune at every threshold 0, step, ..., prune_max and keep the largest whose validation
    accuracy stays within `acc_ratio` (relative) of the unpruned model's (never the test
    set, unlike the reference code's selection); the chosen model and the record."""
    acc0 = accuracy(model, val)
    chosen, chosen_model, chosen_count = 0.0, model, 0
    trace = []
    for i in range(int(round(prune_max / prune_step)) + 1):
        t = round(i * prune_step, 6)
        candidate = copy.deepcopy(model)
        n = prune(candidate, masks, t)
        acc = accuracy(candidate, val)
        trace.append({"threshold": t, "pruned": n, "val_acc": acc})
        if (acc0 - acc) / max(acc0, 1e-8) <= acc_ratio:
            chosen, chosen_model, chosen_count = t, candidate, n
    neurons = sum(len(m) for m in masks.values())
    return chosen_model, {"threshold": chosen, "pruned_neurons": chosen_count,
                          "neurons": neurons, "trace": trace}


@DEFENSES.register("anp", params=ANPParams, summary="ANP: adversarial neuron pruning",
                   tags=("mitigation",), reference=(
                       "Wu and Wang, Adversarial Neuron Pruning, NeurIPS 2021; BackdoorBench "
                       "defense/anp.py"))
def anp(model, ctx: DefenseContext, p: ANPParams) -> Purified:
    """Learn masks, then prune at the largest threshold that keeps validation accuracy."""
    masks = learn_masks(model, ctx, p)
    chosen, record = choose_threshold(model, masks, ctx.val, p.prune_max, p.prune_step,
                                      p.acc_ratio)
    return Purified(chosen, record)
