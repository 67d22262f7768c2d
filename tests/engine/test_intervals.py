"""Intervals instead of one draw (issue 32 item 2): RA runs once per seed on the method's
model and on the baseline alike, the report carries 95% intervals of P-ASR and of the gap
per budget, and the verdict reads the interval: robust, superficial, or inconclusive with
the budget that straddles the margin."""

from __future__ import annotations

import math

import pytest

from ppr_engine import audit, stats
from ppr_engine.checkpoint import save_model
from ppr_engine.spec import validate_spec


def test_wilson_and_student_t_match_their_textbook_values():
    lo, hi = stats.wilson(0.5, 100)  # Wilson (1927); Newcombe (1998), table I
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    assert stats.wilson(0.0, 10)[0] == 0.0 and round(stats.wilson(0.0, 10)[1], 4) == 0.2775
    assert stats.t975(2) == 4.303 and stats.t975(1000) == pytest.approx(1.96, abs=1e-3)
    lo, hi = stats.mean_interval([0.1, 0.2, 0.3])
    assert (lo + hi) / 2 == pytest.approx(0.2)
    assert hi - lo == pytest.approx(2 * 4.303 * 0.1 / math.sqrt(3))
    # paired: a constant difference has no spread whatever each side's spread
    assert stats.gap_interval([0.5, 0.7, 0.9], [0.1, 0.3, 0.5], 100, 100) == pytest.approx(
        (0.4, 0.4))
    # one seed: Newcombe's interval contains the difference and is wider than either side's
    lo, hi = stats.gap_interval([0.6], [0.2], 400, 400)
    assert lo < 0.4 < hi and hi - lo > stats.wilson(0.6, 400)[1] - stats.wilson(0.6, 400)[0]


def _spec(reference, margin: float) -> dict:
    return {"model": {"arch": "small_cnn"},
            "data": {"clean": "synthetic:?n=800&seed=2", "test": "synthetic:?n=400&seed=1"},
            "triggers": [{"attack": "badnets", "target": 0}],
            "reference": str(reference),
            "plan": {"methods": [{"name": "ep", "epochs": 2, "augment": False}],
                     "qra": {"enabled": False}, "lmc": {"enabled": False},
                     "retune": {"poison_num": 20, "clean_num": 180, "epochs": 2, "seeds": 3,
                                "sweep": [[40, 2]], "superficial_gap": margin,
                                "max_acc_drop": 1.0, "removed_asr": 1.0}},
            "gate": ["ep.max_gap <= 1.0"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory, backdoored, clean_model):
    root = tmp_path_factory.mktemp("iv")
    save_model(backdoored, root / "bd.safetensors")
    save_model(clean_model, root / "clean.safetensors")
    return root / "bd.safetensors", root / "clean.safetensors"


def test_three_seeds_give_intervals_and_a_straddled_margin_is_inconclusive(files):
    bd, clean = files
    first = audit.run(validate_spec(_spec(clean, 0.9)), bd).report
    ep = first.method("ep")
    points = [ep.per_trigger[0].budget] + ep.per_trigger[0].sweep
    for p in points:
        assert len(p.p_asr_runs) == 3 and p.p_asr == pytest.approx(sum(p.p_asr_runs) / 3)
        assert p.p_asr_ci[0] <= p.p_asr <= p.p_asr_ci[1]
        assert p.gap_ci[0] <= p.gap <= p.gap_ci[1] and p.gap_ci[0] < p.gap_ci[1]
    assert ep.verdict == "robust"  # every interval far below a 0.9 margin
    widest = max(points, key=lambda p: p.gap)
    # the same audit with the margin at that budget's mean gap: its interval straddles it
    again = audit.run(validate_spec(_spec(clean, round(widest.gap, 6))), bd).report
    ep2 = again.method("ep")
    assert ep2.verdict == "inconclusive"
    assert any(widest.key in s for s in ep2.straddling)
    # identical seeds, identical intervals
    assert [p.gap_ci for p in [ep2.per_trigger[0].budget] + ep2.per_trigger[0].sweep] == [
        p.gap_ci for p in points]
    # gates read inconclusive as a failure, naming the budget, unless they allow it
    clause = again.gate.clauses[0]
    assert not clause.passed and "inconclusive" in clause.detail and widest.key in clause.detail
    assert "inconclusive" in again.headline
    assert "Student's t" in again.verdict_rule
