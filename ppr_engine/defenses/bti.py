"""BTI-DBF(U): backdoor trigger inversion by decoupling benign features, then unlearning.

(1) Pre-train a small UNet generator G to reproduce its input. (2) Each round: learn a
mask m over the last stage's feature map separating benign features (m) from backdoor ones
(1 - m), minimizing CE(h(m*phi(x)), y) - CE(h((1-m)*phi(x)), y); train G so G(x) stays
close to x in pixels and benign features while moving the backdoor features (falling back
to pixel MSE when the bounds 0.3 / 3 are exceeded; from the second round also pulled to
the detected target; pixel distances are measured in the model's normalized input
units, where the reference's bounds apply, and the benign-feature bound is relative to the
features' mean square, since the reference's absolute bound of 3 assumes ResNet-18's
feature scale); detect the target as the most frequent prediction on
G(x + 0.03 noise); unlearn a scratch copy so the next round finds what is left.
(3) Unlearn: fine-tune the model on the clean set with `ratio` of each batch replaced by
G(x) keeping the true labels. The inverted generator is cached for PAM.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..data import DeviceLoader
from ..models import architecture, head_of, submodule
from ..train import fit, predict
from .base import DEFENSES, DefenseContext, Purified, TuneParams, fingerprint, replace_share


class InversionParams(BaseModel):
    """Trigger-inversion settings shared by BTI-DBF and PAM (reference values)."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(3, ge=1, description="BTI rounds")
    pretrain_epochs: int = Field(50, ge=0, description="generator pre-training (Adam 1e-3)")
    mask_epochs: int = Field(20, ge=1, description="feature-mask epochs (Adam 0.01)")
    gen_epochs: int = Field(30, ge=1, description="generator epochs per round")
    round_unlearn_epochs: int = Field(2, ge=0, description="scratch unlearning per round")
    norm_bound: float = Field(0.3, gt=0, description="pixel MSE bound (normalized units)")
    feat_bound: float = Field(1.0, gt=0, description="benign-feature MSE bound, relative to "
                              "the clean features' mean square")
    benign_weight: float = Field(0.01, ge=0, description="weight of benign-feature MSE")
    gen_lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)


class BTIParams(TuneParams):
    """BTI-DBF(U) parameters: inversion, then unlearning."""

    inversion: InversionParams = Field(default_factory=InversionParams)
    ratio: float = Field(0.2, gt=0, lt=1, description="share of each batch replaced by G(x)")


class UNet(nn.Module):
    """A two-level UNet mapping images in [0, 1] to images in [0, 1]."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(i, o, s=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU(True))

        w = width
        self.d0, self.d1, self.d2 = block(3, w), block(w, 2 * w, 2), block(2 * w, 4 * w, 2)
        self.u1 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.c1 = block(4 * w, 2 * w)
        self.u0 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.c0 = block(2 * w, w)
        self.out = nn.Conv2d(w, 3, 1)

    def forward(self, x):
        a = self.d0(x)
        b = self.d1(a)
        c = self.d2(b)
        b2 = self.c1(torch.cat([self.u1(c), b], 1))
        a2 = self.c0(torch.cat([self.u0(b2), a], 1))
        return torch.sigmoid(self.out(a2) + torch.logit(x.clamp(1e-3, 1 - 1e-3)))


def _last_stage(model) -> nn.Module:
    return submodule(model, architecture(model.arch_name).stages[-1])


def _feat(model, x):
    """The last stage's feature map (before pooling), where BTI-DBF decouples features."""
    out: list[torch.Tensor] = []
    handle = _last_stage(model).register_forward_hook(lambda m, a, o: out.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return out[0]


def _masked_logits(model, x, mask):
    """Logits with the last stage's feature map multiplied by `mask` (the rest unchanged)."""
    handle = _last_stage(model).register_forward_hook(lambda m, a, o: o * mask)
    try:
        return model(x)
    finally:
        handle.remove()


def learn_feature_mask(model, loader: DeviceLoader, epochs: int, seed: int) -> torch.Tensor:
    """Mask in [0, 1] over the feature map: benign (m) versus backdoor (1 - m) features."""
    x0, _ = next(iter(loader))
    with torch.no_grad():
        shape = _feat(model, x0[:1]).shape[1:]
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g).to(loader.device).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.01)
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        for _ in range(epochs):
            for x, y in loader:
                m = (torch.tanh(logits) + 1) / 2
                loss = (F.cross_entropy(_masked_logits(model, x, m), y)
                        - F.cross_entropy(_masked_logits(model, x, 1 - m), y))
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for q in model.parameters():
            q.requires_grad_(True)
    return ((torch.tanh(logits) + 1) / 2).detach()


