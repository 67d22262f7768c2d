"""Wall time of `ppr demo` (the README's main command) and of each of its audit stages.

Run: `python bench/demo_walltime.py` (writes bench/results/demo_walltime.json).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import audit  # noqa: E402
from ppr_engine.demo import demo_spec, make_demo_model  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = make_demo_model(Path(tmp) / "bd.safetensors")
        t1 = time.perf_counter()
        report = audit.run(demo_spec(), Path(tmp) / "bd.safetensors").report
        t2 = time.perf_counter()
    stages = {m.key: {s.name: s.seconds for s in m.stages} for m in report.methods}
    write("demo_walltime", {
        "what": "ppr demo: backdoor training + audit (FT, LP, FST, BTI-DBF, EP, PAM; RA with "
                "sweep, QRA, LMC)",
        "gate_passed": report.gate.passed,
        "backdoor_seconds": round(t1 - t0, 1), "audit_seconds": round(t2 - t1, 1),
        "total_seconds": round(t2 - t0, 1), "backdoored": {"c_acc": info["c_acc"],
                                                           "asr": info["asr"]},
        "stages_seconds": stages,
        "table": [{"method": m.key, "o_cacc": m.o_cacc, "o_asr": m.o_asr, "p_asr": m.p_asr,
                   "baseline_p_asr": m.baseline_p_asr, "max_gap": m.max_gap,
                   "sweep": {p.poison_num: p.p_asr for p in m.per_trigger[0].sweep},
                   "baseline_sweep": {p.poison_num: p.baseline_p_asr
                                      for p in m.per_trigger[0].sweep},
                   "qra_asr": m.qra_asr, "detection": m.record.get("detection"),
                   "lmc_lambda50": m.lmc_lambda50, "verdict": m.verdict}
                  for m in report.methods]})


if __name__ == "__main__":
    main()
