"""PAM budget study on the demo's model: rounds, momentum and epochs against the EP baseline.

The demo's backdoored small CNN (BadNets, target 3, synthetic data), the demo's defender
set (900 train + 100 validation images) and attacker pool; PAM with BTI-DBF inverted data
(the demo's CPU-scale inversion) at several budgets, each attacked by RA (20 poisoned +
980 clean, 5 epochs) and the sweep (10 and 50 poisoned, 5 epochs) beside the EP baseline.
Run: `python bench/pam_budget.py` (about 20 minutes on two CPU cores).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write  # noqa: E402
from ppr_engine import audit  # noqa: E402
from ppr_engine.demo import DEMO_INVERSION, demo_spec, make_demo_model  # noqa: E402
from ppr_engine.spec import validate_spec  # noqa: E402

BASE = {"name": "pam", "augment": False, "inversion": DEMO_INVERSION}
# (label, parameters): the authors' defaults first, then the departures
CONFIGS = [
    ("authors: m0.1, 3x30 ep scaled", {"momentum": 0.1, "rounds": 3, "epochs": 30}),
    ("m0.1, 3x30 ep unscaled", {"momentum": 0.1, "rounds": 3, "epochs": 30,
                                "scale_to": None}),
    ("m0.9, 1x10 ep", {"momentum": 0.9, "rounds": 1, "epochs": 10, "scale_to": None}),
    ("m0.9, 2x10 ep (demo)", {"momentum": 0.9, "rounds": 2, "epochs": 10, "scale_to": None}),
    ("m0.9, 3x10 ep", {"momentum": 0.9, "rounds": 3, "epochs": 10, "scale_to": None}),
]


def main() -> None:
    demo = demo_spec(quick=True).model_dump(mode="json", exclude_unset=True)
    ep = next(m for m in demo["plan"]["methods"] if m["name"] == "ep")
    methods = [ep] + [{**BASE, **params, "label": f"pam{i}"}
                      for i, (_, params) in enumerate(CONFIGS)]
    spec = validate_spec({**demo, "plan": {**demo["plan"], "methods": methods}, "gate": []})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "demo.safetensors"
        make_demo_model(ckpt)
        report = audit.run(spec, ckpt).report
    base = report.baseline
    rows = []
    for i, (label, params) in enumerate(CONFIGS):
        m = report.method(f"pam{i}")
        t = m.per_trigger[0]
        rows.append({"config": label, "params": params,
                     "epochs_per_round": m.record.get("epochs_per_round"),
                     "o_cacc": m.o_cacc, "o_asr": m.o_asr, "p_asr": m.p_asr,
                     "sweep": {f"{p.poison_num}p": p.p_asr for p in t.sweep},
                     "max_gap": m.max_gap, "verdict": m.verdict,
                     "detection": m.record.get("detection"), "seconds": m.seconds})
    epm = report.method("ep")
    lines = ["| PAM setting | epochs/round | O-C-Acc | O-ASR | P-ASR 10p | P-ASR 20p | "
             "P-ASR 50p | max gap | verdict | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sw = r["sweep"]
        lines.append(f"| {r['config']} | {r['epochs_per_round']} | {r['o_cacc']:.3f} | "
                     f"{r['o_asr']:.3f} | {sw.get('10p', 0):.3f} | {r['p_asr']:.3f} | "
                     f"{sw.get('50p', 0):.3f} | {r['max_gap']:+.3f} | {r['verdict']} | "
                     f"{r['seconds']:.0f} |")
    bsw = {p.poison_num: p.p_asr for p in next(iter(base.sweep.values()))}
    lines.append(f"| EP baseline (m0.9, 10 ep) | - | {epm.o_cacc:.3f} | {epm.o_asr:.3f} | "
                 f"{bsw.get(10, 0):.3f} | {next(iter(base.p_asr.values())):.3f} | "
                 f"{bsw.get(50, 0):.3f} | - | - | {epm.seconds:.0f} |")
    md = "\n".join(lines) + "\n"
    (RESULTS / "pam_budget.md").write_text(md)
    write("pam_budget", {"what": "PAM budgets on the demo model (BadNets target 3, small_cnn, "
                                 "synthetic); RA 20p/980c/5ep and sweep 10p, 50p",
                         "model": report.model.model_dump(), "rows": rows,
                         "baseline": base.model_dump()})
    print(md)


if __name__ == "__main__":
    main()
