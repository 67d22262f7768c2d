"""NPD, Neural Polarizer (Zhu et al., NeurIPS 2023), as BackdoorBench runs it
(`defense/npd.py`, config: the polarizer after the last block's first convolution,
lambda 1 / 0.4 / 0.4, L2 trigger norm 3 in normalized units, 2 PGD steps, 5 warm-up
epochs, 50 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine).

A small linear layer, the *polarizer*, is inserted into the frozen backdoored model and
trained to keep clean images' predictions and to make adversarially perturbed images (what
a trigger does) lose their effect: each batch, PGD on the polarized model finds an L2
perturbation of radius `trigger_norm` that maximizes CE; the loss is lambda_1 CE on clean
images, lambda_2 CE of the perturbed images under their true labels, and lambda_3 -log(1 -
p) with p the polarized model's probability of the label the perturbation reached (where
it differs from the true one). The first `warm_epochs` use the clean term alone.

The polarizer is a 1x1 convolution with a bias, initialized to the identity, placed after
the model's last convolution that feeds a BatchNorm (in the last stage). Once trained
it is folded into that convolution's weights and the BatchNorm's running mean, so the
purified model has the architecture's own state dict (RA, QRA and LMC treat it like any
other). Departures: BackdoorBench's polarizer is a convolution and a BatchNorm (not
foldable exactly); the radius is in pixel units, 0.75 (3 in CIFAR's normalized units
times its 0.25 standard deviation). Architectures without such a convolution-BatchNorm pair
(ViT) are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..bounds import budget
from ..data import DeviceLoader
from ..errors import SpecError
from ..train import cosine, sgd
from .base import DEFENSES, NEEDS_BATCHNORM, DefenseContext, Purified, TuneParams
from .clp import conv_bn_pairs


class NPDParams(TuneParams):
    """NPD's parameters (BackdoorBench's defaults)."""

    epochs: int = budget("epochs", 50)
    warm_epochs: int = budget("epochs", 5, ge=0, description="epochs of the clean term alone")
    lambda_1: float = Field(1.0, ge=0, le=100)
    lambda_2: float = Field(0.4, ge=0, le=100)
    lambda_3: float = Field(0.4, ge=0, le=100)
    trigger_norm: float = Field(0.75, gt=0, le=100, description="L2 radius of the "
                                "perturbation, pixel units")
    steps: int = budget("iterations", 2, le=100, description="PGD steps per batch")

    def work(self, n: int, classes: int) -> float:
        """Per batch: PGD, then the clean and perturbed passes."""
        return float(self.epochs * n * (self.steps + 2))


class Polarizer(nn.Module):
    """A 1x1 convolution with a bias, the identity at start."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(channels)[:, :, None, None])
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def polarizer_site(model: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The model's last convolution that feeds a BatchNorm (in the last stage of every
    registered CNN)."""
    pairs = conv_bn_pairs(model)
    if not pairs:
        raise SpecError(f"npd inserts its polarizer after a convolution followed by "
                        f"BatchNorm, and {model.arch_name} has none")
    _, conv, bn = pairs[-1]
    return conv, bn


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, pol: Polarizer) -> None:
    """Fold the polarizer into the convolution's weights (and its bias into the BN's
    running mean: in eval mode BN(z + b) with mean mu is BN(z) with mean mu - b)."""
    w = pol.conv.weight.detach()[:, :, 0, 0]
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("oc,c...->o...", w, conv.weight))
        if conv.bias is not None:
            conv.bias.copy_(w @ conv.bias + pol.conv.bias)
        else:
            bn.running_mean.sub_(pol.conv.bias.detach())


def pgd_l2(model, x, y, radius: float, steps: int) -> torch.Tensor:
    """An L2-bounded perturbation maximizing CE (step radius/steps x 2.5, projected)."""
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta += 2.5 * radius / steps * g
            norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta *= (radius / norm).clamp(max=1.0)
    return (x + delta.detach()).clamp(0, 1)


@DEFENSES.register("npd", params=NPDParams, summary="NPD: a linear polarizer trained in the "
                   "frozen model against perturbations, then folded in",
                   tags=("mitigation", NEEDS_BATCHNORM),
                   reference=("Zhu et al., Neural Polarizer: A Lightweight and Effective "
                              "Backdoor Defense via Purifying Poisoned Features, NeurIPS "
                              "2023; BackdoorBench defense/npd.py"))
def npd(model, ctx: DefenseContext, p: NPDParams) -> Purified:
    """Train the polarizer with the backbone frozen, then fold it into the model."""
    conv, bn = polarizer_site(model)
    pol = Polarizer(conv.out_channels).to(ctx.device)
    handle = conv.register_forward_hook(lambda m, a, out: pol(out))
    for q in model.parameters():
        q.requires_grad_(False)
    model.eval()  # the backbone is frozen, its BatchNorms too
    loader = DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=p.augment,
                          device=ctx.device, seed=ctx.seed)
    opt = sgd(pol.parameters(), p.lr, p.momentum, p.weight_decay)
    sched = cosine(opt, p.epochs * len(loader))
    try:
        for epoch in range(p.epochs):
            for x, y in loader:
                loss = p.lambda_1 * F.cross_entropy(model(x), y)
                if epoch >= p.warm_epochs:
                    xa = pgd_l2(model, x, y, p.trigger_norm, p.steps)
                    logits = model(xa)
                    reached = logits.detach().argmax(1)
                    away = reached != y
                    prob = logits.softmax(1).gather(1, reached[:, None]).squeeze(1)
                    loss = (loss + p.lambda_2 * F.cross_entropy(logits, y) + p.lambda_3
                            * (-(1 - prob).clamp_min(1e-6).log() * away).mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            ctx.progress(f"npd: epoch {epoch + 1}/{p.epochs}", (epoch + 1) / p.epochs)
    finally:
        handle.remove()
        for q in model.parameters():
            q.requires_grad_(True)
    fold(conv, bn, pol)
    return Purified(model, {"site_channels": conv.out_channels,
                            "polarizer_distance_from_identity": round(float(
                                (pol.conv.weight.detach()[:, :, 0, 0] - torch.eye(
                                    conv.out_channels, device=ctx.device)).norm()), 4)})
