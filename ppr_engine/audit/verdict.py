"""The verdict of a method, from its numbers, and the rule stated in every report."""

from __future__ import annotations

from .. import stats
from ..report import MethodResult
from ..spec import AuditSpec

VERDICT_RULE = ("no_backdoor: the trigger's ASR on the submitted model is below "
                "plan.min_asr, so nothing is judged; degraded: O-C-Acc more than "
                "plan.retune.max_acc_drop below the submitted model's C-Acc (acc_drop), "
                "whatever the ASR; not_removed: O-ASR above plan.retune.removed_asr; "
                "superficial: removed, but under some RA budget (the reference one or a sweep "
                "point) the 95% interval of P-ASR minus the baseline's P-ASR under the same "
                "budget lies above plan.retune.superficial_gap (the largest mean gap is the "
                "robustness score max_gap); robust: removed, accuracy "
                "kept, and every budget's gap interval at or below that margin; "
                "inconclusive: otherwise (some budget's interval straddles the margin: more "
                "RA seeds, plan.retune.seeds, narrow it). With one RA seed the verdict reads "
                "the mean gap against the margin (the interval then states only the test "
                "images' sampling error, not the draw's). " + stats.METHOD)


def verdict(m: MethodResult, spec: AuditSpec) -> str:
    """The rule of VERDICT_RULE; without a baseline, P-ASR against removed_asr. Accuracy
    comes first: a method that breaks the model "removes" any backdoor, and calling it
    robust would recommend a broken model."""
    rs = spec.plan.retune
    if m.acc_drop is not None and m.acc_drop > rs.max_acc_drop:
        return "degraded"
    if m.o_asr is None:
        return "unknown"
    if m.o_asr > rs.removed_asr:
        return "not_removed"
    if m.max_gap_ci is not None:
        lower, upper = m.max_gap_ci
        if lower > rs.superficial_gap:
            return "superficial"
        return "robust" if upper <= rs.superficial_gap else "inconclusive"
    if m.max_gap is not None:
        return "superficial" if m.max_gap > rs.superficial_gap else "robust"
    if m.p_asr is not None:
        return "superficial" if m.p_asr > rs.removed_asr else "robust"
    return "unknown"


def worst(values: list[float | None]) -> float | None:
    """The largest computed value (None when none was computed)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None
