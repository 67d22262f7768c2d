"""I-BAU: minimax unlearning with an implicit hypergradient (BackdoorBench's variant).

Each round: (a) one pass of SGD (lr 10) on a universal perturbation delta maximizing CE of
the model's own predictions with penalty 0.001 ||delta||^2; (b) for each cached batch, one
Adam step on the model with the hypergradient of the outer loss CE(f(x + S delta), y)
(delta added to 1% of the batch) through K fixed-point iterations of
Phi(delta) = delta - 0.1 grad_delta g. The model stays in eval mode. delta lives in the
model's normalized input space (added in pixel space as delta * std), as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..bounds import budget
from ..data import DeviceLoader, device_generator
from .base import DEFENSES, DefenseContext, Purified


class IBAUParams(BaseModel):
    """I-BAU parameters."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = budget("rounds", 5)
    K: int = budget("iterations", 5, le=1000, description="fixed-point iterations")
    lr: float = Field(1e-4, gt=0, le=10, description="Adam (amsgrad) learning rate")
    batch_size: int = budget("batch", 256)
    delta_lr: float = Field(10.0, gt=0, le=1e4)
    penalty: float = Field(0.001, ge=0, le=1e4)
    inner_step: float = Field(0.1, gt=0, le=100)
    patch_fraction: float = Field(0.01, gt=0, le=1)

    def work(self, n: int, classes: int) -> float:
        """Per round: a pass for the perturbation, then per batch an outer pass and K
        vector-Jacobian products of the inner problem on the first batch."""
        return float(self.rounds * (n + n + (n / self.batch_size) * self.K * self.batch_size))


@DEFENSES.register("ibau", params=IBAUParams, summary="I-BAU: implicit backdoor adversarial "
                   "unlearning",
                   tags=("mitigation",), reference=(
                       "Zeng et al., Adversarial Unlearning of Backdoors via Implicit "
                       "Hypergradient, ICLR 2022; BackdoorBench defense/i-bau.py"))
def ibau(model, ctx: DefenseContext, p: IBAUParams) -> Purified:
    """Alternate universal-perturbation search and hypergradient unlearning."""
    model.eval()
    std = model.input_std
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=p.lr, amsgrad=True)
    batches = list(DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=True,
                                device=ctx.device, seed=ctx.seed))
    x1, y1 = batches[0]
    g = device_generator(ctx.device, ctx.seed)

    def inner(delta):
        return -F.cross_entropy(model(x1 + delta * std), y1) + p.penalty * delta.pow(2).sum()

    for r in range(p.rounds):
        delta = torch.zeros(1, *x1.shape[1:], device=ctx.device, requires_grad=True)
        d_opt = torch.optim.SGD([delta], lr=p.delta_lr)
        for x, _ in batches:
            with torch.no_grad():
                pseudo = model(x).argmax(1)
            loss = -F.cross_entropy(model(x + delta * std), pseudo) + p.penalty * delta.pow(2).sum()
            # the perturbation's gradient only: backward() would also fill every weight's
            # gradient, a second backward pass through the weights that the unlearning
            # step below overwrites
            (delta.grad,) = torch.autograd.grad(loss, delta)
            d_opt.step()
        delta = delta.detach()
        for x, y in batches:
            k = max(1, int(p.patch_fraction * len(x)))
            pick = torch.randperm(len(x), generator=g, device=g.device)[:k].to(ctx.device)
            d = delta.clone().requires_grad_(True)
            x_pert = x.clone()
            x_pert[pick] = x[pick] + d * std
            outer = F.cross_entropy(model(x_pert), y)
            a, *c = torch.autograd.grad(outer, [d] + params, allow_unused=True)
            dd = delta.clone().requires_grad_(True)
            (gd,) = torch.autograd.grad(inner(dd), dd, create_graph=True)
            phi = dd - p.inner_step * gd
            # the fixed-point iteration's early exit as a mask (once it has converged, v
            # stays), so no step waits for the host to read a norm
            v = torch.zeros_like(a)
            done = torch.zeros((), dtype=torch.bool, device=a.device)
            for _ in range(p.K):
                (jv,) = torch.autograd.grad(phi, dd, grad_outputs=v, retain_graph=True)
                v_new = jv + a
                v, done = torch.where(done, v, v_new), done | ((v_new - v).norm() < 1e-10)
            hyper = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)
            opt.zero_grad(set_to_none=True)
            for q, h, cq in zip(params, hyper, c, strict=True):
                total = (h if h is not None else 0) + (cq if cq is not None else 0)
                if isinstance(total, torch.Tensor):
                    q.grad = total.detach()
            opt.step()
        ctx.progress(f"ibau: round {r + 1}/{p.rounds}", (r + 1) / p.rounds)
    return Purified(model.eval(), {"rounds": p.rounds, "steps": p.rounds * len(batches)})
