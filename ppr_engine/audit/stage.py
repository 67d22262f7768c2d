"""What a stage is: its typed id, its RA budget, the stage itself, and what running it gives.

A stage is one unit of work with a stable id that the executors run, record and report.
Its id is text (`retune:pam:badnets->0:20x5`), because rows, records and URLs key on it,
and it keeps its parts (kind, method, trigger label, budget key) as attributes, so no code
parses the text back. The kinds of stage, and how each plans, runs and fills the report,
are in `ppr_engine.audit.kinds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from ..spec import AuditSpec, RetuneSpec


class StageId(str):
    """`kind[:method][:label][:budget]`: the text every store keys on, with its parts."""

    kind: str
    method: str | None
    label: str | None
    budget: str | None

    def __new__(cls, kind: str, method: str | None = None, label: str | None = None,
                budget: str | None = None) -> StageId:
        self = super().__new__(cls, ":".join(p for p in (kind, method, label, budget)
                                             if p is not None))
        self.kind, self.method, self.label, self.budget = kind, method, label, budget
        return self

    def __getnewargs__(self) -> tuple:  # type: ignore[override]
        return (self.kind, self.method, self.label, self.budget)


def trigger_labels(spec: AuditSpec) -> list[str]:
    """Each trigger's label in stage ids and reports (made unique when two coincide)."""
    labels: list[str] = []
    for t in spec.triggers:
        label = t.label
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


@dataclass(frozen=True)
class Budget:
    """One RA budget, keyed: poisoned and clean samples, epochs. `key` names its stages:
    `20x5` (20 poisoned, 5 epochs, the reference budget's total), or `20+480x5` when the
    clean count is its own."""

    poison: int
    clean: int
    epochs: int
    reference: bool = False
    own_clean: bool = False

    @property
    def key(self) -> str:
        clean = f"+{self.clean}" if self.own_clean else ""
        return f"{self.poison}{clean}x{self.epochs}"


def budgets(rs: RetuneSpec) -> list[Budget]:
    """Every RA budget of a run, the reference one first, each once; a sweep point without
    its own clean count keeps the reference budget's total."""
    total = rs.poison_num + rs.clean_num
    out = [Budget(rs.poison_num, rs.clean_num, rs.epochs, reference=True)]
    for b in rs.sweep:
        own = b.clean_num is not None and b.clean_num != total - b.poison_num
        clean = b.clean_num if b.clean_num is not None else max(0, total - b.poison_num)
        budget = Budget(b.poison_num, clean, b.epochs, own_clean=own)
        if (budget.poison, budget.clean, budget.epochs) not in {
                (x.poison, x.clean, x.epochs) for x in out}:
            out.append(budget)
    return out


@dataclass(frozen=True)
class Stage:
    """One unit of the audit. `needs` are the stages whose results it uses (a stage whose
    need failed or was skipped is skipped, with the reason); `after` are stages it merely
    waits for. `cost` is in image passes of the unit model (`ppr_engine.cost`)."""

    id: StageId
    needs: tuple[StageId, ...] = ()
    after: tuple[StageId, ...] = ()
    cost: float = 0.0
    trigger: int | None = None  # index into spec.triggers
    budget: Budget | None = None

    @property
    def kind(self) -> str:
        return self.id.kind

    @property
    def method(self) -> str | None:
        """The method key the stage is about (or `baseline`, `model`)."""
        return self.id.method

    def waits_for(self) -> tuple[StageId, ...]:
        """Every stage that must be finished before this one starts."""
        return self.needs + self.after


@dataclass
class StageResult:
    """What a stage produced: values for the report, models for later stages."""

    values: dict[str, Any] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)


class Skipped(Exception):
    """The stage does not apply to this audit (the reason is recorded)."""


class Results(Protocol):
    """The finished stages' results, as an executor keeps them."""

    def values(self, stage_id: str) -> dict[str, Any]: ...

    def model(self, stage_id: str, name: str = "model") -> nn.Module: ...

    def ok(self, stage_id: str) -> bool: ...
