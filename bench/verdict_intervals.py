"""Verdicts a gate can trust, measured on the demo (issue 32): the demo audit with one RA
seed and with three (intervals and verdicts side by side), and one purification run until
robust: PAM at the authors' momentum 0.1, which the demo's note says is superficial at this
scale, escalated in the documented order. The wall time of each on this machine.

Run: `python bench/verdict_intervals.py` (writes bench/results/verdict_intervals.json).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import audit  # noqa: E402
from ppr_engine.demo import DEMO_INVERSION, demo_spec, make_demo_model  # noqa: E402
from ppr_engine.spec import AuditSpec, validate_spec  # noqa: E402


def rows(report) -> list[dict]:
    """Per method: verdict, the largest mean gap, its interval, straddling budgets."""
    return [{"method": m.key, "verdict": m.verdict, "o_asr": m.o_asr, "p_asr": m.p_asr,
             "max_gap": m.max_gap, "max_gap_ci": m.max_gap_ci, "straddling": m.straddling}
            for m in report.methods]


def seeded(seeds: int) -> AuditSpec:
    """The demo's spec with `seeds` RA runs per budget (QRA and LMC as in the demo). Copied,
    not dumped and re-read: a dump without its None fields would drop the demo's
    `scale_to: null` and scale BTI-DBF's and PAM's epochs to 2,500 images."""
    spec = demo_spec()
    retune = spec.plan.retune.model_copy(update={"seeds": seeds})
    return spec.model_copy(update={"plan": spec.plan.model_copy(update={"retune": retune})})


def until_robust() -> AuditSpec:
    """PAM as the authors run it (momentum 0.1, 2 rounds here as in the demo), until robust."""
    spec = demo_spec(quick=True).model_dump(mode="json")
    spec["plan"]["methods"] = [{"name": "pam", "rounds": 2, "epochs": 10, "momentum": 0.1,
                                "scale_to": None, "augment": False,
                                "inversion": DEMO_INVERSION}]
    spec["plan"].update(until="robust", max_attempts=4)
    spec["gate"] = ["pam.robust == 1"]
    return validate_spec(spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,3", help="RA seeds of the demo audits to run")
    a = ap.parse_args()
    out: dict = {"what": "the demo's model (small_cnn, BadNets -> 3, synthetic data): the "
                 "audit with 1 and 3 RA seeds; PAM at momentum 0.1 purified until robust"}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bd.safetensors"
        make_demo_model(ckpt)
        for seeds in [int(n) for n in a.seeds.split(",") if n]:
            t0 = time.perf_counter()
            report = audit.run(seeded(seeds), ckpt).report
            out[f"seeds_{seeds}"] = {"seconds": round(time.perf_counter() - t0, 1),
                                     "methods": rows(report)}
            write("verdict_intervals", out)
        t0 = time.perf_counter()
        report = audit.run(validate_spec(until_robust()), ckpt, kind="purify").report
        esc = report.escalation
        out["until_robust"] = {"seconds": round(time.perf_counter() - t0, 1),
                               "robust": esc.robust, "chosen": esc.chosen, "reason": esc.reason,
                               "attempts": [a.model_dump() for a in esc.attempts]}
    write("verdict_intervals", out)


if __name__ == "__main__":
    main()
