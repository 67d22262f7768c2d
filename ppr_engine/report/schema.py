"""The audit report's schema: a versioned pydantic model (`AuditReport`) and its parts.

Every number in a report was computed by the run that wrote it; a stage that failed is
listed with its reason and its numbers stay null.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = "1.0"
# the only images a report may carry: inline PNGs, so a rendered report loads nothing
PNG_URI = r"^data:image/png;base64,[A-Za-z0-9+/]*={0,2}$"


class StageStatus(BaseModel):
    """One stage of the audit: what ran, whether it worked, how long it took."""

    name: str
    status: Literal["pending", "running", "ok", "failed", "skipped"] = "ok"
    error: str | None = None
    seconds: float = 0.0


class SweepPoint(BaseModel):
    """P-ASR at one RA budget (poisoned samples, clean samples, epochs; `key` as in the
    stage ids, e.g. 20x5)."""

    poison_num: int
    epochs: int
    clean_num: int | None = None
    key: str = ""
    p_asr: float | None = None
    baseline_p_asr: float | None = None
    p_asr_runs: list[float] = Field(default_factory=list, description="P-ASR of each RA "
                                    "seed (plan.retune.seeds); p_asr is their mean")
    p_asr_ci: tuple[float, float] | None = Field(None, description="95% interval of P-ASR")
    gap: float | None = Field(None, description="p_asr - baseline_p_asr")
    gap_ci: tuple[float, float] | None = Field(None, description="95% interval of the gap "
                                               "(the verdict reads it)")


class LMCCurve(BaseModel):
    """The backdoor-connected path from the purified (0) to the backdoored model (1)."""

    lambdas: list[float]
    c_acc: list[float]
    asr: list[float]
    backdoor_error: list[float]
    lambda50: float | None = Field(None, description="smallest lambda with ASR > 0.5")
    bn: str = "recompute"


class QRAResult(BaseModel):
    """QRA's four numbers and the transfer of its perturbation to other methods."""

    asr: float
    clean_to_target: float
    ref_asr: float
    ref_clean_to_target: float
    transfer: dict[str, float] = Field(default_factory=dict)


class Scores(BaseModel):
    """The numbers a method gets against a trigger (per trigger, or the worst case)."""

    o_asr: float | None = None
    der: float | None = None
    p_cacc: float | None = None
    p_asr: float | None = None
    baseline_p_asr: float | None = None
    gap: float | None = None
    max_gap: float | None = Field(None, description="the robustness score: the largest "
                                  "excess of P-ASR over the baseline's P-ASR across every RA "
                                  "budget run (the reference budget and each sweep point)")
    max_gap_ci: tuple[float, float] | None = Field(
        None, description="the largest lower and the largest upper 95% bound of the gap "
        "across the budgets: superficial when the first passes plan.retune.superficial_gap, "
        "robust when the second does not")
    straddling: list[str] = Field(default_factory=list, description="budgets whose gap "
                                  "interval contains the margin (what makes a verdict "
                                  "inconclusive)")


class TriggerResult(Scores):
    """A method's numbers against one trigger."""

    trigger: str
    budget: SweepPoint | None = Field(None, description="the reference RA budget's point")
    sweep: list[SweepPoint] = Field(default_factory=list)
    qra: QRAResult | None = None
    lmc: LMCCurve | None = None


class MethodResult(Scores):
    """Everything measured for one purification method (worst case over triggers on top)."""

    key: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    o_cacc: float | None = None
    acc_drop: float | None = Field(None, description="the submitted model's C-Acc minus "
                                   "O-C-Acc: what the defense cost in clean accuracy")
    qra_asr: float | None = None
    qra_clean_to_target: float | None = None
    lmc_lambda50: float | None = None
    verdict: Literal["robust", "superficial", "inconclusive", "not_removed", "degraded",
                     "no_backdoor", "unknown"] = "unknown"
    per_trigger: list[TriggerResult] = Field(default_factory=list)
    record: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageStatus] = Field(default_factory=list)
    seconds: float = 0.0


class ModelResult(BaseModel):
    """The submitted model as it is."""

    c_acc: float | None = None
    asr: dict[str, float] = Field(default_factory=dict)
    backdoors_found: int | None = Field(None, description="how many triggers inverted from "
                                        "the model found a backdoor (null: none inverted)")
    inactive: list[str] = Field(default_factory=list, description="triggers whose ASR on the "
                                "submitted model is below plan.min_asr: they activate no "
                                "backdoor, so no method is judged on them (verdict no_backdoor)")


