"""MCR, Mode Connectivity Repair (Zhao et al., ICLR 2020), as BackdoorBench runs it
(`defense/mcr.py`, config: a quadratic Bezier curve, 3 bends, 100 curve epochs, endpoints
fine-tuned 100 epochs at lr 0.01).

Two end points: the backdoored model and a copy fine-tuned on the defender's clean set.
The curve's control point, initialized at their midpoint, is trained so that models along
the whole curve fit the clean set: each step samples t in [0, 1] and minimizes CE of the
model at theta(t) = (1 - t)^2 theta_0 + 2 t (1 - t) theta_c + t^2 theta_1 (`ppr.lmc.bezier`).
Along such a path the clean loss stays low while the backdoor, which lives near the end
points, fades in between: the repaired model is the point at `t`, its BatchNorm statistics
re-estimated on the clean set (as LMC does).

Departures: the point is `t` = 0.4 by default, a fixed choice (the paper picks it from a
plot of clean accuracy and ASR along the curve, which a defender without the trigger cannot
draw; BackdoorBench evaluates every point on the test set); the curve is trained with SGD
lr 0.01, momentum 0.9, cosine (BackdoorBench's curve lr, 3e-5, barely moves it at this
scale); the end point's fine-tuning budget is `ft_epochs`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from ..bounds import budget
from ..data import DeviceLoader, device_generator
from ..ppr.lmc import bezier, recompute_bn
from ..train import cosine, fit, sgd
from .base import DEFENSES, DefenseContext, Purified, TuneParams


class MCRParams(TuneParams):
    """MCR's parameters (BackdoorBench's budgets)."""

    epochs: int = budget("epochs", 100, description="curve epochs")
    ft_epochs: int = budget("epochs", 100, description="fine-tuning of the second end point")
    t: float = Field(0.4, gt=0, lt=1, description="the point of the curve returned")

    def work(self, n: int, classes: int) -> float:
        """The end point's fine-tuning and the curve's training."""
        return float((self.ft_epochs + self.epochs) * n)


def point(model: nn.Module, ends: tuple[dict, dict], control: dict, t: float) -> nn.Module:
    """A copy of `model` with the parameters at t on the curve."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, q in out.named_parameters():
            q.copy_(bezier(ends[0][name], control[name], ends[1][name], t))
    return out


@DEFENSES.register("mcr", params=MCRParams, summary="MCR: a point on a trained Bezier curve "
                   "between the backdoored model and a fine-tuned copy", tags=("mitigation",),
                   reference=("Zhao et al., Bridging Mode Connectivity in Loss Landscapes and "
                              "Adversarial Robustness, ICLR 2020; BackdoorBench defense/mcr.py"))
def mcr(model, ctx: DefenseContext, p: MCRParams) -> Purified:
    """Fine-tune an end point, train the curve's control point, return the point at t."""
    theta0 = {n: q.detach().clone() for n, q in model.named_parameters()}
    tuned = fit(copy.deepcopy(model), ctx.clean, device=ctx.device, seed=ctx.seed,
                progress=ctx.progress, stage="mcr end point",
                **{**p.fit_kwargs(), "epochs": p.ft_epochs})
    theta1 = {n: q.detach().clone() for n, q in tuned.named_parameters()}
    control = {n: ((theta0[n] + theta1[n]) / 2).requires_grad_(True) for n in theta0}
    buffers = dict(model.named_buffers())
    opt = sgd(control.values(), p.lr, p.momentum, p.weight_decay)
    loader = DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=p.augment,
                          device=ctx.device, seed=ctx.seed)
    sched = cosine(opt, p.epochs * len(loader))
    g = device_generator("cpu", ctx.seed)
    model.train()
    for epoch in range(p.epochs):
        for x, y in loader:
            t = float(torch.rand((), generator=g))
            params = {n: bezier(theta0[n], control[n], theta1[n], t) for n in theta0}
            loss = F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        ctx.progress(f"mcr: curve epoch {epoch + 1}/{p.epochs}", (epoch + 1) / p.epochs)
    repaired = point(model, (theta0, theta1), {n: c.detach() for n, c in control.items()}, p.t)
    recompute_bn(repaired, ctx.clean, ctx.device)
    return Purified(repaired, {"t": p.t, "end_point_epochs": p.ft_epochs,
                               "curve_epochs": p.epochs})
