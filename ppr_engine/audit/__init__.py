"""The audit: spec -> plan of stages -> executor -> report.

What lives here, by responsibility: `plan` (the stages of a spec, their dependencies and
costs), `inputs` (the checkpoint and the data every stage starts from), `stages` (one
function per kind of stage), `execute` (the in-process executor), `verdict` (the rule), and
`assemble` (the report from the stages' results). `run` is the one entry point for callers
in one process (the CLI, `ppr gate --local`, embedded `ppr serve`); the service's workers
run the same stages as Celery tasks (`worker.stages`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..checkpoint import sha256_file
from ..cost import Sizes, describe_estimate
from ..errors import SpecError
from ..gate import check_subjects
from ..report import AuditReport, Provenance, StageStatus
from ..spec import AuditSpec
from .assemble import assemble
from .escalate import run_attempts
from .execute import MemoryResults, ProgressSink, StageProgress, StageSink, execute, quiet
from .inputs import AuditInputs, attacker_images, load_inputs, refuse_overlap
from .plan import AuditPlan, Budget, Stage, budgets, check_plan, estimated_work, plan_for
from .verdict import VERDICT_RULE

__all__ = ["VERDICT_RULE", "AuditInputs", "AuditOutcome", "AuditPlan", "Budget",
           "ProgressSink", "Stage", "attacker_images", "budgets", "check_plan",
           "finish_report", "load_inputs", "plan_for", "refuse_overlap", "run", "sizes_of",
           "start_report"]


@dataclass
class AuditOutcome:
    """The report and the purified models (by method key), for callers that keep them."""

    report: AuditReport
    models: dict[str, nn.Module] = field(default_factory=dict)
    plan: AuditPlan | None = None


def sizes_of(inputs: AuditInputs) -> Sizes:
    """The loaded data's sizes, for the plan's costs and the work cap."""
    return Sizes(len(inputs.clean_train), len(inputs.test), len(inputs.pool),
                 inputs.spec.model.num_classes)


def start_report(spec: AuditSpec, inputs: AuditInputs, kind: str, checkpoint: Path,
                 checkpoint_name: str | None, started: str) -> AuditReport:
    """An empty report with its provenance (every stage's executor writes the same)."""
    return AuditReport(kind=kind, provenance=Provenance(
        checkpoint_sha256=sha256_file(checkpoint),
        checkpoint_name=checkpoint_name or checkpoint.name,
        data=inputs.provenance, spec=spec.model_dump(mode="json"), seed=spec.seed,
        engine_version=__version__, torch_version=torch.__version__,
        device=str(inputs.device), started_at=started))


def finish_report(report: AuditReport, started: float) -> None:
    """What both executors do last: `seconds` is the wall time since the audit started
    (`started`, a Unix time) and `stage_seconds` the stages' own times summed, whichever
    executor ran them; the finish time goes in the provenance."""
    now = time.time()
    report.seconds = round(now - started, 3)
    report.stage_seconds = round(sum(s.seconds for s in report.stages), 3)
    report.provenance.finished_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(
        timespec="seconds")


def check_work(spec: AuditSpec, inputs: AuditInputs, max_work: float | None) -> None:
    """Refuse, before any stage runs, a spec whose work on the loaded data is over the cap."""
    if max_work is None:
        return
    work = estimated_work(spec, sizes_of(inputs))
    if work > max_work:
        raise SpecError(f"spec asks too much: the audit's estimated work on these data "
                        f"is {work:.3g} image passes (CIFAR ResNet-18 units), the limit is "
                        f"{max_work:.3g}")


def trigger_provenance(report: AuditReport, inputs: AuditInputs) -> None:
    """What each trigger's own data (or inversion) was, beside data.clean's provenance."""
    for label, t in zip(inputs.labels, inputs.triggers, strict=True):
        if (own := t.provenance()) is not None:
            report.provenance.data[f"trigger {label}"] = own


def run(spec: AuditSpec, checkpoint: Path, *, kind: str = "audit",
        progress: ProgressSink = quiet, resolve_dataset=None, roots: list[Path] | None = None,
        max_checkpoint_bytes: int | None = None, checkpoint_name: str | None = None,
        max_work: float | None = None, on_stage: StageSink | None = None,
        on_stage_progress: StageProgress | None = None) -> AuditOutcome:
    """Run the audit `spec` on the checkpoint at `checkpoint` in this process; never
    modifies it. With `max_work` (a service's cap), a spec whose estimated work on the
    loaded data exceeds it is refused before any work starts; `on_stage` sees every stage
    start and end."""
    t0 = time.time()
    started = dt.datetime.fromtimestamp(t0, dt.UTC).isoformat(timespec="seconds")
    check_subjects(spec.gate, [m.key for m in spec.plan.methods] or ["model"])
    check_plan(spec)
    checkpoint = Path(checkpoint)
    progress("load", 0.0, "loading checkpoint and data")
    inputs = load_inputs(spec, checkpoint, resolve_dataset=resolve_dataset, roots=roots,
                         max_checkpoint_bytes=max_checkpoint_bytes)
    check_work(spec, inputs, max_work)
    plan = plan_for(spec, sizes_of(inputs))
    progress("plan", 0.0, describe_estimate(plan.total_cost, inputs.device.type,
                                            torch.get_num_threads()))
    report = start_report(spec, inputs, kind, checkpoint, checkpoint_name, started)
    if spec.plan.until is not None:
        esc = run_attempts(spec, inputs, report, sizes_of(inputs), progress=progress,
                           on_stage=on_stage, on_stage_progress=on_stage_progress)
        report.stages.append(StageStatus(name="report"))
        key = spec.plan.methods[0].key
        models = {f"{key}#{a.index + 1}": a.model for a in esc.attempts}
        models[key] = esc.chosen.model
    else:
        results, records = execute(plan, inputs, progress=progress, on_stage=on_stage,
                                   on_stage_progress=on_stage_progress)
        records["report"] = StageStatus(name="report")
        assemble(spec, plan, results, records, report)
        models = purified_models(spec, results, inputs)
    trigger_provenance(report, inputs)  # an inverted trigger's, once its stage ran
    finish_report(report, t0)
    progress("report", 1.0, "report: done")
    return AuditOutcome(report, {k: m for k, m in models.items() if m is not None}, plan)


def purified_models(spec: AuditSpec, results: MemoryResults, inputs: AuditInputs
                    ) -> dict[str, nn.Module]:
    """Each method's purified model that was produced (the submitted model without methods)."""
    if not spec.plan.methods:
        return {"model": inputs.model}
    return {m.key: results.model(f"purify:{m.key}") for m in spec.plan.methods
            if results.ok(f"purify:{m.key}")}
