"""A trigger given by example against the same trigger given as a function.

Backdoors a small_cnn on the demo's synthetic data (attack and target as asked), then runs
the same audit (the demo's FST and EP, RA at the demo's budget and sweep) three times: with
the parametric trigger; with 2,000 poisoned images given as `data` alone (half held out for
ASR); and with `data` (1,000 images, ASR) and `train_data` (1,000 others, the attacker's).
The examples are the attack applied to synthetic images the audit's own sets never hold.

    python bench/examples_agreement.py --attack badnets --target 3
    python bench/examples_agreement.py --attack blended --target 7

Writes bench/results/examples_agreement-<attack>-<target>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import attacks, audit, data  # noqa: E402
from ppr_engine.backdoor import BackdoorRecipe, make_backdoor  # noqa: E402
from ppr_engine.checkpoint import save_model  # noqa: E402
from ppr_engine.demo import DEMO_TEST, DEMO_TRAIN, demo_spec  # noqa: E402
from ppr_engine.spec import validate_spec  # noqa: E402


def examples(attack: str, target: int, ref: str, out: Path) -> str:
    """`ref`'s images with the trigger, under their true labels, as an .npz reference."""
    src = data.load(ref)
    x = attacks.build_trigger(attack, {"target": target}).apply_set(src)
    np.savez(out, x=x.permute(0, 2, 3, 1).numpy(), y=src.y.numpy())
    return f"npz:{out}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--target", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ppr-examples-"))
    recipe = BackdoorRecipe(arch="small_cnn", attack=a.attack, rate=0.1, epochs=8, lr=0.05,
                            augment=False, seed=0, attack_params={"target": a.target})
    bd = make_backdoor(recipe, DEMO_TRAIN, DEMO_TEST)
    ckpt = tmp / "bd.safetensors"
    save_model(bd.model, ckpt)
    both = examples(a.attack, a.target, "synthetic:?n=2000&seed=4", tmp / "both.npz")
    held = examples(a.attack, a.target, "synthetic:?n=1000&seed=5", tmp / "held.npz")
    other = examples(a.attack, a.target, "synthetic:?n=1000&seed=6", tmp / "other.npz")
    base = demo_spec(quick=True).model_dump(mode="json")
    base["plan"]["methods"] = [m for m in base["plan"]["methods"] if m["name"] in ("fst", "ep")]
    base["gate"] = []
    variants = {
        "parametric": {"attack": a.attack, "target": a.target},
        "examples (data, half held out)": {"attack": "examples", "target": a.target,
                                           "data": both},
        "examples (data + train_data)": {"attack": "examples", "target": a.target,
                                         "data": held, "train_data": other},
    }
    rows = {}
    for name, trigger in variants.items():
        t0 = time.perf_counter()
        report = audit.run(validate_spec({**base, "triggers": [trigger]}), ckpt).report
        rows[name] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "model_asr": round(next(iter(report.model.asr.values())), 3),
            "methods": {m.key: {"o_asr": round(m.o_asr, 3), "p_asr": round(m.p_asr, 3),
                                "max_gap": round(m.max_gap, 3), "verdict": m.verdict}
                        for m in report.methods},
            "baseline_p_asr": round(next(iter(report.baseline.p_asr.values())), 3)}
        print(name, rows[name], flush=True)
    write(f"examples_agreement-{a.attack}-{a.target}", {
        "what": "the same audit (demo's FST and EP, RA 20/980 x 5 and sweep 10/5, 50/5) with "
                "the trigger as a function and given by example",
        "backdoor": {"attack": a.attack, "target": a.target, "c_acc": round(bd.c_acc, 3),
                     "asr": round(bd.asr, 3)},
        "runs": rows})


if __name__ == "__main__":
    main()
