"""NC, Neural Cleanse (Wang et al., S&P 2019), as BackdoorBench runs it (`defense/nc.py`):
reverse-engineer each class's smallest trigger, flag the classes whose trigger is an
anomaly, unlearn the flagged triggers.

The per-class smallest mask-and-pattern triggers are the project's scan
(`ppr_engine.inversion.scan`, family `patch`), the same one that verifies BTI-DBF's
detections. A class is flagged when its anomaly index (the MAD score of its mask's L1 size:
how many median absolute deviations below the median it lies) exceeds 2, Neural Cleanse's
threshold. Unlearning fine-tunes the model on the defender's clean set in which
`unlearning_ratio` (20%) of each batch carries a flagged class's reversed trigger under
the image's true label (SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine, batch 256).
No class flagged: the model is returned as it is, and the record says so.

Departures: the scan learns masks and patterns with a fixed L1 weight over `scan.epochs`
(Neural Cleanse and BackdoorBench tune the weight per class to reach 98% attack success);
the unlearning budget is BackdoorBench's 100 epochs by default (the NC paper unlearns one).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..bounds import budget
from ..inversion.scan import ScanParams, smallest_triggers
from ..train import fit
from .base import DEFENSES, DefenseContext, Purified, TuneParams, replace_share


class NCParams(TuneParams):
    """NC's parameters (BackdoorBench's defaults)."""

    epochs: int = budget("epochs", 100, description="unlearning epochs")
    batch_size: int = budget("batch", 256)
    anomaly_threshold: float = Field(2.0, gt=0, le=100, description="flag classes whose "
                                     "anomaly index exceeds this")
    unlearning_ratio: float = Field(0.2, gt=0, lt=1, description="share of each batch "
                                    "carrying a flagged class's reversed trigger")
    scan: ScanParams = Field(default_factory=lambda: ScanParams(families=["patch"]),
                             description="the trigger reverse engineering (family patch)")

    def work(self, n: int, classes: int) -> float:
        """The scan, then the unlearning."""
        return self.scan.work(n, classes) + self.epochs * n


@DEFENSES.register("nc", params=NCParams, summary="NC: Neural Cleanse, reverse-engineered "
                   "triggers of anomalous classes unlearned", tags=("mitigation",),
                   reference=("Wang et al., Neural Cleanse: Identifying and Mitigating Backdoor "
                              "Attacks in Neural Networks, IEEE S&P 2019; BackdoorBench "
                              "defense/nc.py"))
def nc(model, ctx: DefenseContext, p: NCParams) -> Purified:
    """Scan, flag anomalous classes, unlearn their reversed triggers."""
    params = p.scan.model_copy(update={"families": ["patch"]})
    scan = smallest_triggers(model, ctx.clean, ctx.val, params, ctx.device, ctx.seed,
                             ctx.progress).results[0]
    flagged = [k for k, a in enumerate(scan.anomaly_index) if a > p.anomaly_threshold]
    record = {"flagged": flagged, "anomaly_index": [round(a, 3) for a in scan.anomaly_index],
              "mask_l1": [round(v, 2) for v in scan.size]}
    if not flagged:
        record["note"] = "no class has an anomalous trigger: the model is unchanged"
        return Purified(model, record)
    trigger = scan.trigger

    def reversed_triggers(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        parts = torch.tensor_split(torch.arange(len(x), device=x.device), len(flagged))
        out = x.clone()
        for k, idx in zip(flagged, parts, strict=True):
            if len(idx):
                out[idx] = trigger.apply_class(k, x[idx])
        return out, y

    fit(model, ctx.clean, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
        transform=replace_share(reversed_triggers, p.unlearning_ratio), stage="nc unlearning",
        **p.fit_kwargs())
    return Purified(model, record)
