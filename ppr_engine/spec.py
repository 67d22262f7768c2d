"""The one schema of a job: `AuditSpec` (and purify, an audit of one method).

Defined once here and used by the CLI, the API (request validation, OpenAPI), the worker
and the report. Names of architectures, attacks and methods, and each method's
parameters, are validated against the registries. YAML and JSON are equivalent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .bounds import budget, seed_field
from .errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_Unit = Annotated[float, Field(ge=0, le=1)]  # a per-channel mean in [0, 1]
_Std = Annotated[float, Field(gt=0, le=10)]


class ModelSpec(_Strict):
    """The submitted model's architecture (normalization from the registry unless given)."""

    arch: str = Field("preact_resnet18", description="registered architecture name")
    num_classes: int = Field(10, ge=2, le=100_000)
    width: int | None = Field(None, ge=4, le=1024, description="base width of an architecture "
                              "that takes one (resnet18_cifar, preact_resnet18: channels of "
                              "the first stage, default 64); reduced-width models for small "
                              "machines")
    mean: tuple[_Unit, _Unit, _Unit] | None = None
    std: tuple[_Std, _Std, _Std] | None = None

    @model_validator(mode="after")
    def _known(self) -> ModelSpec:
        from .models import ARCHITECTURES, check_width

        ARCHITECTURES.get(self.arch)
        check_width(self.arch, self.width)
        return self


class DataSpec(_Strict):
    """Where the defender's clean set and the clean test set come from."""

    clean: str = Field(..., description="data reference of the defender's clean set",
                       examples=["imagefolder:/data/cifar10/train?fraction=0.05&seed=0"])
    test: str = Field(..., description="data reference of the clean test set",
                      examples=["imagefolder:/data/cifar10/test"])
    attacker: str | None = Field(None, description="data the Retuning Attack draws from "
                                 "(default: the clean reference, with RA's own seed)")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="held-out validation share of "
                                "the clean set; every threshold is chosen on it")

    @field_validator("clean", "test", "attacker")
    @classmethod
    def _parse(cls, ref: str | None) -> str | None:
        from .data.refs import parse_ref

        if ref is not None:
            parse_ref(ref)
        return ref


class TriggerSpec(BaseModel):
    """An attack and its parameters, e.g. {attack: badnets, target: 0, size: 3}."""

    model_config = ConfigDict(extra="allow")
    attack: str = Field(..., examples=["badnets"])
    target: int | None = Field(None, ge=0, le=99_999, description="target class (default 0); an "
                               "`inverted` trigger takes none: the inversion finds it")

    def params(self) -> dict[str, Any]:
        """The attack's parameters (extras plus target, when given)."""
        given = {} if self.target is None else {"target": self.target}
        return {**(self.model_extra or {}), **given}

    @model_validator(mode="after")
    def _known(self) -> TriggerSpec:
        from .attacks import ATTACKS

        entry = ATTACKS.get(self.attack)
        parsed = entry.parse(self.params())
        if getattr(parsed, "label_map", "") == "all_to_all" and entry.obj.clean_label:
            raise ValueError(f"{self.attack} is a clean-label attack (it poisons target-class "
                             "images): it has no all_to_all form")
        return self

    def parsed(self) -> BaseModel:
        """The validated parameter model."""
        from .attacks import ATTACKS

        return ATTACKS.get(self.attack).parse(self.params())

    def build(self):
        """The Trigger object this spec describes."""
        from .attacks import build_trigger

        return build_trigger(self.attack, self.params())

    @property
    def label(self) -> str:
        """Short name used in reports (attack and target, `badnets->y+1` for an all-to-all
        label map; `inverted` alone)."""
        if self.attack == "inverted":
            return "inverted"
        if (self.model_extra or {}).get("label_map") == "all_to_all":
            return f"{self.attack}->y+{(self.model_extra or {}).get('shift', 1)}"
        return f"{self.attack}->{self.target or 0}"


