"""The audit as a plan of stages: what runs, in which order, what each stage needs, and
what it costs.

The stages come from the registry of stage kinds (`ppr_engine.audit.kinds`); each kind
says which stages of a spec it adds, what they need and what they cost. Costs are image
passes weighted by the architecture's cost per image (`ppr_engine.cost`): what progress,
scheduling and the service's work cap count, so the plan's total is the one estimate of a
spec's work.

`plan_for` also refuses, when the spec is validated, what no executor could run: QRA
without RA (its guide is the retuned model), and gate clauses on fields no stage computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..cost import Sizes, image_cost
from ..spec import AuditSpec, check_plan
from . import kinds
from .kinds import Planner
from .stage import Budget, Stage, StageId, budgets, trigger_labels

__all__ = ["NOMINAL", "AuditPlan", "Budget", "Stage", "StageId", "budgets",
           "escalation_plan", "estimated_work", "plan_for", "trigger_labels"]

# sizes for cost estimates before the data are loaded (a CIFAR-scale audit)
NOMINAL = Sizes(clean=2250, test=10000, pool=1000, classes=10)


@dataclass
class AuditPlan:
    """The stages of one audit, in an order that respects every dependency."""

    stages: list[Stage] = field(default_factory=list)

    def __iter__(self):
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def get(self, stage_id: str) -> Stage:
        return next(s for s in self.stages if s.id == stage_id)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.stages]

    @property
    def total_cost(self) -> float:
        return sum(s.cost for s in self.stages)

    def critical_path(self, seconds: dict[str, float]) -> tuple[float, list[str]]:
        """The longest chain of dependent stages by `seconds`: the wall time no number of
        workers can beat, and its stages."""
        best: dict[str, tuple[float, list[str]]] = {}
        for s in self.stages:
            before = max((best[d] for d in s.waits_for() if d in best),
                         key=lambda x: x[0], default=(0.0, []))
            best[s.id] = (before[0] + seconds.get(s.id, 0.0), before[1] + [s.id])
        return max(best.values(), key=lambda x: x[0], default=(0.0, []))


def plan_for(spec: AuditSpec, sizes: Sizes = NOMINAL) -> AuditPlan:
    """The ordered stages of `spec` (SpecError when a dependency cannot be met); for a
    purification run until robust, every attempt's stages (`escalation_plan`)."""
    check_plan(spec)
    if spec.plan.until is not None:
        return escalation_plan(spec, sizes)
    retune = spec.plan.retune
    p = Planner(spec, sizes, trigger_labels(spec),
                budgets(retune) if retune.enabled and spec.triggers else [])
    for kind in kinds.BEFORE_CHAINS:
        p.stages += kind.stages(p)
    subjects = p.method_keys or ["model"]
    if p.budgets and retune.baseline:
        subjects.append("baseline")
    for subject in subjects:
        for i in range(len(spec.triggers)):
            for kind in kinds.CHAIN:
                p.stages += kind.chain(p, subject, i)
    for kind in kinds.AFTER_CHAINS:
        p.stages += kind.stages(p)
    weight = image_cost(spec)
    return AuditPlan([replace(s, cost=s.cost * weight) for s in p.stages])


def escalation_plan(spec: AuditSpec, sizes: Sizes = NOMINAL) -> AuditPlan:
    """Every attempt's stages (`ppr_engine.audit.escalate`), the shared ones once, then
    `report`: the stage view and the work estimate count the whole escalation."""
    from .escalate import attempt_specs

    stages: dict[str, Stage] = {}
    for attempt in attempt_specs(spec):
        for s in plan_for(attempt, sizes):
            if s.kind != "report":
                stages.setdefault(s.id, s)
    ids = tuple(stages)
    return AuditPlan(list(stages.values()) + [Stage(StageId("report"), after=ids)])


def estimated_work(spec: AuditSpec, sizes: Sizes = NOMINAL) -> float:
    """The audit's work: the sum of its plan's stage costs, in CIFAR ResNet-18 image
    passes (`ppr_engine.cost`); what the service caps, per job and per principal."""
    return plan_for(spec, sizes).total_cost

