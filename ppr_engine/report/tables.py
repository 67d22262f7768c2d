"""What every renderer (and the CLI) shows the same way: verdict colors, marks and
meanings, the glossary, the method table and the RA series.
"""

from __future__ import annotations

from typing import Any

from .prose import fmt, ra_budgets
from .schema import AuditReport

VERDICT_COLORS = {"robust": "#17803d", "superficial": "#b35c00", "not_removed": "#c0262d",
                  "degraded": "#6b3fa0", "inconclusive": "#8a7a00", "no_backdoor": "#222222",
                  "unknown": "#666666"}
VERDICT_MARKS = {"robust": "🟢", "superficial": "🟠", "not_removed": "🔴", "degraded": "🟣",
                 "inconclusive": "🟡", "no_backdoor": "⚫", "unknown": "⚪"}
VERDICT_MEANING = {
    "robust": "the backdoor is removed and stays removed under retuning",
    "superficial": "ASR is low, but retuning with a few poisoned images brings the backdoor "
                   "back beyond the baseline",
    "not_removed": "the purified model still answers the trigger (O-ASR above the limit)",
    "degraded": "the defense cost more clean accuracy than the limit (acc_drop above "
                "plan.retune.max_acc_drop), whatever its ASR: the model is broken, not purified",
    "inconclusive": "removed, but at some RA budget the gap's 95% interval straddles the "
                    "margin: a re-run could call it either way (more RA seeds decide)",
    "no_backdoor": "the trigger does not activate a backdoor in the submitted model (ASR "
                   "below plan.min_asr): there was nothing to purify, so nothing is judged",
    "unknown": "a stage failed, so no verdict",
}
GLOSSARY = [
    ("C-Acc", "accuracy on clean test images"),
    ("O-ASR", "attack success rate of the purified model: the share of triggered test images "
              "of other classes classified as the target"),
    ("RA", "Retuning Attack: fine-tune the purified model on a few poisoned images among clean "
           "ones, as an attacker with brief access would"),
    ("P-ASR", "attack success rate after RA"),
    ("baseline", "a model that never learned the backdoor (a reference model, or EP), "
                 "retuned the same way: how much ASR retuning alone teaches"),
    ("gap / max gap", "P-ASR minus the baseline's P-ASR, at the reference budget / the largest "
                      "over every RA budget; max gap decides the verdict"),
    ("QRA", "Query-based Reactivation Attack: a small input perturbation that reactivates the "
            "backdoor in the purified model, learned from queries only"),
    ("LMC", "linear mode connectivity: ASR along the straight path from the purified (0) to the "
            "backdoored model (1); a path that stays low means the purified model left the "
            "backdoor's basin (lambda50 is where ASR first exceeds 0.5)"),
]


def value_text(v: Any) -> str:
    """A gate clause's value (a number, a list of numbers, or a word) for display."""
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return fmt(v) if isinstance(v, float | int) or v is None else str(v)


TABLE_COLUMNS = [("O-C-Acc", "o_cacc"), ("acc drop", "acc_drop"), ("O-ASR", "o_asr"),
                 ("DER", "der"), ("P-C-Acc", "p_cacc"), ("P-ASR", "p_asr"),
                 ("base P-ASR", "baseline_p_asr"), ("gap", "gap"), ("max gap", "max_gap"),
                 ("QRA-ASR", "qra_asr"), ("LMC-l50", "lmc_lambda50")]


def table_rows(report: AuditReport) -> list[list[str]]:
    """The summary table (one row per method) as strings, shared by every renderer."""
    rows = []
    for m in report.methods:
        rows.append([m.key] + [fmt(getattr(m, f)) for _, f in TABLE_COLUMNS]
                    + [m.verdict, f"{m.seconds:.1f}"])
    return rows


def sweep_series(report: AuditReport) -> tuple[list[tuple[int, int]], list[tuple[str, list[
        float | None]]]]:
    """P-ASR against the RA budget: the budgets (poisoned samples, epochs) in order, and one
    series per method and trigger, then the baseline's (label 'baseline'), for the sweep
    table and plot."""
    triggers = sorted({t.trigger for m in report.methods for t in m.per_trigger})
    budgets = sorted({(b.poison_num, b.epochs) for m in report.methods for t in m.per_trigger
                      for b in ra_budgets(report, t)})
    series: list[tuple[str, list[float | None]]] = []
    base: dict[str, dict[tuple[int, int], float | None]] = {}
    for m in report.methods:
        for t in m.per_trigger:
            points = {(b.poison_num, b.epochs): b for b in ra_budgets(report, t)}
            label = m.key if len(triggers) == 1 else f"{m.key} [{t.trigger}]"
            series.append((label, [points[k].p_asr if k in points else None for k in budgets]))
            for k, b in points.items():
                if b.baseline_p_asr is not None:
                    base.setdefault(t.trigger, {})[k] = b.baseline_p_asr
    for trig in triggers:
        if trig in base:
            label = "baseline" if len(triggers) == 1 else f"baseline [{trig}]"
            series.append((label, [base[trig].get(k) for k in budgets]))
    return budgets, series


def gap_intervals(report: AuditReport) -> tuple[list[tuple[int, int]], list[tuple[str, list[
        str]]]]:
    """The gap to the baseline at every RA budget with its 95% interval, one row per method
    and trigger, as text ("0.26 [0.21, 0.31]"): what the verdict reads."""
    budgets, _ = sweep_series(report)
    triggers = {t.trigger for m in report.methods for t in m.per_trigger}
    rows: list[tuple[str, list[str]]] = []
    for m in report.methods:
        for t in m.per_trigger:
            points = {(b.poison_num, b.epochs): b for b in ra_budgets(report, t)}
            label = m.key if len(triggers) == 1 else f"{m.key} [{t.trigger}]"
            cells = []
            for k in budgets:
                p = points.get(k)
                if p is None or p.gap is None:
                    cells.append("-")
                else:
                    ci = f" [{p.gap_ci[0]:.2f}, {p.gap_ci[1]:.2f}]" if p.gap_ci else ""
                    cells.append(f"{p.gap:.2f}{ci}")
            if any(c != "-" for c in cells):
                rows.append((label, cells))
    return budgets, rows


TABLE_HEADER = ["method"] + [c for c, _ in TABLE_COLUMNS] + ["verdict", "seconds"]