class MethodSpec(BaseModel):
    """A purification method and its parameters, e.g. {name: pam, rho: 0.5}."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., examples=["pam"])
    label: str | None = Field(None, description="report name (default: name); lets one "
                              "audit run a method twice with different parameters")

    def params(self) -> dict[str, Any]:
        """The method's parameters (everything but name and label)."""
        return dict(self.model_extra or {})

    @property
    def key(self) -> str:
        """The name this method's results carry in the report and in gate expressions."""
        return self.label or self.name

    @model_validator(mode="after")
    def _known(self) -> MethodSpec:
        from .defenses import DEFENSES

        DEFENSES.get(self.name).parse(self.params())
        return self

    def parsed(self):
        """The validated parameter model."""
        from .defenses import DEFENSES

        return DEFENSES.get(self.name).parse(self.params())


class SweepBudget(_Strict):
    """One further RA budget: `poison_num` poisoned and `clean_num` clean samples (default:
    the reference budget's total, the rest clean) for `epochs` epochs."""

    poison_num: int = budget("images", 20, ge=0)
    epochs: int = budget("epochs", 5)
    clean_num: int | None = budget("images", None, ge=0, description="default: the "
                                   "reference budget's total minus poison_num")

    @model_validator(mode="before")
    @classmethod
    def _pair(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            if len(data) != 2:
                raise ValueError("a sweep point is [poison_num, epochs]")
            return {"poison_num": data[0], "epochs": data[1]}
        return data


def batches_on(setting: str, device: str | None) -> bool:
    """Whether work over many models (RA's retuning, LMC's points) runs as one vmapped
    batch: `on`, `off`, or `auto`, on when the spec's `device` names CUDA, where many small
    trainings or evaluations leave the GPU idle (on the CPU a vmapped convolution is a
    grouped one and slower). A spec without a device is not batched by `auto`: its plan
    must be the same in the gateway that stores it and on the GPU worker that runs it."""
    if setting != "auto":
        return setting == "on"
    return device is not None and device.startswith("cuda")


class RetuneSpec(_Strict):
    """Retuning Attack budget (METHODS.md §4 reference: 5 poisoned + 995 clean, 5 epochs)."""

    enabled: bool = True
    poison_num: int = budget("images", 5, ge=0, description="poisoned samples (labelled "
                             "target)")
    clean_num: int = budget("images", 995, ge=0, description="clean samples")
    epochs: int = budget("epochs", 5)
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = budget("batch", 128)
    seed: int = seed_field(1000, "RA's own seed, different from the defender's")
    seeds: int | None = Field(None, ge=1, le=20, description="RA runs per budget, each on "
                              "its own draw (seed, seed + 1, ...), on the method's model and "
                              "on the baseline alike; the report gives P-ASR and the gap "
                              "with 95% intervals and the verdict uses them. Default: 3 on "
                              "CUDA, 1 on the CPU")
    sweep: list[SweepBudget] = Field(
        default_factory=lambda: [SweepBudget(poison_num=20, epochs=5),
                                 SweepBudget(poison_num=50, epochs=5)], max_length=64,
        description="further RA budgets for a P-ASR curve, each {poison_num, epochs} or a "
        "[poison_num, epochs] pair; each point feeds the verdict (max_gap)",
        json_schema_extra=lambda schema: schema.update(items={"anyOf": [schema["items"], {
            "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 200_000},
            "minItems": 2, "maxItems": 2, "description": "[poison_num, epochs]"}]}))
    baseline: bool = Field(True, description="run the same budget on the baseline model")
    batched: Literal["auto", "on", "off"] = Field(
        "auto", description="retune every model of a budget (each method's and the "
        "baseline) as one vmapped training, one `retune-batch` stage per trigger and budget: "
        "the same numbers, faster on a GPU, slower on a CPU. auto: on when `device` names "
        "CUDA")
    removed_asr: float = Field(0.2, ge=0, le=1, description="O-ASR at or below this counts "
                               "as removed")
    superficial_gap: float = Field(0.2, ge=0, le=1, description="P-ASR this far above the "
                                   "baseline's P-ASR, under any RA budget of the run, flags "
                                   "superficial safety: `superficial` when the gap's 95% "
                                   "interval lies above it at some budget, `robust` when every "
                                   "budget's interval lies at or below it, else "
                                   "`inconclusive`")

    def seeds_on(self, device: str | None) -> int:
        """RA runs per budget on `device` (`seeds`, else 3 on CUDA and 1 on the CPU, where
        three times the retuning costs minutes; `None`: this process's default device)."""
        if self.seeds is not None:
            return self.seeds
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return 3 if device.startswith("cuda") else 1

    def batched_on(self, device: str | None) -> bool:
        """Whether RA retunes a budget's models together (`batches_on`)."""
        return batches_on(self.batched, device)
    max_acc_drop: float = Field(0.05, ge=0, le=1, description="a method whose O-C-Acc falls "
                                "more than this below the submitted model's C-Acc is "
                                "`degraded`, whatever its ASR: it removed the backdoor by "
                                "breaking the model")


class QRASpec(_Strict):
    """Query-based Reactivation Attack settings (METHODS.md §4)."""

    enabled: bool = True
    eps: float = Field(16.0, gt=0, le=255, description="L-inf radius in 8-bit units")
    alpha: float = Field(0.2, ge=0, le=1000, description="weight of the KL term")
    epochs: int = budget("epochs", 50)
    lr: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = budget("batch", 128)
    clean_num: int = budget("images", 500)
    poison_num: int = budget("images", 500)
    hidden: int = budget("width", 1024, ge=8, description="generator MLP width")
    transfer: bool = Field(True, description="apply each method's delta to the others")
    batched: Literal["auto", "on", "off"] = Field(
        "auto", description="train every method's generator of a trigger as one vmapped "
        "training (one `qra-batch` stage per trigger; the reference model shared), and "
        "evaluate the transfer's models together: the same numbers, faster on a GPU, slower "
        "on a CPU. auto: on when `device` names CUDA")

    def batched_on(self, device: str | None) -> bool:
        """Whether QRA trains a trigger's generators together (`batches_on`)."""
        return batches_on(self.batched, device)


class LMCSpec(_Strict):
    """Backdoor-connected path settings."""

    enabled: bool = True
    points: int = budget("iterations", 11, ge=2, le=101, description="points on the path")
    bn: Literal["recompute", "interpolate"] = "recompute"
    batched: Literal["auto", "on", "off"] = Field(
        "auto", description="evaluate every point of a path as one vmapped model: the same "
        "numbers, faster on a GPU, slower on a CPU. auto: on when `device` names CUDA")

    def batched_on(self, device: str | None) -> bool:
        """Whether a path's points are evaluated together (`batches_on`)."""
        return batches_on(self.batched, device)


class Plan(_Strict):
    """What the audit runs: purification methods, then RA, QRA and LMC on each."""

    methods: list[MethodSpec] = Field(default_factory=list, max_length=64, description="empty: "
                                      "audit the submitted model as it is")
    retune: RetuneSpec = Field(default_factory=RetuneSpec)
    qra: QRASpec = Field(default_factory=QRASpec)
    lmc: LMCSpec = Field(default_factory=LMCSpec)
    min_asr: float = Field(0.5, ge=0, le=1, description="a trigger whose ASR on the submitted "
                           "model is below this activates no backdoor: every method gets the "
                           "verdict no_backdoor on it, and gate clauses on methods fail closed "
                           "unless gate_options.allow_no_backdoor")
    until: Literal["robust"] | None = Field(None, description="robust: purify, audit the "
                                            "result with RA and its sweep, and escalate the "
                                            "method's setting (rounds, then rho, then the "
                                            "reversed-sample share) until the verdict is "
                                            "robust (one method; POST /purify?until=robust)")
    max_attempts: int = Field(4, ge=1, le=8, description="with until: robust, the most "
                              "attempts (the first is the method as given)")

    @model_validator(mode="after")
    def _unique(self) -> Plan:
        keys = [m.key for m in self.methods]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"methods appear twice: {dup}; give one a distinct label")
        return self


DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]{1,2})?)$"


class GateOptions(_Strict):
    """What a gate accepts besides its clauses' numbers; each is off by default, so a gate
    fails closed on a result that judges nothing."""

    allow_no_backdoor: bool = Field(False, description="let method clauses be evaluated "
                                    "when a trigger activates no backdoor in the submitted "
                                    "model (default: they fail, naming the trigger)")
    allow_inconclusive: bool = Field(False, description="let clauses on a method judged "
                                     "inconclusive be evaluated (default: they fail, naming "
                                     "the budget whose gap interval straddles the margin)")


class AuditSpec(_Strict):
    """An audit request: model, data, triggers, plan, seed and the release gate."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec
    triggers: list[TriggerSpec] = Field(default_factory=list, max_length=8, description=
        "known or suspected triggers; without one, ASR, RA, QRA and LMC cannot be measured")
    plan: Plan = Field(default_factory=Plan)
    seed: int = seed_field(0, "the audit's seed (defender's splits, initializations)")
    gate: list[str] = Field(default_factory=list, max_length=64,
                            examples=[["pam.p_asr <= 0.2"]], description="release gate "
                            "clauses; also accepted as {require: [...], allow_no_backdoor: "
                            "true}, the clauses and gate_options in one object")
    gate_options: GateOptions = Field(default_factory=GateOptions)
    reference: str | None = Field(None, description="path of a benign reference checkpoint "
                                  "(a model trained clean) for RA's baseline and QRA; "
                                  "default: the EP model")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="auto (the default: "
                               "CUDA if the worker has it, else the CPU), cpu, cuda or cuda:N")

    @model_validator(mode="before")
    @classmethod
    def _gate_object(cls, data: Any) -> Any:
        """`gate: {require: [...], allow_no_backdoor: true}` -> gate and gate_options."""
        if isinstance(data, dict) and isinstance(data.get("gate"), dict):
            options = dict(data["gate"])
            data = {**data, "gate": options.pop("require", []),
                    "gate_options": {**(data.get("gate_options") or {}), **options}}
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        return None if device == "auto" else device

    @model_validator(mode="after")
    def _targets_are_classes(self) -> AuditSpec:
        """A target or an all-to-all shift that is no class of the model is refused here,
        not by the worker after the job was queued."""
        for i, t in enumerate(self.triggers):
            if t.attack == "inverted":
                continue
            try:
                t.build().bind_classes(self.model.num_classes)
            except SpecError as exc:
                raise ValueError(f"triggers[{i}] ({t.attack}): {exc}") from None
        return self

    @field_validator("gate")
    @classmethod
    def _gate(cls, gate: list[str]) -> list[str]:
        from .gate import parse_clause

        for clause in gate:
            parse_clause(clause)
        return gate

    @model_validator(mode="after")
    def _plannable(self) -> AuditSpec:
        check_plan(self)
        return self

    def for_purify(self, method: MethodSpec) -> AuditSpec:
        """This spec with its plan reduced to one method (POST /purify?method=...)."""
        return self.model_copy(update={"plan": self.plan.model_copy(update={
            "methods": [method]})})


def check_plan(spec: AuditSpec) -> None:
    """Refuse what no executor could run, naming what is missing: a method that needs
    BatchNorm on an architecture without it, QRA without RA (QRA is guided by the RA
    model), a gate clause on a field no stage of the plan computes."""
    from .audit.escalate import check_escalation
    from .audit.kinds import field_kinds
    from .defenses import DEFENSES, NEEDS_BATCHNORM
    from .gate import parse_clause
    from .models import has_batchnorm

    plan = spec.plan
    check_escalation(spec)
    need_bn = [m.key for m in plan.methods if NEEDS_BATCHNORM in DEFENSES.get(m.name).tags]
    if need_bn and not has_batchnorm(spec.model.arch):
        raise SpecError(f"{', '.join(need_bn)} {'needs' if len(need_bn) == 1 else 'need'} "
                        f"BatchNorm layers, and {spec.model.arch} has none; choose other "
                        "methods for this architecture")
    if plan.qra.enabled and not plan.retune.enabled and spec.triggers:
        raise SpecError("plan.qra needs the retune stages (QRA is guided by the RA model): "
                        "set plan.retune.enabled: true, or plan.qra.enabled: false")
    computed_by = field_kinds()
    for text in spec.gate:
        c = parse_clause(text)
        kind = computed_by.get(c.field) if c.subject not in ("model", "baseline") else None
        if kind is not None and (not kind.enabled(spec) or not spec.triggers):
            why = ("there is no trigger" if not spec.triggers
                   else f"plan.{kind.name}.enabled is false")
            raise SpecError(f"gate clause {text!r} needs the {kind.name} stages, which this "
                            f"plan does not run ({why})")


def load_spec(source: str | Path | dict[str, Any]) -> AuditSpec:
    """Parse an AuditSpec from a dict, a YAML/JSON file path, or YAML/JSON text."""
    if isinstance(source, dict):
        raw: Any = source
    else:
        text = source
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                        and Path(source).suffix in (".yaml", ".yml", ".json")):
            try:
                text = Path(source).read_text()
            except OSError as exc:
                raise SpecError(f"cannot read spec {source}: {exc.strerror}") from None
        try:
            raw = yaml.safe_load(str(text))
        except yaml.YAMLError as exc:
            raise SpecError(f"spec is not valid YAML/JSON: {exc}") from None
        except RecursionError:
            raise SpecError("spec is nested too deeply to be a spec") from None
    if not isinstance(raw, dict):
        raise SpecError("spec must be a mapping (YAML or JSON object)")
    return validate_spec(raw)


def spec_yaml(spec: AuditSpec) -> str:
    """The spec as YAML that reads back as the same spec: what was set, explicit nulls
    included (a method's `scale_to: null` means "no scaling"; dropping it would scale)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def validate_spec(raw: dict[str, Any]) -> AuditSpec:
    """Validate a dict as an AuditSpec, turning pydantic errors into one SpecError."""
    try:
        return AuditSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(describe_validation(exc)) from None
    except RecursionError:
        raise SpecError("spec is nested too deeply to be a spec") from None


def spec_for(raw: dict[str, Any], method: str | None = None) -> AuditSpec:
    """Validate `raw`; for a purification (`method` given) reduce the plan to that method,
    keeping its parameters when the plan names it. The service and `ppr gate --local`
    share this, so both accept the same specs."""
    if method is None:
        return validate_spec(raw)
    plan = raw.get("plan")
    plan = {} if plan is None else plan
    if not isinstance(plan, dict):
        raise SpecError(f"invalid spec: plan: must be an object, got {type(plan).__name__}")
    listed = plan.get("methods") or []
    if not isinstance(listed, list):
        raise SpecError("invalid spec: plan.methods: must be a list of methods, got "
                        f"{type(listed).__name__}")
    names = [m.get("name") if isinstance(m, dict) else m for m in listed]
    if any(n != method for n in names) or len(listed) > 1:
        shown = ", ".join(sorted({str(n)[:40] for n in names}))
        raise SpecError(f"plan.methods lists {shown}, but a purification runs only "
                        f"method={method}: list {method} alone (with its parameters) or no "
                        "method, or submit an audit to compare methods")
    spec = validate_spec({**raw, "plan": {**plan, "methods": listed or [{"name": method}]}})
    return spec.for_purify(MethodSpec.model_validate(spec.plan.methods[0].model_dump()))


def describe_validation(exc: ValidationError) -> str:
    """One readable line per problem: `field.path: message`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "invalid spec: " + "; ".join(lines)
