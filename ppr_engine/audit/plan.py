"""The audit as a plan of stages: what runs, in which order, what each stage needs, and
what it costs.

A stage is one unit of work with a stable id that the executor runs, records and reports:
`invert:inverted` (learn a trigger from the model), `evaluate` (the submitted model),
`purify:pam` (one method), `baseline` (the RA/QRA reference model), `retune:pam:badnets->0:
20x5` (RA of one model against one trigger at one budget; `baseline` and, without methods,
`model` stand for the baseline and the submitted model), `qra:pam:badnets->0`,
`qra-transfer`, `lmc:pam:badnets->0` and `report`. `needs` are the stages whose results a
stage uses (a stage whose need failed or was skipped is skipped, with the reason);
`after` are stages it merely waits for (`qra-transfer` takes whichever QRA stages
succeeded; `report` takes everything). Costs are image passes weighted by the
architecture's cost per image (`ppr_engine.cost`): what progress, scheduling and the
service's work cap count. The per-method chains (purify, RA budgets, QRA, LMC) depend on
each other only through `qra-transfer` and `report`, so executors may run them side by
side.

`plan_for` also refuses, when the spec is validated, what no executor could run: QRA
without RA (its guide is the retuned model), and gate clauses on fields no stage computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..cost import Sizes, evaluation_work, image_cost, lmc_work, qra_work
from ..spec import AuditSpec, RetuneSpec, check_plan

# sizes for cost estimates before the data are loaded (a CIFAR-scale audit)
NOMINAL = Sizes(clean=2250, test=10000, pool=1000, classes=10)


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
    """One unit of the audit (see the module)."""

    id: str
    kind: str  # invert | evaluate | purify | baseline | retune | qra | qra-transfer | lmc | report
    needs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    cost: float = 0.0
    method: str | None = None  # the method key (or "baseline", "model")
    trigger: int | None = None  # index into spec.triggers
    budget: Budget | None = None

    def waits_for(self) -> tuple[str, ...]:
        """Every stage that must be finished before this one starts."""
        return self.needs + self.after


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


def trigger_labels(spec: AuditSpec) -> list[str]:
    """Each trigger's label in stage ids and reports (made unique when two coincide)."""
    labels: list[str] = []
    for t in spec.triggers:
        label = t.label
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def plan_for(spec: AuditSpec, sizes: Sizes = NOMINAL) -> AuditPlan:
    """The ordered stages of `spec` (SpecError when a dependency cannot be met); for a
    purification run until robust, every attempt's stages (`escalation_plan`)."""
    check_plan(spec)
    if spec.plan.until is not None:
        return escalation_plan(spec, sizes)
    plan, labels = spec.plan, trigger_labels(spec)
    n = sizes.clean
    inverted = [i for i, t in enumerate(spec.triggers) if t.attack == "inverted"]
    stages: list[Stage] = []
    for i in inverted:
        params = spec.triggers[i].parsed()
        stages.append(Stage(f"invert:{labels[i]}", "invert", trigger=i, cost=params.inversion
                            .work(n, sizes.classes, params.rounds)))
    inverts = tuple(s.id for s in stages)
    stages.append(Stage("evaluate", "evaluate", needs=(), after=inverts,
                        cost=evaluation_work(sizes, len(spec.triggers))))
    keys = [m.key for m in plan.methods]
    for m in plan.methods:
        stages.append(Stage(f"purify:{m.key}", "purify", needs=("evaluate",), method=m.key,
                            cost=m.parsed().work(n, sizes.classes)
                            + evaluation_work(sizes, len(spec.triggers))))
    attacked = bool(spec.triggers) and (plan.retune.enabled or plan.qra.enabled)
    if attacked:
        ep = next((m.key for m in plan.methods if m.name == "ep"), None)
        needs = ("evaluate",) + ((f"purify:{ep}",) if ep and not spec.reference else ())
        cost = 0.0 if ep or spec.reference else _ep_work(sizes)
        stages.append(Stage("baseline", "baseline", needs=needs, method="baseline",
                            cost=cost + evaluation_work(sizes, len(spec.triggers))))
    subjects = keys or ["model"]
    rbudgets = budgets(plan.retune) if plan.retune.enabled and spec.triggers else []
    seeds = plan.retune.seeds_on(spec.device)
    chains = []
    for key in subjects + (["baseline"] if rbudgets and plan.retune.baseline else []):
        base = ("baseline",) if key == "baseline" else (
            ("evaluate",) if key == "model" else (f"purify:{key}",))
        for i, label in enumerate(labels):
            for b in rbudgets:
                chains.append(Stage(f"retune:{key}:{label}:{b.key}", "retune", needs=base,
                                    method=key, trigger=i, budget=b,
                                    cost=seeds * (b.epochs * (b.poison + b.clean)
                                                  + evaluation_work(sizes, 1))))
            if key == "baseline":
                continue
            if plan.qra.enabled:
                ref = f"retune:{key}:{label}:{rbudgets[0].key}"
                chains.append(Stage(f"qra:{key}:{label}", "qra", needs=base + (ref, "baseline"),
                                    method=key, trigger=i, cost=qra_work(spec, sizes)))
            if plan.lmc.enabled and key != "model":
                chains.append(Stage(f"lmc:{key}:{label}", "lmc", needs=base, method=key,
                                    trigger=i, cost=lmc_work(spec, sizes, 1)))
    stages += chains
    qras = tuple(s.id for s in chains if s.kind == "qra")
    if qras and plan.qra.transfer and len(subjects) > 1:
        stages.append(Stage("qra-transfer", "qra-transfer", after=qras,
                            needs=tuple(f"purify:{k}" for k in keys),
                            cost=len(qras) * (len(subjects) - 1) * sizes.test / 3))
    stages.append(Stage("report", "report", after=tuple(s.id for s in stages)))
    weight = image_cost(spec)
    return AuditPlan([replace(s, cost=s.cost * weight) for s in stages])


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
    return AuditPlan(list(stages.values()) + [Stage("report", "report", after=ids)])


def estimated_work(spec: AuditSpec, sizes: Sizes = NOMINAL) -> float:
    """The audit's work: the sum of its plan's stage costs, in CIFAR ResNet-18 image
    passes (`ppr_engine.cost`); what the service caps, per job and per principal."""
    return plan_for(spec, sizes).total_cost


def _ep_work(sizes: Sizes) -> float:
    from ..defenses import DEFENSES

    return DEFENSES.get("ep").parse({}).work(sizes.clean, sizes.classes)