class BaselineInfo(BaseModel):
    """Which model calibrates RA, and its numbers."""

    kind: Literal["reference", "ep", "none"] = "none"
    description: str = ""
    c_acc: float | None = None
    asr: dict[str, float] = Field(default_factory=dict)
    p_asr: dict[str, float] = Field(default_factory=dict)
    sweep: dict[str, list[SweepPoint]] = Field(default_factory=dict)


class GateClause(BaseModel):
    """One gate clause with the value it saw (and, for CI reports, its parts)."""

    expr: str
    passed: bool
    value: float | list[float | None] | None = None
    detail: str = ""
    op: str | None = None
    threshold: float | None = None


class GateVerdict(BaseModel):
    """The verdict against the caller's gate (passed is None when no gate was given)."""

    passed: bool | None = None
    clauses: list[GateClause] = Field(default_factory=list)


class InvertedExample(BaseModel):
    """One held-out image of another class, clean and with the inverted trigger."""

    true_class: int
    predicted: int = Field(..., description="the submitted model's class for the inverted image")
    clean_png: str = Field(..., description="data:image/png;base64 URI", pattern=PNG_URI)
    inverted_png: str = Field(..., description="data:image/png;base64 URI", pattern=PNG_URI)


class InversionResult(BaseModel):
    """What the inversion of a trigger from the submitted model found (`attack: inverted`)."""

    trigger: str = ""
    found: bool = Field(..., description="a backdoor was found: the generator's class is also "
                        "the class with an anomalously small trigger; when false, this trigger "
                        "gets no verdict")
    target: int = Field(..., description="the generator's class (the target when found)")
    confidence: float = Field(..., description="share of other classes' held-in images the "
                              "generator sends to `target`")
    margin: float
    conclusion: str = Field(..., description="the finding in one sentence")
    asr: float | None = Field(None, description="share of test images of other classes the "
                              "inverted trigger sends to `target` in the submitted model")
    detection: dict[str, Any] = Field(default_factory=dict)
    scan: dict[str, Any] = Field(default_factory=dict, description="the smallest-trigger scan")
    examples: list[InvertedExample] = Field(default_factory=list)


class Provenance(BaseModel):
    """Where every number came from."""

    checkpoint_sha256: str = ""
    checkpoint_name: str = ""
    data: dict[str, dict[str, Any]] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    engine_version: str = ""
    torch_version: str = ""
    device: str = ""
    started_at: str = ""
    finished_at: str = ""


class EscalationAttempt(BaseModel):
    """One attempt of a purification run until robust (`plan.until`)."""

    attempt: int
    key: str = Field(..., description="its stages' method key (KEY, then KEY#2, ...)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="the parameters "
                                      "changed from the method as submitted")
    verdict: str
    o_cacc: float | None = None
    acc_drop: float | None = None
    o_asr: float | None = None
    p_asr: float | None = None
    max_gap: float | None = None
    max_gap_ci: tuple[float, float] | None = None
    seconds: float = 0.0


class EscalationInfo(BaseModel):
    """A purification run until robust: every attempt, and which one the report is."""

    until: str
    robust: bool = Field(..., description="the returned attempt is robust")
    chosen: int = Field(..., description="the attempt the report's method result and the "
                        "purified checkpoint are")
    reason: str
    attempts: list[EscalationAttempt] = Field(default_factory=list)


class AuditReport(BaseModel):
    """The report of one audit (or purification)."""

    schema_version: str = SCHEMA_VERSION
    kind: Literal["audit", "purify"] = "audit"
    model: ModelResult = Field(default_factory=ModelResult)
    baseline: BaselineInfo = Field(default_factory=BaselineInfo)
    methods: list[MethodResult] = Field(default_factory=list)
    inversions: list[InversionResult] = Field(default_factory=list, description="triggers "
                                              "inverted from the model (attack: inverted)")
    gate: GateVerdict = Field(default_factory=GateVerdict)
    stages: list[StageStatus] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)
    verdict_rule: str = Field("", description="how the verdicts were reached")
    headline: str = Field("", description="the finding in one sentence (see headline())")
    escalation: EscalationInfo | None = Field(None, description="a purification run until "
                                              "robust: its attempts (plan.until)")
    seconds: float = Field(0.0, description="wall time from the audit's start to its report, "
                           "in one process or over many workers")
    stage_seconds: float = Field(0.0, description="the stages' own times summed (over many "
                                 "workers, more than `seconds` when stages ran side by side)")

    def method(self, key: str) -> MethodResult | None:
        """The result of method `key`, if it ran."""
        return next((m for m in self.methods if m.key == key), None)
