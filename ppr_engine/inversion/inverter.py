"""BTI-DBF's trigger inversion (Xu et al., ICLR 2024) as the authors run it
(xuxiong0214/BTIDBF and `fine_tune/BTIDBF/` of the PAM paper's code), shared by BTI-DBF(U),
PAM and the `inverted` trigger.

(0) pre-train the generator G to preserve the model's predictions and features
    (`generator.pretrained_generator`);
each round, against the *current* model:
(1) learn a mask m over the last stage's features on a copy of the model in train mode
    (`features.learn_feature_mask`);
(2) train G against that copy, in eval mode, so that G(x) stays close to x in pixels and in
    benign features (m) while moving the backdoor features (1 - m): loss -|(1-m)(phi(Gx) -
    phi(x))|^2 + 0.01 |m(phi(Gx) - phi(x))|^2, falling back to the pixel MSE for a step whose
    pixel MSE (normalized units) exceeds `norm_bound` or whose benign-feature MSE exceeds the
    feature bound; from the second round on G is also pulled toward the detected class (CE);
(3) in the first round, detect the target (`detection.detect_target`), and verify it with
    the smallest-trigger scans (`scan.smallest_triggers`).
Mask, pre-training, generator and detection run in fp32 on every device (TF32 allowed
within the inversion's own work, `tf32_matmuls`, the process's flags restored after it):
feature differences are small, and bf16 rounding is of the signal's order.

The feature bound is in the authors' units where the features are theirs: an absolute 3 on
the mean squared layer-4 difference of the CIFAR ResNet-18 (`Architecture.feature_bound ==
"absolute"`: same layer, same normalization). Elsewhere it is relative, 3 x E[phi^2] of the
clean features: the absolute 3 assumes ResNet-18's feature scale, and on a small_cnn the
generator then never leaves the pixel fall-back (CIFAR-10 BadNets, small_cnn: 0.25 of other
classes' images sent to the target with the bound at 1 x E[phi^2], 0.98 at 3 x;
docs/RESULTS.md). `feat_bound_units` overrides the choice.

Remaining departures, each for a stated reason:
- Detection is verified (`verify`) and carries a confidence: the authors' rule alone was
  confidently wrong on SIG and WaNet models and on models trained clean (docs/RESULTS.md).
  Later rounds still pull G toward the detected class whether or not it is confident, as
  the authors do (`pull: always`, BTI-DBF's default); `pull: confident` keeps the stricter
  rule, and PAM does not pull (`pull: never`, its own default: see `PAMParams`).
- The pre-training's prediction term (see `pretrained_generator`).
- The round record (`RoundRecord`) is ours: what to look at when a detection fails.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..bounds import budget
from ..data import DeviceLoader
from ..graphed_step import FitStep, adam
from ..models import architecture, head_of, model_fingerprint
from ..scoped import own_random_stream, tf32_matmuls
from ..train import Progress, no_progress, progress_parts
from .context import InversionContext
from .detection import Detection, detect_target
from .features import learn_feature_mask, stage_features
from .generator import Output, UNet, normalized_mse, pretrained_generator
from .scan import Scan, ScanParams, smallest_triggers

# The inversion's sizes on a CPU, where the authors' 50 / 20 / 30 epochs of a width-32
# generator take hours: sizes that still find BadNets and Blended targets (the figures are in
# docs/RESULTS.md). The residual output is part of them: at so few epochs a linear output
# does not reach a Blended target.
CPU_SIZES = {"pretrain_epochs": 5, "mask_epochs": 5, "gen_epochs": 10, "gen_width": 8,
             "gen_blocks": 3, "gen_output": "residual", "batch_size": 32, "scan": 500}


class InversionParams(BaseModel):
    """Trigger-inversion settings shared by BTI-DBF, PAM and `inverted` (the authors'
    values by default)."""

    model_config = ConfigDict(extra="forbid")
    pretrain_epochs: int = budget("epochs", 50, ge=0, description="feature-preserving "
                                  "pre-training of G")
    mask_epochs: int = budget("epochs", 20, description="feature-mask epochs per round "
                              "(Adam 0.01)")
    gen_epochs: int = budget("epochs", 30, description="generator epochs per round")
    norm_bound: float = Field(0.3, gt=0, le=100, description="pixel MSE bound (normalized "
                              "units)")
    feat_bound: float = Field(3.0, gt=0, le=1000, description="benign-feature MSE bound")
    feat_bound_units: Literal["auto", "absolute", "relative"] = Field(
        "auto", description="absolute: the bound as it is (the authors' units); relative: "
        "times the clean features' mean square; auto: absolute on the CIFAR ResNet-18s, "
        "relative elsewhere")
    benign_weight: float = Field(0.01, ge=0, le=100, description="weight of the benign-"
                                 "feature MSE")
    gen_lr: float = Field(1e-3, gt=0, le=1)
    gen_width: int = budget("width", 32, ge=4, le=128, description="UNet base width")
    gen_blocks: int = Field(4, ge=1, le=5, description="UNet encoder/decoder levels")
    gen_output: Output = Field("direct", description="G's last layer: direct (linear, in "
                               "normalized space, the authors') or residual (added to "
                               "logit(x) through a sigmoid: bounded, identity at start)")
    batch_size: int = budget("batch", 128)
    augment: bool = Field(True, description="random crop + flip on the clean set, as the "
                          "authors' loader (detection included)")
    min_confidence: float = Field(0.5, ge=0, le=1, description="share of non-target images G "
                                  "must send to the detected class for a confident detection")
    pull: Literal["always", "confident", "never"] = Field(
        "always", description="from the second round on, also train G to send G(x) to the "
        "detected class: always (the authors' rule), only after a confident detection, or never")
    verify: bool = Field(True, description="check the detected class with the smallest-trigger "
                         "scans: confident only when that class also needs an anomalously small "
                         "trigger (false: the generator's share alone, the authors' rule)")
    scan: ScanParams = Field(default_factory=ScanParams, description="the verifying scans")
    sizes: Literal["auto", "authors", "cpu"] = Field(
        "auto", description="authors: the authors' epochs and generator; cpu: the sizes that "
        "finish on a CPU (CPU_SIZES: 5 / 5 / 10 pre-training, mask and generator epochs at "
        "batch 32, a width-8 three-level residual UNet, scans on 500 images); auto: the "
        "authors' on CUDA, the CPU sizes elsewhere. Fields set in the spec always win")

    def on(self, device: str | None = None) -> InversionParams:
        """These settings as they run on `device` (None: this process's default device):
        with `sizes` cpu, or auto off CUDA, every size the spec did not set is the CPU one."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.sizes == "authors" or (self.sizes == "auto" and device.startswith("cuda")):
            return self
        update = {k: v for k, v in CPU_SIZES.items() if k not in self.model_fields_set}
        if "scan" in update:
            update["scan"] = self.scan.model_copy(update={"max_images": CPU_SIZES["scan"]})
        return self.model_copy(update=update)

    def work(self, n: int, classes: int, rounds: int = 1) -> float:
        """Image passes of `rounds` rounds on `n` images on this process's default device
        (the model's; the generator's cost, a few times smaller than a CIFAR ResNet-18's, is
        not counted): pre-training (two passes), per round the mask (one) and the generator
        (two), detection, and the scans (once)."""
        return sum(self.part_work(n, classes, rounds))

    def part_work(self, n: int, classes: int, rounds: int = 1) -> list[float]:
        """`work` by part, in the order the parts run: pre-training, then each round (the
        first with the detection and the scans)."""
        p = self.on()
        per_round = float((p.mask_epochs + 2 * p.gen_epochs) * n)
        first = n / 3 + (p.scan.work(n, classes) if p.verify else 0.0)
        return [float(2 * p.pretrain_epochs * n)] + [per_round + (first if r == 0 else 0.0)
                                                     for r in range(rounds)]

    def bound_is_absolute(self, arch: str) -> bool:
        """Whether the feature bound applies as it is to `arch`'s features."""
        if self.feat_bound_units != "auto":
            return self.feat_bound_units == "absolute"
        return architecture(arch).feature_bound == "absolute"


@dataclass
class RoundRecord:
    """What one round of generator training did (means over its steps)."""

    round: int
    feature_scale: float  # E[phi^2] of the clean features
    feature_bound: float  # the bound in force, in the features' units
    held_back: float  # share of steps that fell back to the pixel MSE
    held_back_pixel: float  # ... because the pixel MSE exceeded norm_bound
    held_back_feature: float  # ... because the benign-feature MSE exceeded its bound
    backdoor_distance: float  # mean squared backdoor-feature difference, |(1-m)(dphi)|^2
    pulled_to: int | None  # the class G was pulled toward (rounds after the first)


class RoundSums(nn.Module):
    """A round's running sums over its generator steps, as buffers: a step adds into them
    on the device, and a CUDA-graph capture's warm-up (which restores every buffer of the
    step's modules) leaves them as they were."""

    KEYS = ("pixel", "feature", "either", "scale", "backdoor", "bound")

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        for key in self.KEYS:
            self.register_buffer(key, torch.zeros((), device=device))

    def add(self, **values) -> None:
        with torch.no_grad():
            for key, v in values.items():
                getattr(self, key).add_(v.detach().float() if torch.is_tensor(v) else v)

    def means(self, steps: int) -> dict[str, float]:
        return {k: round(float(getattr(self, k)) / max(1, steps), 6) for k in self.KEYS}


class GeneratorLoss:
    """One generator step's loss (module docstring, step 2) on `parts` (`gen`, the frozen
    `net` in eval mode, the round's `sums`, into which it adds what the round record
    reports): every choice on the device, so the step can be one CUDA graph."""

    def __init__(self, p: InversionParams, mask: torch.Tensor, std: torch.Tensor,
                 absolute: bool, pull: int | None) -> None:
        self.p, self.mask, self.std, self.absolute, self.pull = p, mask, std, absolute, pull

    def __call__(self, parts: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor
                 ) -> torch.Tensor:
        p, mask = self.p, self.mask
        gx = parts["gen"](x)
        with torch.no_grad():
            _, f_clean = stage_features(parts["net"], x)
        out_g, f_gen = stage_features(parts["net"], gx)
        benign = F.mse_loss(mask * f_gen, mask * f_clean)
        backdoor = F.mse_loss((1 - mask) * f_gen, (1 - mask) * f_clean)
        pixel = normalized_mse(gx, x, self.std)
        scale = f_clean.pow(2).mean()
        bound = p.feat_bound if self.absolute else p.feat_bound * scale
        # over a bound: pull back to x only; chosen on the device, no host sync
        over_pixel, over_feature = pixel > p.norm_bound, benign > bound
        over = over_pixel | over_feature
        value = torch.where(over, pixel, -backdoor + p.benign_weight * benign)
        if self.pull is not None:
            value = value + F.cross_entropy(out_g, torch.full_like(y, self.pull))
        parts["sums"].add(pixel=over_pixel, feature=over_feature, either=over, scale=scale,
                          backdoor=backdoor, bound=bound)
        return value


class Inverter:
    """BTI-DBF's generator and its rounds of inversion against a model that changes.

    `capture_safe` (default: on CUDA) runs the mask and generator steps through
    `graphed_step.FitStep` with fused Adam reading its learning rate from a device tensor:
    on CUDA each step is one CUDA graph (checked against an eager step once per process);
    elsewhere the steps run eagerly with `torch.optim.Adam`, as they always have."""

    def __init__(self, model: nn.Module, ctx: InversionContext, p: InversionParams,
                 progress: Progress | None = None, *, capture_safe: bool | None = None
                 ) -> None:
        """Pre-train the generator against `model` (its progress to `progress`, by default
        the context's)."""
        p = p.on(ctx.device.type)
        self.p, self.device = p, ctx.device
        self.capture_safe = (ctx.device.type == "cuda" if capture_safe is None
                             else capture_safe)
        self.ctx = InversionContext.of(ctx)  # the defender's data, never a known trigger
        self.loader = DeviceLoader(ctx.clean, p.batch_size, shuffle=True, augment=p.augment,
                                   device=ctx.device, seed=ctx.seed)
        pretraining = dataclasses.replace(self.ctx, progress=progress or ctx.progress)
        with tf32_matmuls(ctx.device):  # fp32 with TF32 matrix products, this work only
            self.gen = pretrained_generator(model, pretraining, self.loader, width=p.gen_width,
                                            blocks=p.gen_blocks, output=p.gen_output,
                                            epochs=p.pretrain_epochs, lr=p.gen_lr,
                                            capture_safe=self.capture_safe)
        self.opt = adam(self.gen.parameters(), p.gen_lr, ctx.device, self.capture_safe)
        self.absolute = p.bound_is_absolute(model.arch_name)
        self.detection: Detection | None = None
        self.rounds: list[RoundRecord] = []

    def run_round(self, model: nn.Module, progress: Progress = no_progress) -> Detection:
        """One round against the current `model`: mask, generator, and (first round) the
        target; returns the detection.

        The first round is done once per audit for a given model, generator and settings:
        BTI-DBF, PAM and the `inverted` trigger all begin by inverting the submitted model
        from the same pre-trained generator. It runs on its own random stream and a cache hit
        restores the generator, its optimizer and its loader as the round left them, so the
        later rounds are the same whether it ran here or earlier."""
        with tf32_matmuls(self.device):
            if self.rounds:
                return self._round(model, progress, no_progress)
            # the pull acts from the second round on: PAM (never) and BTI-DBF (always)
            # share the first
            key = ("first round", model_fingerprint(model), model_fingerprint(self.gen),
                   self.p.model_dump_json(exclude={"pull"}), self.ctx.seed,
                   len(self.ctx.clean), self.capture_safe)
            if key not in self.ctx.cache:
                n, k = len(self.ctx.clean), head_of(model).out_features
                scan = self.p.scan.work(n, k) if self.p.verify else 0.0
                generator = self.p.part_work(n, k)[1] - scan  # the round less its scans
                with own_random_stream(self.device, self.ctx.seed):
                    self._round(model, *progress_parts(progress, [generator, scan]))
                self.ctx.cache[key] = copy.deepcopy(self._state())
            else:
                progress("inversion round 1: the audit's earlier inversion of this model", 1.0)
                self._restore(copy.deepcopy(self.ctx.cache[key]))
        return self.detection

    def _state(self) -> dict:
        """What a round leaves behind for the next: generator, optimizer, loader stream,
        records and detection."""
        return {"gen": self.gen.state_dict(), "opt": self.opt.state_dict(),
                "loader": self.loader.generator.get_state(), "rounds": list(self.rounds),
                "detection": self.detection}

    def _restore(self, state: dict) -> None:
        self.gen.load_state_dict(state["gen"])
        self.gen.eval()
        self.opt.load_state_dict(state["opt"])
        self.loader.generator.set_state(state["loader"])
        self.rounds, self.detection = state["rounds"], state["detection"]

    def _round(self, model: nn.Module, progress: Progress, scan_progress: Progress
               ) -> Detection:
        """One round of mask and generator training (and, first, detection and the scans,
        whose progress goes to `scan_progress`)."""
        p, dev, r = self.p, self.device, len(self.rounds)
        mask, inv = learn_feature_mask(model, self.loader, p.mask_epochs, self.ctx.seed + r,
                                       capture_safe=self.capture_safe)
        std = model.input_std
        det = self.detection
        pulled = det is not None and (p.pull == "always" or p.pull == "confident" and det.confident)
        pull = det.target if pulled else None
        sums = RoundSums(dev)
        step = FitStep(nn.ModuleDict({"gen": self.gen, "net": inv, "sums": sums}), self.opt,
                       GeneratorLoss(p, mask, std, self.absolute, pull), dev,
                       graph=self.capture_safe and dev.type == "cuda", fp32=True)
        self.gen.train()
        steps = 0
        for epoch in range(p.gen_epochs):
            for x, y in self.loader:
                step.step(x, y)
                steps += 1
            progress(f"inversion round {r + 1}: generator epoch {epoch + 1}/{p.gen_epochs}",
                     (epoch + 1) / p.gen_epochs)
        self.gen.eval()
        mean = sums.means(steps)
        self.rounds.append(RoundRecord(r + 1, mean["scale"], mean["bound"], mean["either"],
                                       mean["pixel"], mean["feature"], mean["backdoor"], pull))
        if self.detection is None:
            det = detect_target(model, self.gen, self.ctx.clean, dev, self.ctx.seed + r,
                                p.min_confidence, augment=p.augment)
            if p.verify:
                det.scan = self._scan(model, det.target, scan_progress)
            self.detection = det
        return self.detection

    def _scan(self, model: nn.Module, target: int, progress: Progress) -> Scan:
        """The smallest-trigger scans of the model the target is detected on, until one
        confirms `target` (cached per audit: BTI-DBF and PAM detect on the same submitted
        model)."""
        key = ("scan", model_fingerprint(model), self.p.scan.model_dump_json(), self.ctx.seed,
               target)
        if key not in self.ctx.cache:
            progress("trigger scan", 0.0)
            with own_random_stream(self.device, self.ctx.seed):
                self.ctx.cache[key] = smallest_triggers(
                    model, self.ctx.clean, self.ctx.val, self.p.scan, self.device,
                    self.ctx.seed, progress, confirm=target)
        return self.ctx.cache[key]

    @torch.no_grad()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """G(x) for float images in [0, 1] (no gradient): the inverted trigger."""
        return self.gen(x)

    def record(self) -> dict:
        """What BTI-DBF's and PAM's records (and the inverted trigger's) say of the
        inversion."""
        det = self.detection
        sizes = self.p.sizes if self.p.sizes != "auto" else (
            "authors" if self.device.type == "cuda" else "cpu")
        return {"inversion_sizes": sizes,
                "inversion_settings": self.p.model_dump(mode="json", exclude={"scan"}),
                "detection": det.record() if det else None,
                "detected_target": det.target if det else None,
                "feature_bound_units": "absolute" if self.absolute else "relative",
                "inversion_rounds": [asdict(r) for r in self.rounds]}


def invert(model: nn.Module, ctx: InversionContext, p: InversionParams, rounds: int = 1
           ) -> Inverter:
    """Inversion alone on a fixed `model` (no unlearning between rounds)."""
    parts = progress_parts(ctx.progress, p.part_work(len(ctx.clean), head_of(model)
                                                     .out_features, rounds))
    inverter = Inverter(model, ctx, p, parts[0])
    for r in range(rounds):
        inverter.run_round(model, parts[1 + r])
    return inverter


__all__ = ["InversionParams", "Inverter", "RoundRecord", "UNet", "invert"]
