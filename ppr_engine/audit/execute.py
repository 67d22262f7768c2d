"""The in-process executor: run a plan's stages in order in this process, recording each.

Every stage is timed and recorded (`StageStatus`: ok, failed with its error, or skipped
with the reason); a stage whose need did not succeed is skipped, and the audit goes on.
Progress is the share of the plan's cost done (stage costs in image passes), reported with
the running stage's id; the sink may raise `Cancelled` to stop the audit. The distributed
executor (`worker.stages`) runs the same stages as Celery tasks over the same functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import Cancelled, SpecError
from ..report import StageStatus
from .inputs import AuditInputs
from .kinds import KINDS, restore_triggers
from .plan import AuditPlan
from .stage import Skipped, Stage, StageResult

# (stage id, overall fraction in [0, 1], message); it may raise Cancelled to stop the audit
ProgressSink = Callable[[str, float, str], None]
StageSink = Callable[[StageStatus], None]
# (stage id, the stage's own fraction done): what a stage row's progress shows
StageProgress = Callable[[str, float], None]


def quiet(stage: str, fraction: float, message: str) -> None:
    """The sink that reports nothing."""


class MemoryResults:
    """Finished stages' results held in this process."""

    def __init__(self) -> None:
        self._results: dict[str, StageResult] = {}

    def put(self, stage_id: str, result: StageResult) -> None:
        self._results[stage_id] = result

    def values(self, stage_id: str) -> dict[str, Any]:
        return self._results[stage_id].values

    def result(self, stage_id: str) -> StageResult:
        return self._results[stage_id]

    def model(self, stage_id: str, name: str = "model") -> nn.Module:
        return self._results[stage_id].models[name]

    def ok(self, stage_id: str) -> bool:
        return stage_id in self._results


def blocked(stage: Stage, records: dict[str, StageStatus]) -> str | None:
    """Why `stage` cannot run (a need that failed or was skipped), or None."""
    for need in stage.needs:
        rec = records.get(need)
        if rec is None or rec.status != "ok":
            state = "was skipped" if rec is not None and rec.status == "skipped" else "failed"
            return f"needs {need}, which {state}"
    return None


def run_stage(stage: Stage, inputs: AuditInputs, results, progress, plan_ids: list[str]
              ) -> StageResult:
    """Run one stage by its kind, from the same random state wherever and whenever it runs."""
    kind = KINDS.get(stage.kind)
    if kind is None:
        raise SpecError(f"no runner for stage {stage.id}")
    restore_triggers(inputs, results, plan_ids)
    torch.manual_seed(inputs.spec.seed)
    for t in inputs.triggers:
        t.reseed()
    return kind.run(stage, inputs, results, progress)


def run_recorded(stage: Stage, inputs: AuditInputs, results, progress, plan_ids: list[str],
                 records: dict[str, StageStatus]) -> tuple[StageStatus, StageResult | None]:
    """Run one stage (unless blocked) and its record; Cancelled propagates."""
    status = StageStatus(name=stage.id)
    if (why := blocked(stage, records)) is not None:
        status.status, status.error = "skipped", why
        return status, None
    start = time.perf_counter()
    out = None
    try:
        out = run_stage(stage, inputs, results, progress, plan_ids)
    except Cancelled:
        raise
    except Skipped as exc:
        status.status, status.error = "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the audit goes on
        status.status = "failed"
        status.error = f"{type(exc).__name__}: {exc}".strip()[:500]
    status.seconds = round(time.perf_counter() - start, 3)
    return status, out


def execute(plan: AuditPlan, inputs: AuditInputs, *, progress: ProgressSink = quiet,
            on_stage: StageSink | None = None, on_stage_progress: StageProgress | None = None,
            done_before: tuple[MemoryResults, dict[str, StageStatus]] | None = None,
            total_cost: float | None = None, cost_before: float = 0.0
            ) -> tuple[MemoryResults, dict[str, StageStatus]]:
    """Run every stage but `report` in plan order; return the results and the records.
    Stages recorded in `done_before` (an earlier plan's results and records) are taken from
    it, not run again; `total_cost` and `cost_before` place this plan's progress inside a
    longer run (a purification's attempts)."""
    results, records = MemoryResults(), {}
    total = max(1.0, total_cost if total_cost is not None else plan.total_cost)
    done = cost_before
    ids = plan.ids
    for stage in plan:
        if stage.kind == "report":
            continue
        if done_before is not None and stage.id in done_before[1]:
            records[stage.id] = done_before[1][stage.id]
            if done_before[0].ok(stage.id):
                results.put(stage.id, done_before[0].result(stage.id))
            continue
        base = done

        def sub(message: str, fraction: float, stage=stage, base=base) -> None:
            own = max(0.0, min(1.0, fraction))
            progress(stage.id, min(1.0, (base + own * stage.cost) / total), message)
            if on_stage_progress is not None:
                on_stage_progress(stage.id, own)

        sub(f"{stage.id}: starting", 0.0)
        if on_stage is not None:
            on_stage(StageStatus(name=stage.id, status="running"))
        status, out = run_recorded(stage, inputs, results, sub, ids, records)
        if out is not None:
            results.put(stage.id, out)
        records[stage.id] = status
        if on_stage is not None:
            on_stage(status)
        done += stage.cost
    return results, records
