"""What every kind of stage declares, and the helpers the kinds share.

A kind declares, in one place: which stages of a spec it adds and what each needs and
costs (`stages` for the audit-wide ones, `chain` for the per-subject, per-trigger ones),
the gate fields its values feed and when it is enabled, how it runs (`run`), and how its
values fill the report (`fill`). The plan, the work estimate, the spec's check of gate
clauses, both executors and the report's assembly all read the kinds from the registry
(`ppr_engine.audit.kinds.KINDS`), so adding a kind is one module and its registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from ...cost import Sizes
from ...report import AuditReport, MethodResult, TriggerResult
from ...spec import AuditSpec
from ...train import Progress
from ..stage import Budget, Results, Skipped, Stage, StageId, StageResult

if TYPE_CHECKING:
    from ..inputs import AuditInputs


@dataclass
class Planner:
    """What a kind plans from: the spec, the data's sizes, and the stages planned so far."""

    spec: AuditSpec
    sizes: Sizes
    labels: list[str]
    budgets: list[Budget]
    stages: list[Stage] = field(default_factory=list)

    @property
    def method_keys(self) -> list[str]:
        return [m.key for m in self.spec.plan.methods]

    def ids(self, kind: str) -> tuple[StageId, ...]:
        return tuple(s.id for s in self.stages if s.kind == kind)


@dataclass
class Filling:
    """The report being assembled from the stages, and where each kind's values go."""

    results: Results
    report: AuditReport
    labels: list[str]
    methods: dict[str, MethodResult] = field(default_factory=dict)

    def trigger(self, stage: Stage) -> TriggerResult | None:
        """The method's entry for the stage's trigger (None when the method has none)."""
        res = self.methods.get(stage.method or "")
        if res is None or stage.trigger is None:
            return None
        label = self.labels[stage.trigger]
        return next((t for t in res.per_trigger if t.trigger == label), None)


class StageKind:
    """One kind of stage (see the module). Subclasses set `name` and override what applies."""

    name: ClassVar[str]
    # gate fields only this kind's stages compute (a clause on one needs the kind enabled)
    gate_fields: ClassVar[tuple[str, ...]] = ()

    def enabled(self, spec: AuditSpec) -> bool:
        """Whether the spec's plan asks for this kind's stages."""
        return True

    def stages(self, p: Planner) -> list[Stage]:
        """The audit-wide stages of this kind."""
        return []

    def chain(self, p: Planner, subject: str, trigger: int) -> list[Stage]:
        """The stages of this kind for one subject (a method key, `baseline` or `model`)
        and one trigger."""
        return []

    def run(self, stage: Stage, inputs: AuditInputs, results: Results, progress: Progress
            ) -> StageResult:
        raise NotImplementedError(f"stage kind {self.name} runs in the executor")

    def fill(self, f: Filling, stage: Stage, values: dict[str, Any]) -> None:
        """Put a successful stage's values where they belong in the report."""


def restore_triggers(inputs: AuditInputs, results: Results, plan_ids: list[str]) -> None:
    """Give every inverted trigger the state its `invert` stage found (a no-op in the
    process that ran the inversion)."""
    for i, label in enumerate(inputs.labels):
        sid = StageId("invert", label=label)
        if sid in plan_ids and results.ok(sid):
            values = results.values(sid)
            inputs.triggers[i].restore(values, {"generator": results.model(sid, "generator")})


def active(results: Results) -> list[int]:
    """The triggers later stages attack: all given ones, and inverted ones that found a
    backdoor (the `evaluate` stage decides)."""
    return list(results.values("evaluate")["active"])


def require_backdoor(inputs: AuditInputs, results: Results, stage: Stage) -> None:
    """Skip a stage whose trigger (or every trigger) has no backdoor to attack."""
    if stage.trigger is not None and stage.trigger not in active(results):
        inv = inputs.triggers[stage.trigger].inversion
        raise Skipped("no backdoor found by inversion" if inv is not None else
                      "its trigger's inversion failed")
    if inputs.spec.triggers and not active(results):
        raise Skipped("no backdoor found by inversion")


def baseline_model(results: Results) -> nn.Module:
    """The baseline stage's model, wherever it lives (its own, or the audit's EP model)."""
    base = results.values("baseline")
    return results.model(base.get("model_stage", "baseline"))


def subject_model(stage: Stage, inputs: AuditInputs, results: Results) -> nn.Module:
    """The model a retune/QRA/LMC stage attacks (see `subject_model_of`)."""
    assert stage.method is not None
    return subject_model_of(stage.method, inputs, results)


def subject_model_of(subject: str, inputs: AuditInputs, results: Results) -> nn.Module:
    """A method's purified model, the baseline, or (`model`, an audit without methods) the
    submitted model."""
    if subject == "model":
        return inputs.model
    if subject == "baseline":
        return baseline_model(results)
    return results.model(StageId("purify", subject))

