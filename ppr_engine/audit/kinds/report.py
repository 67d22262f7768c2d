"""`report`: the last stage, which waits for every other one. The executors run it
themselves (`ppr_engine.audit.assemble` over the other stages' results): in one process
after the plan, in the service as the job's last Celery task."""

from __future__ import annotations

from ..stage import Stage, StageId
from .base import Planner, StageKind


class Report(StageKind):
    name = "report"

    def stages(self, p: Planner) -> list[Stage]:
        return [Stage(StageId("report"), after=tuple(s.id for s in p.stages))]
