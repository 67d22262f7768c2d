"""Which class the inverted trigger targets, and how sure the inversion is of it.

The authors' rule: the most frequent prediction on G(x + 0.03 noise) over the defender's
(augmented) images, the noise in the model's normalized units. The generator alone is fooled:
it always ends at *some* class, and on models whose backdoor it cannot express, or that have
none, it sends most images to a class that a universal adversarial perturbation reaches
(docs/RESULTS.md). So a detection is confident only when the generator sends at least
`min_confidence` of other classes' images to the class and, when verified, a smallest-trigger
scan (`scan.py`) finds that same class anomalously easy to reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import DeviceLoader, ImageSet, device_generator
from ..models import head_of
from .scan import Scan


@dataclass
class Detection:
    """The detected target class, the generator's share, and the verifying scan."""

    target: int
    confidence: float  # share of non-target images G(x) sends to `target`
    margin: float  # confidence minus the runner-up class's share
    min_confidence: float
    histogram: list[float] = field(default_factory=list)  # predictions on G(x), by class
    scan: Scan | None = None  # the verifying scan; None when not verified

    @property
    def generator_confident(self) -> bool:
        """The generator's test alone (the authors' rule, with a threshold)."""
        return self.confidence >= self.min_confidence

    @property
    def verified(self) -> bool | None:
        """The scan's test: some family finds the target anomalous; None when no scan ran."""
        if self.scan is None:
            return None
        return bool(self.scan.flags(self.target))

    @property
    def confident(self) -> bool:
        """Both tests agree (or the generator's alone, when not verified)."""
        return self.generator_confident and self.verified is not False

    @property
    def tests_disagree(self) -> bool:
        """The generator reached its class, but a scan found another class anomalous."""
        return (self.generator_confident and self.scan is not None
                and not self.scan.flags(self.target) and bool(self.scan.anomalous))

    def reason(self) -> str:
        """Why the detection is or is not confident, from the two tests' numbers."""
        sent = (f"the generator sends {self.confidence:.0%} of other classes' images to class "
                f"{self.target}")
        if not self.generator_confident:
            return f"{sent}, below the {self.min_confidence:.0%} a backdoor needs"
        if self.scan is None:
            return f"{sent} (not checked by a smallest-trigger scan)"
        agree = self.scan.flags(self.target)
        if agree:
            r = min(agree, key=lambda s: s.ratio)
            return (f"{sent}; the smallest {r.family} trigger belongs to class {r.smallest}, "
                    f"{r.ratio:.2f} times the other classes' median size, at or below "
                    f"{r.max_ratio:.2f}")
        if self.tests_disagree:
            other = min(self.scan.anomalous, key=lambda s: s.ratio)
            return (f"{sent}, but the smallest {other.family} trigger belongs to class "
                    f"{other.smallest}, {other.ratio:.2f} times the other classes' median "
                    f"size; the two tests disagree, so there may be a backdoor to class "
                    f"{other.smallest} that the generator did not find")
        c = self.scan.closest
        families = ", ".join(r.family for r in self.scan.results)
        return (f"{sent}, but no class needs an anomalously small trigger of any family scanned "
                f"({families}; the closest: the smallest {c.family} trigger belongs to class "
                f"{c.smallest}, {c.ratio:.2f} times the other classes' median size, a backdoor "
                f"needs {c.max_ratio:.2f} or less): a universal adversarial perturbation, "
                f"not a backdoor")

    def record(self) -> dict:
        """A JSON-able summary for the method's record and the report."""
        return {"target": self.target, "confidence": round(self.confidence, 4),
                "margin": round(self.margin, 4), "confident": self.confident,
                "generator_confident": self.generator_confident, "verified": self.verified,
                "reason": self.reason(), "histogram": [round(h, 4) for h in self.histogram],
                "scan": self.scan.record() if self.scan is not None else None}


@torch.no_grad()
def detect_target(model: nn.Module, gen: nn.Module, data: ImageSet, device: torch.device,
                  seed: int, min_confidence: float, augment: bool = True) -> Detection:
    """The most frequent prediction on G(x + 0.03 noise) over `data` (augmented as the
    authors' loader, when `augment`), the noise in the model's normalized units and the
    input not clipped, as theirs; fp32. The confidence is the share of images of other
    classes that G sends to that class (not yet verified)."""
    g = device_generator(device, seed)
    k = head_of(model).out_features
    std = model.input_std
    was_training = model.training
    model.eval()
    gen.eval()
    preds, labels = [], []
    for x, y in DeviceLoader(data, 512, shuffle=False, augment=augment, device=device,
                             seed=seed):
        noise = torch.randn(x.shape, generator=g, device=g.device).to(device)
        preds.append(model(gen(x + 0.03 * std * noise)).argmax(1))
        labels.append(y)
    model.train(was_training)
    p, y = torch.cat(preds).cpu(), torch.cat(labels).cpu()
    counts = torch.bincount(p, minlength=k).float()
    target = int(counts.argmax())
    share = torch.stack([((p == c) & (y != c)).float().sum() / max(1, int((y != c).sum()))
                         for c in range(k)])
    confidence = float(share[target])
    runner_up = float(share[torch.arange(k) != target].max()) if k > 1 else 0.0
    return Detection(target, confidence, confidence - runner_up, min_confidence,
                     (counts / counts.sum()).tolist())
