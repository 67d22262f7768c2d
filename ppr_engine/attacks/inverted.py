"""A trigger nobody gave: inverted from the submitted model (`{attack: inverted}`).

The people who gate a model release rarely know whether a backdoor is there or what it
looks like. This trigger is learnt from the model under audit on the defender's clean data:
BTI-DBF's generator (the `Inverter` that BTI-DBF and PAM use, `rounds` rounds against the
fixed model) proposes a target class and a trigger G(x); the smallest-trigger scan
(`ppr_engine.inversion.scan`) then checks that the proposal is a backdoor and not a universal
adversarial perturbation, which a generator finds in any model (on a clean small_cnn it sent
98% of other classes' images to one class). A backdoor is found only when both agree: the
generator sends at least `inversion.min_confidence` of other classes' images to class k, and
class k is the class whose smallest patch trigger is at most `inversion.scan.max_ratio` of
the other classes' median (`inversion.Detection.confident`, the rule BTI-DBF and PAM use).
Otherwise the audit says "no backdoor found by inversion" and gives no verdict for this
trigger. When found, G(x) is the trigger for RA, QRA, LMC and for EP/PAM's `data: trigger`,
and ASR is the share of test images of other classes that G sends to k.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ..bounds import budget
from ..data import ImageSet
from ..errors import SpecError
from ..inversion import Detection, InversionContext, InversionParams, invert
from ..models import frozen_copy
from ..report import InversionResult, InvertedExample
from ..train import predict
from .base import ATTACKS, Trigger


class InvertedParams(BaseModel):
    """How to find the trigger (there is no target to give: the inversion finds it)."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = budget("rounds", 1, le=10, description="inversion rounds against the model")
    inversion: InversionParams = Field(default_factory=InversionParams, description="the "
                                       "inversion and its verifying scan (`inversion.scan`)")
    examples: int = Field(4, ge=0, le=16, description="inverted images shown in the report")

    @model_validator(mode="before")
    @classmethod
    def _scan_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scan" in data:
            raise ValueError("scan: the scan's settings are now inversion.scan (the same scan "
                             "verifies BTI-DBF's and PAM's detections)")
        return data

    @field_validator("inversion")
    @classmethod
    def _verified(cls, v: InversionParams) -> InversionParams:
        if not v.verify:
            raise ValueError("inverted needs inversion.verify: true (the smallest-trigger scan "
                             "is what tells a backdoor from a universal adversarial "
                             "perturbation)")
        return v


def png_data_uri(image: torch.Tensor) -> str:
    """A uint8 C x H x W image as a PNG data URI (for the report; written, never parsed)."""
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@ATTACKS.register("inverted", params=InvertedParams, summary="a trigger inverted from the "
                  "submitted model (BTI-DBF's generator, checked by a smallest-trigger scan); "
                  "no backdoor found: no verdict")
class Inverted(Trigger):
    """G(x) of a generator inverted from the audited model; `target` is known once found."""

    Params = InvertedParams
    learns_from_model = True

    def __init__(self, params: InvertedParams) -> None:  # noqa: D107 - no target to take
        self.params = params
        self.target = -1  # set by learn(); -1 until then
        self.generator: nn.Module | None = None
        self.inversion: InversionResult | None = None

    @property
    def p(self) -> InvertedParams:
        return self.params  # type: ignore[return-value]

    @property
    def found(self) -> bool:
        return self.inversion is not None and self.inversion.found

    def learn(self, model: nn.Module, ctx: InversionContext) -> None:
        """Invert, scan, and decide (see the module's docstring)."""
        inverter = invert(model, ctx, self.p.inversion, rounds=self.p.rounds)
        det = inverter.detection
        assert det is not None and det.scan is not None  # verify is required (validator)
        self.generator = frozen_copy(inverter.gen, train_mode=False)
        self.target = det.target
        self.inversion = InversionResult(
            found=det.confident, target=det.target, confidence=det.confidence,
            margin=det.margin, conclusion=_conclusion(det), detection=inverter.record(),
            scan=det.scan.record(), examples=self._examples(model, ctx.val))

    def learned(self) -> tuple[dict[str, Any], dict[str, nn.Module]]:
        if self.inversion is None or self.generator is None:
            return {}, {}
        return ({"inversion": self.inversion.model_dump(mode="json")},
                {"generator": self.generator})

    def restore(self, values: dict[str, Any], modules: dict[str, nn.Module]) -> None:
        if "inversion" in values:
            self.inversion = InversionResult.model_validate(values["inversion"])
            self.target = self.inversion.target
            self.generator = frozen_copy(modules["generator"], train_mode=False)

    def _examples(self, model: nn.Module, held_out: ImageSet) -> list[InvertedExample]:
        """The first held-out images of other classes, clean and inverted, as PNGs."""
        sub = self.non_target(held_out)
        sub = sub.subset(torch.arange(min(self.p.examples, len(sub))))
        if not len(sub):
            return []
        inverted = self.apply_set(sub)
        pred = predict(model, inverted)
        return [InvertedExample(true_class=int(y), predicted=int(q), clean_png=png_data_uri(c),
                                inverted_png=png_data_uri(v))
                for y, q, c, v in zip(sub.y.cpu(), pred, sub.x, inverted, strict=True)]

    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None,
              split: str = "test") -> torch.Tensor:
        if self.generator is None:
            raise SpecError("inverted: the trigger is not learnt yet (the audit inverts it "
                            "from the model first; it cannot poison a training set)")
        device = next(self.generator.parameters()).device
        with torch.no_grad():
            return self.generator(x.to(device)).to(x.device)

    def provenance(self) -> dict[str, Any] | None:
        """Where the trigger came from: the model itself, on the defender's data."""
        if self.inversion is None:
            return None
        return {"kind": "inverted", "found": self.inversion.found, "target": self.inversion.target,
                "confidence": round(self.inversion.confidence, 4)}


def _conclusion(det: Detection) -> str:
    """One sentence a reader can act on, built from the two tests' numbers."""
    if det.confident:
        return f"Backdoor found by inversion: target class {det.target} ({det.reason()})."
    if det.tests_disagree:
        return f"No backdoor found by inversion, inconclusive: {det.reason()}."
    return f"No backdoor found by inversion: {det.reason()}."
