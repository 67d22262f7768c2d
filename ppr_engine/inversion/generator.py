"""BTI-DBF's trigger generator: the authors' UNet, and its feature-preserving pre-training.

The structure is the authors' (`models/unet_model.py`, `unet_blocks.py` of
xuxiong0214/BTIDBF): `blocks` encoder levels of two 3x3 convolutions, each followed by
InstanceNorm (affine, no running statistics) and LeakyReLU, with a max-pool after every
level; a bottleneck of twice the last level's width; a decoder of 3x3 stride-2 transposed
convolutions (LeakyReLU) whose output is concatenated with the skip and passed through the
same double convolution; a linear 1x1 output. With width 32 and 4 blocks: 32-256 channels, a
512-channel bottleneck at 2x2 on 32-pixel images, 11.0 M parameters. InstanceNorm behaves
the same in train and eval mode, so the generator used for detection and unlearning is the
one that was optimised (a BatchNorm generator trained in train mode and used in eval mode is
not).

The generator works in the model's normalized input space, as the authors' does (their
loaders normalize before it): it takes [0, 1] images, normalizes them with the model's own
mean and std, and maps its linear output back to pixel units, unbounded (`output:
"direct"`). `output: "residual"` is the earlier variant of this project, kept as an option:
the output is added to logit(x) and squashed by a sigmoid, so G(x) stays in [0, 1] and an
untrained G is the identity.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader
from ..graphed_step import FitStep, adam
from ..models import frozen_copy, model_fingerprint
from ..scoped import own_random_stream
from .context import InversionContext
from .features import stage_features

Output = Literal["direct", "residual"]


class _DoubleConv(nn.Sequential):
    """conv3x3 -> InstanceNorm (affine) -> LeakyReLU, twice (the authors' EncoderBlock)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                         nn.LeakyReLU(0.01, inplace=True), nn.Conv2d(cout, cout, 3, padding=1),
                         nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.01, inplace=True))


class UNet(nn.Module):
    """The authors' UNet over [0, 1] images, in the model's normalized space (see module)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, width: int = 32,
                 blocks: int = 4, output: Output = "direct") -> None:
        super().__init__()
        self.output = output
        self.register_buffer("mean", mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("std", std.detach().clone().view(1, -1, 1, 1))
        widths = [min(width * 2 ** i, 512) for i in range(blocks)]
        self.down = nn.ModuleList()
        cin = 3
        for w in widths:
            self.down.append(_DoubleConv(cin, w))
            cin = w
        self.bottleneck = _DoubleConv(cin, 2 * cin)
        cin = 2 * cin
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_skip in reversed(widths):
            self.up.append(nn.ConvTranspose2d(cin, cin, 3, stride=2, padding=1, output_padding=1))
            self.merge.append(_DoubleConv(cin + w_skip, w_skip))
            cin = w_skip
        self.out = nn.Conv2d(cin, 3, 1)
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            h = merge(torch.cat([F.leaky_relu(up(h), 0.01), skip], 1))
        out = self.out(h)
        if self.output == "residual":
            return torch.sigmoid(out + torch.logit(x.clamp(1e-3, 1 - 1e-3)))
        return out * self.std + self.mean


def normalized_mse(a: torch.Tensor, b: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two [0, 1] image batches in normalized units (where the
    authors' pixel bounds, 0.1 in pre-training and 0.3 in inversion, apply)."""
    return F.mse_loss(a / std, b / std)


def pretrained_generator(model: nn.Module, ctx: InversionContext, loader: DeviceLoader, *,
                         width: int, blocks: int, output: Output, epochs: int, lr: float,
                         capture_safe: bool = False) -> UNet:
    """G trained to preserve `model`'s predictions and last-stage features while staying
    close to its input (the authors' `pretrain.py`: pixel MSE weighted 100 while above 0.1,
    else 0.01; Adam; fp32). Cached per audit by the model's weights and the settings, so
    BTI-DBF and PAM, which invert the same submitted model, pre-train once; it runs on its
    own loader and random stream, so a cache hit leaves the caller where a miss would.

    Departure: the prediction term is CE(f(G(x)), softmax f(x)); the authors pass two
    softmax outputs to a cross-entropy (the first taken as logits), a quirk whose intent,
    keeping the predictions, this term states directly.

    `capture_safe`: each step through `graphed_step.FitStep` (one CUDA graph on CUDA), see
    `Inverter`."""
    key = ("generator", model_fingerprint(model), width, blocks, output, epochs, lr,
           len(loader.ds), loader.batch_size, loader.augment, ctx.seed, capture_safe)
    if key in ctx.cache:
        return copy.deepcopy(ctx.cache[key])
    with own_random_stream(ctx.device, ctx.seed):
        gen = _pretrain(model, ctx, DeviceLoader(
            loader.ds, loader.batch_size, shuffle=loader.shuffle, augment=loader.augment,
            device=loader.device, seed=ctx.seed), width=width, blocks=blocks, output=output,
            epochs=epochs, lr=lr, capture_safe=capture_safe)
    ctx.cache[key] = copy.deepcopy(gen)
    return gen


def pretraining_loss(parts: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One pre-training step's loss on `parts` (`gen`, the frozen eval-mode `net`), every
    choice on the device (see pretrained_generator); `y` is not used."""
    gx = parts["gen"](x)
    with torch.no_grad():
        out_c, feat_c = stage_features(parts["net"], x)
    out_g, feat_g = stage_features(parts["net"], gx)
    norm = normalized_mse(gx, x, parts["gen"].std)
    # the authors' switch between a strong and a weak pull to x, without a sync
    weight = torch.where(norm > 0.1, 100.0, 0.01)
    return F.cross_entropy(out_g, out_c.softmax(1)) + F.mse_loss(feat_g, feat_c) + weight * norm


def _pretrain(model: nn.Module, ctx: InversionContext, loader: DeviceLoader, *, width: int,
              blocks: int, output: Output, epochs: int, lr: float, capture_safe: bool) -> UNet:
    """The pre-training itself, on a loader of its own (see pretrained_generator)."""
    gen = UNet(model.input_mean, model.input_std, width, blocks, output).to(ctx.device).train()
    step = FitStep(nn.ModuleDict({"gen": gen, "net": frozen_copy(model, train_mode=False)}),
                   adam(gen.parameters(), lr, ctx.device, capture_safe), pretraining_loss,
                   ctx.device, graph=capture_safe and ctx.device.type == "cuda", fp32=True)
    for epoch in range(epochs):
        for x, y in loader:
            step.step(x, y)
        ctx.progress(f"generator pre-training: epoch {epoch + 1}/{epochs}",
                     (epoch + 1) / max(1, epochs))
    return gen
