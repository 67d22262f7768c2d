"""How much work a spec asks for, in image passes (one forward and backward pass of one
image through the audited model; a forward pass alone counts a third).

One estimate serves the service's cap on a spec's total work (`SPEC_LIMITS.max_work`,
checked at submission with the sizes it knows and again by the worker with the loaded data)
and the audit plan's stage costs (progress, scheduling). It counts what dominates: each
method's own `work(n, classes)`, the inversions, RA at every budget for every method and the
baseline, QRA and its transfer, LMC, and the evaluations; it is an estimate, within a small
factor, not a bill.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import AuditSpec


@dataclass(frozen=True)
class Sizes:
    """The images an audit works on: the defender's set, the test set, the attacker's
    pool, and the number of classes."""

    clean: int
    test: int
    pool: int
    classes: int


def retune_work(spec: AuditSpec, sizes: Sizes) -> float:
    """RA on one model against one trigger: the reference budget and every sweep point."""
    rs = spec.plan.retune
    if not rs.enabled:
        return 0.0
    total = rs.poison_num + rs.clean_num
    budgets = [(total, rs.epochs)] + [
        (b.poison_num + (b.clean_num if b.clean_num is not None else max(0, total - b.poison_num)),
         b.epochs) for b in rs.sweep]
    return float(sum(images * epochs for images, epochs in budgets))


def evaluation_work(sizes: Sizes, triggers: int) -> float:
    """C-Acc and every trigger's ASR of one model."""
    return (sizes.test * (1 + triggers)) / 3


def qra_work(spec: AuditSpec, sizes: Sizes) -> float:
    """QRA against one model and trigger: three models per step, then its four numbers."""
    q = spec.plan.qra
    if not q.enabled:
        return 0.0
    return float(q.epochs * (q.clean_num + q.poison_num) * 2 + 4 * sizes.test / 3)


def lmc_work(spec: AuditSpec, sizes: Sizes, triggers: int) -> float:
    """LMC for one model and trigger: BN statistics and the metrics at every point."""
    lm = spec.plan.lmc
    if not lm.enabled:
        return 0.0
    return float(lm.points * (sizes.clean + sizes.test * (1 + triggers)) / 3)


def stage_work(spec: AuditSpec, sizes: Sizes) -> dict[str, float]:
    """Image passes by kind of stage (see the module)."""
    n_trig = max(1, len(spec.triggers))
    methods = spec.plan.methods
    n_models = max(1, len(methods))
    out = {"invert": 0.0, "purify": 0.0, "evaluate": 0.0, "baseline": 0.0, "retune": 0.0,
           "qra": 0.0, "qra-transfer": 0.0, "lmc": 0.0}
    for t in spec.triggers:
        params = t.parsed()
        if hasattr(params, "inversion"):
            out["invert"] += params.inversion.work(sizes.clean, sizes.classes, params.rounds)
    out["evaluate"] = evaluation_work(sizes, n_trig) * (1 + len(methods))
    for m in methods:
        out["purify"] += m.parsed().work(sizes.clean, sizes.classes)
    if spec.plan.retune.enabled and spec.plan.retune.baseline:
        if spec.reference is None and "ep" not in [m.name for m in methods]:
            from .defenses import DEFENSES

            out["baseline"] += DEFENSES.get("ep").parse({}).work(sizes.clean, sizes.classes)
        out["baseline"] += retune_work(spec, sizes) * n_trig
    out["retune"] = retune_work(spec, sizes) * n_trig * n_models
    out["qra"] = qra_work(spec, sizes) * n_trig * n_models
    if spec.plan.qra.enabled and spec.plan.qra.transfer:
        out["qra-transfer"] = n_trig * n_models * max(0, n_models - 1) * sizes.test / 3
    out["lmc"] = lmc_work(spec, sizes, n_trig) * n_trig * len(methods)
    return out


def total_work(spec: AuditSpec, sizes: Sizes) -> float:
    """All of the audit's image passes."""
    return sum(stage_work(spec, sizes).values())
