"""SAU, Shared Adversarial Unlearning (Wei et al., NeurIPS 2023), as BackdoorBench runs it
(`defense/sau.py`, config: Adam lr 1e-4, L-inf radius 0.2 and step 0.2 in normalized units,
5 PGD steps, beta_1 0.01, beta_2 1, lambda_1 1, lambda_2 0, lambda_3 1, 100 rounds).

Shared adversarial examples are perturbations that fool the current model and the
backdoored one (kept frozen as the reference) *the same way*; a backdoor is exactly such a
shared perturbation. Each batch: (1) PGD finds a perturbation per image that maximizes CE
on both models where they are not yet fooled (weight beta_1) and makes their predictions
agree (Jensen-Shannon divergence, weight beta_2); (2) the model takes one step on CE of the
clean batch (lambda_1), CE of the perturbed batch with true labels (lambda_2, 0 by default)
and the shared-adversarial risk: on images the reference model is fooled into a label, the
current model is pushed away from that label (lambda_3).

Departures: the radius and the step are in [0, 1] pixel units, `eps` 0.05 and `step` 0.05
(0.2 in CIFAR's normalized units is 0.049-0.052 per channel); the perturbation starts at a
random corner of the ball ("max" initialization) from a seeded generator.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..bounds import budget
from ..data import DeviceLoader, device_generator
from .base import DEFENSES, DefenseContext, Purified


class SAUParams(BaseModel):
    """SAU's parameters (BackdoorBench's defaults)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = budget("epochs", 100, description="unlearning epochs (n_rounds)")
    lr: float = Field(1e-4, gt=0, le=1, description="Adam learning rate")
    batch_size: int = budget("batch", 256)
    eps: float = Field(0.05, gt=0, le=1, description="L-inf radius in pixel units")
    step: float = Field(0.05, gt=0, le=1, description="PGD step in pixel units")
    steps: int = budget("iterations", 5, le=100, description="PGD steps per batch")
    beta_1: float = Field(0.01, ge=0, le=100, description="weight of the adversarial loss")
    beta_2: float = Field(1.0, ge=0, le=100, description="weight of the sharing loss")
    lambda_1: float = Field(1.0, ge=0, le=100, description="weight of the clean loss")
    lambda_2: float = Field(0.0, ge=0, le=100, description="weight of adversarial training")
    lambda_3: float = Field(1.0, ge=0, le=100, description="weight of the shared "
                            "adversarial risk")
    augment: bool = True

    def work(self, n: int, classes: int) -> float:
        """Per batch: PGD on two models, then one step on clean and perturbed images."""
        return float(self.epochs * n * (2 * self.steps + 3))


def shared_perturbation(model, ref, x, y, p: SAUParams, g: torch.Generator) -> torch.Tensor:
    """PGD toward perturbations that fool both models into the same label."""
    was = model.training
    model.eval()
    with torch.no_grad():
        own, own_ref = model(x).argmax(1), ref(x).argmax(1)
    sign = torch.randint(0, 2, x.shape, generator=g, device=g.device).to(x.device) * 2 - 1
    delta = (sign.float() * p.eps).requires_grad_(True)
    for _ in range(p.steps):
        xp = (x + delta).clamp(0, 1)
        logits, logits_ref = model(xp), ref(xp)
        lab, lab_ref = logits.argmax(1), logits_ref.argmax(1)
        fooled, fooled_ref = lab != own, lab_ref != own_ref
        shared = fooled & fooled_ref & (lab == lab_ref)
        ce = F.cross_entropy(logits, y, reduction="none")
        ce_ref = F.cross_entropy(logits_ref, y, reduction="none")
        adv = -(ce * (~fooled) + ce_ref * (~fooled_ref)).sum() / (2 * len(x))
        pm, pr = logits.softmax(1).clamp_min(1e-8), logits_ref.softmax(1).clamp_min(1e-8)
        mix = 0.5 * (pm + pr)
        js = 0.5 * (pm * (pm.log() - mix.log()) + pr * (pr.log() - mix.log())).sum(1)
        loss = p.beta_1 * adv + p.beta_2 * (js * (~shared)).sum() / len(x)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= p.step * grad.sign()
            delta.clamp_(-p.eps, p.eps)
    model.train(was)
    return delta.detach()


@DEFENSES.register("sau", params=SAUParams, summary="SAU: unlearn adversarial examples shared "
                   "by the model and the backdoored reference", tags=("mitigation",),
                   reference=("Wei et al., Shared Adversarial Unlearning: Backdoor Mitigation "
                              "by Unlearning Shared Adversarial Examples, NeurIPS 2023; "
                              "BackdoorBench defense/sau.py"))
def sau(model, ctx: DefenseContext, p: SAUParams) -> Purified:
    """Alternate shared-adversarial PGD and unlearning steps (see the module)."""
    ref = copy.deepcopy(model).eval()
    for q in ref.parameters():
        q.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    loader = DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=p.augment,
                          device=ctx.device, seed=ctx.seed)
    g = device_generator(ctx.device, ctx.seed)
    shared_seen = 0
    for epoch in range(p.epochs):
        for x, y in loader:
            delta = shared_perturbation(model, ref, x, y, p, g)
            xp = (x + delta).clamp(0, 1)
            model.train()
            logits, per_logits = model(torch.cat([x, xp])).split(len(x))
            model.eval()
            with torch.no_grad():
                own_ref, lab_ref = ref(x).argmax(1), ref(xp).argmax(1)
            poison = (lab_ref != y) & (lab_ref != own_ref)  # the reference is fooled
            loss = p.lambda_1 * F.cross_entropy(logits, y)
            if p.lambda_2:
                loss = loss + p.lambda_2 * F.cross_entropy(per_logits, y)
            # the shared term over the fooled images only, as a mask: no host sync per step
            prob = per_logits.softmax(1).gather(1, lab_ref[:, None]).squeeze(1)
            shared = -(torch.log(1 + 1e-6 - prob.clamp(min=0.001)) * poison).sum() / len(x)
            loss = loss + p.lambda_3 * shared
            shared_seen = shared_seen + poison.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ctx.progress(f"sau: epoch {epoch + 1}/{p.epochs}", (epoch + 1) / p.epochs)
    model.eval()
    return Purified(model, {"epochs": p.epochs, "shared_examples": int(shared_seen)})
