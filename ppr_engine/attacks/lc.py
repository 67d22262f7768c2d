"""Label-consistent (LC) attack: PGD-perturbed target-class images plus a corner trigger.

BackdoorBench attacks an adversarially trained ResNet-18 (external weights); here the PGD
surrogate is a model the caller passes (`make-backdoor` trains a clean one as fallback).
Without any surrogate the poison is the corner trigger alone, which is said in the record.
"""

from __future__ import annotations

from pydantic import Field

from ..bounds import budget
from ..data import to_float
from .base import ATTACKS, Trigger, TriggerParams, quantize
from .triggers import lc_corner_trigger, pgd_untargeted


class LCParams(TriggerParams):
    """LC: PGD (eps 8/255, step 1.5/255, 100 steps) then the corner checkerboard."""

    eps: float = Field(8.0, ge=0, le=255, description="PGD radius in 8-bit units")
    step: float = Field(1.5, gt=0, le=255, description="PGD step in 8-bit units")
    steps: int = budget("iterations", 100, ge=0, le=10_000, description="PGD iterations")
    amplitude: float = Field(1.0, gt=0, le=1, description="trigger amplitude (1: black/white)")


@ATTACKS.register("lc", params=LCParams, summary="Label-consistent: PGD + corner trigger")
class LabelConsistent(Trigger):
    """Clean-label: perturb target-class images adversarially, then add the trigger."""

    Params = LCParams
    clean_label = True
    needs_surrogate = True

    def apply(self, x, index=None, split="test"):
        return lc_corner_trigger(x, self.params.amplitude)  # type: ignore[attr-defined]

    def poison_images(self, ds, surrogate=None):
        p: LCParams = self.params  # type: ignore[assignment]
        x = to_float(ds.x)
        if surrogate is not None and p.steps > 0 and p.eps > 0:
            dev = next(surrogate.parameters()).device
            x = pgd_untargeted(surrogate, x.to(dev), ds.y.to(dev), p.eps / 255, p.step / 255,
                               p.steps).cpu()
            x = (x * 255).floor() / 255  # stored as uint8 by truncation, as in the reference
        return quantize(self.apply(x))