def detect_target(model, gen: nn.Module, data, device, seed: int) -> tuple[int, list[float]]:
    """The most frequent prediction on G(x + 0.03 noise), and the prediction histogram."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(head_of(model).out_features)
    gen.eval()
    for x, _ in DeviceLoader(data, 512, shuffle=False, device=device):
        noisy = (x + 0.03 * torch.randn(x.shape, generator=g).to(device)).clamp(0, 1)
        with torch.no_grad():
            preds = predict(model, gen(noisy))
        counts += torch.bincount(preds, minlength=len(counts)).float()
    hist = (counts / counts.sum()).tolist()
    return int(counts.argmax()), hist


def invert(model: nn.Module, ctx: DefenseContext, p: InversionParams) -> dict:
    """Run BTI-DBF's inversion on `model`; returns {generator, target, histogram}."""
    key = ("bti", fingerprint(model), p.model_dump_json())
    if key in ctx.cache:
        return ctx.cache[key]
    dev = ctx.device
    loader = DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=False, device=dev,
                          seed=ctx.seed)
    gen = UNet().to(dev)
    opt = torch.optim.Adam(gen.parameters(), lr=p.gen_lr)
    ref = copy.deepcopy(model).eval()
    for q in ref.parameters():
        q.requires_grad_(False)
    gen.train()
    for _ in range(p.pretrain_epochs):
        for x, _ in loader:
            loss = F.mse_loss(gen(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    scratch = copy.deepcopy(model)
    std = model.input_std
    target: int | None = None
    hist: list[float] = []
    for r in range(p.rounds):
        scratch.eval()
        for q in scratch.parameters():
            q.requires_grad_(False)
        mask = learn_feature_mask(scratch, loader, p.mask_epochs, ctx.seed + r)
        gen.train()
        for _ in range(p.gen_epochs):
            for x, _ in loader:
                gx = gen(x)
                f_clean, f_gen = _feat(scratch, x), _feat(scratch, gx)
                benign = F.mse_loss(mask * f_clean, mask * f_gen)
                backdoor = F.mse_loss((1 - mask) * f_clean, (1 - mask) * f_gen)
                pixel = F.mse_loss(gx / std, x / std)  # normalized units, as the bounds
                if pixel > p.norm_bound or benign > p.feat_bound * f_clean.pow(2).mean():
                    loss = pixel
                else:
                    loss = -backdoor + p.benign_weight * benign
                if target is not None:  # later rounds: what is left of the backdoor
                    loss = loss + F.cross_entropy(scratch(gx), torch.full(
                        (len(x),), target, dtype=torch.long, device=dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
        if target is None:  # detected on the backdoored model itself
            target, hist = detect_target(ref, gen, ctx.clean, dev, ctx.seed + r)
        ctx.progress(f"bti: round {r + 1}/{p.rounds}, detected target {target}",
                     (r + 1) / p.rounds)
        for q in scratch.parameters():
            q.requires_grad_(True)
        if p.round_unlearn_epochs and r + 1 < p.rounds:
            gen.eval()
            fit(scratch, ctx.clean, epochs=p.round_unlearn_epochs, lr=0.01, weight_decay=0,
                device=dev, seed=ctx.seed + r, transform=replace_share(gen, 0.2),
                stage="bti scratch unlearning")
    gen.eval()
    for q in gen.parameters():
        q.requires_grad_(False)
    out = {"generator": gen, "target": target, "histogram": hist}
    ctx.cache[key] = out
    return out


@DEFENSES.register("bti_dbf", params=BTIParams, summary="BTI-DBF(U): trigger inversion by "
                   "decoupling benign features, then unlearning")
def bti_dbf(model, ctx: DefenseContext, p: BTIParams) -> Purified:
    """Invert the backdoor with a generator, then unlearn with G(x) under true labels."""
    inv = invert(model, ctx, p.inversion)
    fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        transform=replace_share(inv["generator"], p.ratio), stage="bti_dbf unlearning",
        **p.fit_kwargs())
    return Purified(model, {"detected_target": inv["target"],
                            "target_histogram": [round(h, 4) for h in inv["histogram"]]})
