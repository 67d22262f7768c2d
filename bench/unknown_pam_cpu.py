"""An unknown-trigger PAM audit on the CPU with every default (issue 33): the demo's model,
1,000 of the defender's images, `triggers: [{attack: inverted}]`, `methods: [{name: pam}]`
and nothing else set, so the inversion runs at `sizes: auto` (the CPU sizes here). The
target is 10 minutes on 2 cores; before the CPU sizes it did not finish in 40.

Run: `python bench/unknown_pam_cpu.py` (writes bench/results/unknown_pam_cpu.json).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import audit  # noqa: E402
from ppr_engine.demo import DEMO_ATTACKER, DEMO_CLEAN, DEMO_TEST, make_demo_model  # noqa: E402
from ppr_engine.spec import validate_spec  # noqa: E402


def main() -> None:
    spec = validate_spec({"model": {"arch": "small_cnn"},
                          "data": {"clean": DEMO_CLEAN, "test": DEMO_TEST,
                                   "attacker": DEMO_ATTACKER},
                          "triggers": [{"attack": "inverted"}],
                          "plan": {"methods": [{"name": "pam"}]}})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bd.safetensors"
        make_demo_model(ckpt)
        t0 = time.perf_counter()
        report = audit.run(spec, ckpt).report
        seconds = time.perf_counter() - t0
    pam = report.method("pam")
    inv = report.inversions[0]
    write("unknown_pam_cpu", {
        "what": "the demo's model (BadNets -> 3), triggers [{attack: inverted}], methods "
                "[{name: pam}], every other setting the default, on the CPU",
        "threads": torch.get_num_threads(), "audit_seconds": round(seconds, 1),
        "stage_seconds": {s.name: s.seconds for s in report.stages
                          + [st for m in report.methods for st in m.stages]},
        "inversion": {"found": inv.found, "target": inv.target,
                      "confidence": inv.confidence,
                      "sizes": inv.detection.get("inversion_sizes")},
        "pam": {"verdict": pam.verdict if pam else None,
                "o_cacc": pam.o_cacc if pam else None, "o_asr": pam.o_asr if pam else None,
                "p_asr": pam.p_asr if pam else None, "max_gap": pam.max_gap if pam else None,
                "inversion_sizes": pam.record.get("inversion_sizes") if pam else None},
        "headline": report.headline})


if __name__ == "__main__":
    main()
