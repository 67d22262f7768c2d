"""BTI-DBF(U): rounds of trigger inversion and unlearning (Xu et al., ICLR 2024), as the
authors run it (`btidbfu.py` of xuxiong0214/BTIDBF and of the PAM paper's code).

The inversion is `ppr_engine.inversion` (shared with PAM and the `inverted` trigger). Each
round: invert against the current model, then train the model itself on the clean set with
20% of each batch replaced by G(x) under the true labels, loss CE plus the MSE between the
clean and the mixed batch's last-stage features, Adam lr 1e-4, 30 epochs; 5 rounds (the
authors' README; the PAM paper's `defense.sh` runs its PAM variant for 3).

Departure: unlearning epochs scale to the defender's set (`scale_to`), so a small set gets
the reference's number of optimizer steps (see `scaled_epochs`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..bounds import budget
from ..graphed_step import capture_autocast
from ..inversion import InversionParams, Inverter
from ..inversion.features import stage_features
from ..train import fit, progress_parts
from .base import (
    DEFENSES,
    DefenseContext,
    Purified,
    ScaledBudget,
    replace_share,
    round_record,
    round_weights,
    scaled_epochs,
)


class BTIParams(ScaledBudget):
    """BTI-DBF(U) parameters: rounds of (inversion, unlearning)."""

    rounds: int = budget("rounds", 5, description="inversion + unlearning rounds")
    epochs: int = budget("epochs", 30, description="unlearning epochs per round (at "
                         "`scale_to`)")
    lr: float = Field(1e-4, gt=0, le=1, description="Adam learning rate of the unlearning")
    feature_weight: float = Field(1.0, ge=0, le=1000, description="weight of the clean/G(x) "
                                  "feature MSE")
    ratio: float = Field(0.2, gt=0, lt=1, description="share of each batch replaced by G(x)")
    batch_size: int = budget("batch", 128)
    augment: bool = Field(True, description="random crop + flip on the clean set")
    inversion: InversionParams = Field(default_factory=InversionParams)

    def work(self, n: int, classes: int) -> float:
        """The inversion's rounds, and unlearning with the feature loss (a second pass)."""
        return (self.inversion.work(n, classes, self.rounds)
                + self.rounds * 2 * self.step_images(n))


def inverted_batches(inverter: Inverter, ratio: float):
    """`fit`'s batch transform: `ratio` of each batch replaced by G(x), true labels kept."""
    return replace_share(lambda x, y, index: (inverter.apply(x), y), ratio)


class UnlearningStep:
    """BTI-DBF(U)'s unlearning step on a clean batch: its first `ratio` replaced by G(x)
    under the true labels, CE on that mixed batch plus the MSE between its features and the
    clean batch's, one optimizer step. The mixing is part of the step and every op stays on
    the device, so `fit` may capture the whole step as one CUDA graph (`graphed_step`)."""

    capture_safe = True

    def __init__(self, inverter: Inverter, ratio: float, feature_weight: float,
                 device: torch.device) -> None:
        self.replace = inverted_batches(inverter, ratio)
        self.feature_weight, self.device = feature_weight, device

    def loss(self, model: nn.Module, mixed: torch.Tensor, y: torch.Tensor,
             clean: torch.Tensor) -> torch.Tensor:
        logits, f_mixed = stage_features(model, mixed)
        ce = F.cross_entropy(logits, y)
        if self.feature_weight == 0:
            return ce
        _, f_clean = stage_features(model, clean)
        return ce + self.feature_weight * F.mse_loss(f_mixed, f_clean)

    def __call__(self, model, x, y, opt, loss_fn) -> None:
        mixed, labels = self.replace(x, y, None)
        with capture_autocast(self.device):
            value = self.loss(model, mixed, labels, x)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()


@DEFENSES.register("bti_dbf", params=BTIParams, summary="BTI-DBF(U): trigger inversion by "
                   "decoupling benign features, interleaved with unlearning",
                   tags=("mitigation",), reference=(
                       "Xu et al., Towards Reliable and Efficient Backdoor Trigger Inversion via "
                       "Decoupling Benign Features, ICLR 2024"))
def bti_dbf(model, ctx: DefenseContext, p: BTIParams) -> Purified:
    """Rounds of (invert against the current model, unlearn with G(x) under true labels)."""
    reference = copy.deepcopy(model).eval()
    parts = progress_parts(ctx.progress, round_weights(p, ctx, model, passes=2))
    inverter = Inverter(model, ctx, p.inversion, parts[0])
    epochs = scaled_epochs(p, len(ctx.clean))
    rounds: list[dict] = []
    for r in range(p.rounds):
        inverter.run_round(model, parts[1 + 2 * r])
        fit(model, ctx.clean, epochs=epochs, lr=p.lr, optimizer="adam", weight_decay=0.0,
            schedule="constant", batch_size=p.batch_size, augment=p.augment, device=ctx.device,
            seed=ctx.seed + r, progress=parts[2 + 2 * r], stage=f"bti_dbf unlearning {r + 1}",
            step_fn=UnlearningStep(inverter, p.ratio, p.feature_weight, ctx.device))
        rounds.append(round_record(model, reference, ctx))
    return Purified(model, {**inverter.record(), "epochs_per_round": epochs, "rounds": rounds})
