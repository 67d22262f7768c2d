"""BTI-DBF target detection over attacks x targets x seeds (small_cnn, synthetic data).

For each (attack, target, seed): poison 10% of a synthetic training set, train small_cnn,
then run one round of BTI-DBF's inversion (the demo's CPU-scale settings) on a defender's
set of 900 images and record the detected class, its confidence (the share of non-target
images the generator sends there) and whether it is the true target.
Run: `python bench/bti_detection.py [--attacks sig wanet] [--seeds 0] [--tag T]` (all of it
takes about 30 minutes on two CPU cores; the result files are rewritten after every run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write  # noqa: E402
from ppr_engine import attacks, data, metrics, models, train  # noqa: E402
from ppr_engine.defenses import DefenseContext  # noqa: E402
from ppr_engine.defenses.bti import InversionParams, invert  # noqa: E402
from ppr_engine.demo import DEMO_INVERSION  # noqa: E402

# The implant settings of tests/engine/test_attacks.py: WaNet with s = 1 and no noise-mode
# samples, SIG and WaNet on the harder synthetic data (noise 0.8), where they implant.
ATTACKS = {"badnets": ({}, 0.6, 8), "blended": ({}, 0.6, 8), "sig": ({}, 0.8, 10),
           "wanet": ({"s": 1.0, "cross_ratio": 0.0}, 0.8, 10)}
TARGETS = (0, 3, 7)
SEEDS = (0, 1, 2)


def backdoored_model(attack: str, target: int, seed: int, device: torch.device):
    """(model, its ASR, the defender's clean set): small_cnn trained with 10% poisoning
    ("clean": no poisoning, ASR None)."""
    extra, noise, epochs = ATTACKS.get(attack, ({}, 0.6, 8))
    tr = data.make_synthetic(4000, seed=0, noise=noise)
    te = data.make_synthetic(1000, seed=1, noise=noise)
    clean = data.make_synthetic(1000, seed=2, noise=noise)
    trig = None
    if attack != "clean":
        trig = attacks.build_trigger(attack, {"target": target, **extra})
        tr = attacks.poison_training_set(tr, trig, 0.1, seed=seed).data
    torch.manual_seed(seed)
    model = train.fit(models.create("small_cnn", 10), tr, epochs=epochs, lr=0.05,
                      augment=False, device=device, seed=seed)
    asr = (metrics.attack_success_rate(model, attacks.triggered_test(te, trig), target)
           if trig else None)
    return model, asr, clean


def run_one(attack: str, target: int, seed: int, device: torch.device) -> dict:
    """Train one backdoored model and invert it."""
    model, asr, clean = backdoored_model(attack, target, seed, device)
    train_part, val = data.train_val(clean, 0.1, seed=seed)
    start = time.perf_counter()
    det = invert(model, DefenseContext(train_part, val, device, seed=seed),
                 InversionParams(**DEMO_INVERSION)).detection
    return {"attack": attack, "target": target, "seed": seed, "asr": round(asr, 3),
            "detected": det.target, "correct": det.target == target,
            "confidence": round(det.confidence, 3), "margin": round(det.margin, 3),
            "confident": det.confident, "seconds": round(time.perf_counter() - start, 1)}


def table(rows: list[dict]) -> str:
    """Markdown: one line per (attack, target), detections correct out of the seeds."""
    out = ["| attack | target | backdoor ASR (min) | detected (per seed) | correct | "
           "confidence (per seed) |", "|---|---|---|---|---|---|"]
    for attack in ATTACKS:
        for t in TARGETS:
            rs = [r for r in rows if r["attack"] == attack and r["target"] == t]
            if not rs:
                continue
            out.append(f"| {attack} | {t} | {min(r['asr'] for r in rs):.2f} | "
                       + ", ".join(str(r["detected"]) for r in rs)
                       + f" | {sum(r['correct'] for r in rs)}/{len(rs)} | "
                       + ", ".join(f"{r['confidence']:.2f}" + ("" if r["confident"] else "*")
                                   for r in rs) + " |")
    return "\n".join(out) + "\n\n`*`: below `min_confidence`, reported as not confident.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--tag", default="", help="suffix of the result files (a partial run)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # two of these can run side by side on two cores
    device = torch.device("cpu")
    rows = []
    name = "bti_detection" + (f"-{a.tag}" if a.tag else "")
    # seeds outermost, and the files rewritten after every run: a stopped run still leaves
    # a table covering every (attack, target) for the seeds it finished
    for s in a.seeds:
        for attack in a.attacks:
            for t in TARGETS:
                rows.append(run_one(attack, t, s, device))
                print(rows[-1], flush=True)
                (RESULTS / f"{name}.md").write_text(table(rows))
                write(name, {
                    "what": "BTI-DBF detection, small_cnn, synthetic, 10% poisoning",
                    "inversion": InversionParams(**DEMO_INVERSION).model_dump(),
                    "rows": rows,
                    "correct": sum(r["correct"] for r in rows), "runs": len(rows)})


if __name__ == "__main__":
    main()
