"""A trigger given by example: a set of poisoned images instead of a trigger function.

People who study defenses often hold an attack's poisoned samples (a BackdoorBench result,
a dump of a poisoned training set) but not its trigger generator, or the attack is one this
project does not implement. `{attack: examples, target: 3, data: REF}` audits with those
images: RA poisons with them (labelled with the target), EP and PAM `data: trigger`
unlearn with them under their true labels, and ASR is measured on a held-out part that RA
and the unlearning never see. The images carry their true (source) classes as labels, as
BackdoorBench's `original_target` does; images of the target class never count for ASR.

Two ways to give them:
- `data` alone: it is split once, by `seed`, into a held-out share (`holdout`, for ASR) and
  the rest (for RA, QRA and the oracle unlearning); identical images are kept once, so one
  picture can never sit on both sides;
- `data` (for ASR) and `train_data` (for the attacker and the unlearning), for example a
  backdoored test set and the poisoned training samples; they must share no image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, field_validator

from ..bounds import seed_field
from ..data import ImageSet, to_float
from ..errors import SpecError
from .base import ATTACKS, Trigger, TriggerParams


class ExamplesParams(TriggerParams):
    """A trigger given by poisoned images labelled with their true classes."""

    data: str = Field(..., description="data reference of poisoned images (labels: their "
                      "true classes); ASR is measured on them, or on their held-out share "
                      "when train_data is not given",
                      examples=["npz:/data/badnets/bd_test.npz"])
    train_data: str | None = Field(None, description="data reference of further poisoned "
                                   "images for RA, QRA and EP/PAM's unlearning (for example "
                                   "the attack's poisoned training samples)")
    holdout: float = Field(0.5, gt=0, lt=1, description="share of `data` held out for "
                           "measuring ASR when train_data is not given")
    seed: int = seed_field(0, "seed of the held-out split and of the draws")

    @field_validator("data", "train_data")
    @classmethod
    def _ref(cls, ref: str | None) -> str | None:
        from ..data.refs import parse_ref

        if ref is not None:
            parse_ref(ref)
        return ref


def distinct(ds: ImageSet) -> ImageSet:
    """`ds` with every repeated image (pixel for pixel) kept once, first occurrence."""
    seen: set[bytes] = set()
    keep = []
    for i, digest in enumerate(ds.image_digests()):
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return ds if len(keep) == len(ds) else ds.subset(torch.tensor(keep, dtype=torch.long))


@ATTACKS.register("examples", params=ExamplesParams, summary="a trigger given by example: "
                  "poisoned images with their true labels (no trigger function)")
class Examples(Trigger):
    """Poisoned images standing in for a trigger function."""

    Params = ExamplesParams

    def __init__(self, params: ExamplesParams) -> None:
        super().__init__(params)
        self.measured: ImageSet | None = None  # held out: ASR only
        self.attacking: ImageSet | None = None  # RA, QRA and the oracle unlearning
        self._order = torch.empty(0, dtype=torch.long)
        self._draw = torch.Generator().manual_seed(params.seed + 1)
        self._on_device: dict[str, ImageSet] = {}

    @property
    def p(self) -> ExamplesParams:
        return self.params  # type: ignore[return-value]

    def data_refs(self) -> list[str]:
        return [self.p.data] + ([self.p.train_data] if self.p.train_data else [])

    def bind(self, load: Callable[[str], ImageSet]) -> None:
        given = distinct(load(self.p.data))
        if self.p.train_data:
            attacking = distinct(load(self.p.train_data))
            shared = given.shared_with(attacking)
            if len(shared):
                raise SpecError(f"examples: {len(shared)} images appear in both data and "
                                f"train_data; the images that measure ASR must not be the "
                                f"ones RA and the unlearning use")
            measured = given
        else:
            if len(given) < 2:
                raise SpecError(f"examples: {self.p.data} holds {len(given)} distinct "
                                f"image(s); at least two are needed to hold one out")
            order = torch.randperm(len(given), generator=torch.Generator().manual_seed(
                self.p.seed))
            k = min(len(given) - 1, max(1, round(self.p.holdout * len(given))))
            measured, attacking = given.subset(order[:k]), given.subset(order[k:])
        if not bool(self.attacked(measured.y.cpu()).any()):
            raise SpecError(f"examples: every held-out example is of the target class "
                            f"{self.target}, so ASR cannot be measured; give examples "
                            f"whose true class differs from the target")
        self.measured, self.attacking = measured, attacking
        self._order = torch.randperm(len(attacking), generator=torch.Generator().manual_seed(
            self.p.seed + 2))

    def reseed(self) -> None:
        self._draw.manual_seed(self.p.seed + 1)

    def _bound(self) -> tuple[ImageSet, ImageSet]:
        if self.measured is None or self.attacking is None:
            raise SpecError("examples: the trigger's images are not loaded (bind it first)")
        return self.measured, self.attacking

    def apply(self, x, index=None, split="test"):
        raise SpecError("examples: a trigger given by example has no trigger function; it "
                        "cannot put the trigger on other images (poisoning a training set, "
                        "inverting it, or make-backdoor need a parametric attack)")

    def triggered_test(self, test: ImageSet) -> ImageSet:
        measured, _ = self._bound()
        return self.non_target(measured).to(test.x.device)

    def draw_triggered(self, pool: ImageSet, order: torch.Tensor, n: int, *,
                       clean_label_rule: bool = True) -> tuple[ImageSet, torch.Tensor]:
        """The first `n` of the attacker's examples in a fixed order (non-target ones only
        when their true labels must differ from the target, as QRA's must): RA's budgets
        nest, as they do for a parametric trigger. `pool` and `order` are not used."""
        _, attacking = self._bound()
        ordered = self._order
        if not clean_label_rule:
            ordered = ordered[self.attacked(attacking.y.cpu()[ordered])]
        if len(ordered) < n:
            kind = " non-target" if not clean_label_rule else ""
            raise SpecError(f"examples: {n} poisoned images are asked for, but the attacker's "
                            f"part of the examples holds {len(ordered)}{kind}; give more "
                            f"examples (train_data) or lower the budget")
        return (attacking.subset(ordered[:n]).to(pool.x.device),
                torch.empty(0, dtype=torch.long))

    def unlearning_batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                         split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Random attacker's examples with their true labels in place of the slice."""
        _, attacking = self._bound()
        key = str(x.device)
        if key not in self._on_device:
            self._on_device[key] = attacking.to(x.device)
        bank = self._on_device[key]
        pick = torch.randint(len(bank), (len(x),), generator=self._draw).to(x.device)
        return to_float(bank.x[pick]), bank.y[pick]

    def provenance(self) -> dict[str, Any]:
        """Both parts' sizes and hashes (`sha256`: the held-out part's)."""
        measured, attacking = self._bound()
        return {"ref": self.p.data, "n": len(measured) + len(attacking),
                "sha256": measured.content_hash(), "kind": "examples",
                "train_data": self.p.train_data, "measured": len(measured),
                "attacking": len(attacking), "attacking_sha256": attacking.content_hash()}
