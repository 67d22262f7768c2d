"""`attack: inverted` over models with and without a backdoor (small_cnn, synthetic data).

For each case (a clean model, or BadNets / Blended / SIG / WaNet with a target) x seed:
train the model as bench/bti_detection.py does, then learn the inverted trigger with the
demo's CPU settings (`ppr_engine.demo.DEMO_UNKNOWN_TRIGGER`: one inversion round, then the
smallest-trigger scan on 500 of the defender's images) and record what it concludes: found
or not, the generator's class and confidence, the scan's smallest class and ratio.
Run: `python bench/unknown_trigger.py [--cases clean:0 badnets:7] [--seeds 0 1]`
(about a minute per case on one CPU core; the result files are rewritten after each), or on
a saved model: `--ckpt M.safetensors --arch small_cnn --clean REF [--truth T] --tag NAME`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bti_detection import backdoored_model  # noqa: E402
from bench.common import RESULTS, write  # noqa: E402
from ppr_engine import attacks, data, models  # noqa: E402
from ppr_engine.checkpoint import load_model  # noqa: E402
from ppr_engine.defenses import DefenseContext  # noqa: E402
from ppr_engine.demo import DEMO_UNKNOWN_TRIGGER  # noqa: E402

CASES = ("clean:0", "badnets:7", "blended:3", "sig:3", "wanet:7")


def run_one(case: str, seed: int, device: torch.device) -> dict:
    """Train one model and learn an inverted trigger from it."""
    attack, target = case.split(":")
    model, asr, clean = backdoored_model(attack, int(target), seed, device)
    truth = None if attack == "clean" else int(target)
    return {"case": case, "seed": seed,
            "backdoor_asr": None if asr is None else round(asr, 3),
            **learn_inverted(model, clean, truth, device, seed)}


def run_checkpoint(ckpt: Path, arch: str, clean_ref: str, truth: int | None,
                   device: torch.device) -> dict:
    """Learn an inverted trigger from a saved model on real data (`--ckpt`)."""
    model = load_model(ckpt, arch, 10).to(device)
    clean = data.load(clean_ref, size=models.architecture(arch).input_size)
    return {"case": f"{ckpt.name} (truth {truth})", "seed": 0, "backdoor_asr": None,
            **learn_inverted(model, clean, truth, device, 0)}


def learn_inverted(model: torch.nn.Module, clean: data.ImageSet, truth: int | None,
                   device: torch.device, seed: int) -> dict:
    """The inverted trigger's finding on `model` with the defender's `clean` set, and
    whether it is right (`truth`: the true target; None: a clean model)."""
    train_part, val = data.train_val(clean, 0.1, seed=seed)
    trig = attacks.build_trigger("inverted", {k: v for k, v in DEMO_UNKNOWN_TRIGGER.items()
                                              if k != "attack"})
    start = time.perf_counter()
    trig.learn(model, DefenseContext(train_part.to(device), val.to(device), device, seed=seed))
    r = trig.inversion
    right = (not r.found) if truth is None else (r.found and r.target == truth)
    return {"found": r.found, "generator_class": r.target,
            "confidence": round(r.confidence, 3), "scan_smallest": r.scan["smallest"],
            "scan_ratio": r.scan["ratio"], "right": right, "conclusion": r.conclusion,
            "defender_images": len(train_part), "seconds": round(time.perf_counter() - start, 1)}


def table(rows: list[dict]) -> str:
    """Markdown, one line per run."""
    out = ["| model | seed | backdoor ASR | generator: class (confidence) | scan: smallest "
           "class (ratio) | found | right |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['case'] if not r['case'].startswith('clean') else 'clean'} | "
                   f"{r['seed']} | {r['backdoor_asr'] if r['backdoor_asr'] is not None else '-'}"
                   f" | {r['generator_class']} ({r['confidence']:.2f}) | {r['scan_smallest']} "
                   f"({r['scan_ratio']:.2f}) | {'yes' if r['found'] else 'no'} | "
                   f"{'yes' if r['right'] else '**no**'} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--ckpt", type=Path, help="instead: a saved model on real data")
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--clean", help="the defender's data reference (with --ckpt)")
    ap.add_argument("--truth", type=int, default=None, help="the true target (with --ckpt; "
                    "none: a clean model)")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = "unknown_trigger" + (f"-{a.tag}" if a.tag else "")
    if a.ckpt:
        row = run_checkpoint(a.ckpt, a.arch, a.clean, a.truth, device)
        (RESULTS / f"{name}.md").write_text(table([row]))
        write(name, {"what": "attack: inverted on a saved model", "clean": a.clean,
                     "trigger": DEMO_UNKNOWN_TRIGGER, "rows": [row]})
        return
    torch.set_num_threads(1)
    device = torch.device("cpu")
    rows = []
    for s in a.seeds:
        for case in a.cases:
            rows.append(run_one(case, s, device))
            print(rows[-1], flush=True)
            (RESULTS / f"{name}.md").write_text(table(rows))
            write(name, {"what": "attack: inverted, small_cnn, synthetic, 10% poisoning",
                         "trigger": DEMO_UNKNOWN_TRIGGER, "rows": rows,
                         "right": sum(r["right"] for r in rows), "runs": len(rows)})


if __name__ == "__main__":
    main()
