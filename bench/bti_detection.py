"""BTI-DBF target detection over attacks x targets x seeds (small_cnn, synthetic data).

For each (attack, target, seed): poison 10% of a synthetic training set, train small_cnn,
then run one round of BTI-DBF's inversion (the demo's CPU-scale settings) on a defender's
set of 900 images and record the detected class, the generator's share (the share of
non-target images it sends there), every smallest-trigger scan (patch, warp, additive), and
for each set of scans whether the detection would be confident, and whether it is the true
target (the unlearning collapse of an earlier table is no longer run). Models
trained clean (`clean`, `clean_hard` on the SIG/WaNet data) have no target: any confident
detection there is a false alarm.
Run: `python bench/bti_detection.py [--attacks sig wanet] [--seeds 0] [--tag T]` (about 3
minutes per run on one core; the result files are rewritten after every run).

`--cifar ARCHIVE [--cache DIR]`: the same on real data at CPU scale: small_cnn trained on
20,000 CIFAR-10 training images (the recipe of `cifar10_fidelity.py --scale cpu`: 30 epochs,
SGD 0.1, cosine, crop + flip, 10% poisoning), ASR on 2,000 test images, a defender's set of
1,000 training images (seed 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write  # noqa: E402
from ppr_engine import attacks, data, metrics, models, train  # noqa: E402,F401
from ppr_engine.backdoor import BackdoorRecipe, make_backdoor  # noqa: E402
from ppr_engine.defenses import DefenseContext  # noqa: E402
from ppr_engine.demo import DEMO_INVERSION  # noqa: E402
from ppr_engine.inversion import FAMILIES, InversionParams, Scan, ScanParams, invert  # noqa: E402

# The implant settings of tests/engine/test_attacks.py: WaNet with s = 1 and no noise-mode
# samples, SIG and WaNet on the harder synthetic data (noise 0.8), where they implant.
ATTACKS = {"badnets": ({}, 0.6, 8), "blended": ({}, 0.6, 8), "sig": ({}, 0.8, 10),
           "wanet": ({"s": 1.0, "cross_ratio": 0.0}, 0.8, 10), "clean": ({}, 0.6, 8),
           "clean_hard": ({}, 0.8, 10)}
TARGETS = (0, 3, 7)
SEEDS = (0, 1, 2)


def backdoored_model(attack: str, target: int, seed: int, device: torch.device):
    """(model, its ASR, the defender's clean set): small_cnn trained with 10% poisoning
    ("clean", "clean_hard": no poisoning, ASR None)."""
    extra, noise, epochs = ATTACKS.get(attack, ({}, 0.6, 8))
    tr = data.make_synthetic(4000, seed=0, noise=noise)
    te = data.make_synthetic(1000, seed=1, noise=noise)
    clean = data.make_synthetic(1000, seed=2, noise=noise)
    trig = None
    if not attack.startswith("clean"):
        trig = attacks.build_trigger(attack, {"target": target, **extra})
        tr = attacks.poison_training_set(tr, trig, 0.1, seed=seed).data
    torch.manual_seed(seed)
    model = train.fit(models.create("small_cnn", 10), tr, epochs=epochs, lr=0.05,
                      augment=False, device=device, seed=seed)
    asr = (metrics.attack_success_rate(model, attacks.triggered_test(te, trig), target)
           if trig else None)
    return model, asr, clean


def cifar_model(attack: str, target: int, seed: int, device: torch.device,
                refs: dict[str, str], epochs: int):
    """(model, its ASR, the defender's clean set) on CIFAR-10 at CPU scale."""
    from bench.cifar10_fidelity import with_options

    clean_run = attack.startswith("clean")
    recipe = BackdoorRecipe(arch="small_cnn", attack="badnets" if clean_run else attack,
                            attack_params={"target": target, **ATTACKS[attack][0]},
                            rate=0.0 if clean_run else 0.1, epochs=epochs, seed=seed)
    bd = make_backdoor(recipe, with_options(refs["train"], fraction=0.4, seed=0),
                       with_options(refs["test"], fraction=0.2, seed=0), device=device)
    clean = data.load(with_options(refs["train"], fraction=0.02, seed=1))
    return bd.model, None if clean_run else bd.asr, clean


# the scan families of the bench: every family is run once per model; the rule is then
# evaluated for each subset (RULES), so one run shows what each family adds and costs
BENCH_INVERSION = {**DEMO_INVERSION, "scan": {**DEMO_INVERSION["scan"], "exhaustive": True,
                                               "families": list(FAMILIES)}}
RULES = {"patch": ("patch",), "patch+warp": ("patch", "warp"),
         "patch+additive": ("patch", "additive"), "all": FAMILIES}


def run_one(attack: str, target: int | None, seed: int, device: torch.device,
            cifar: tuple[dict[str, str], int] | None = None,
            families: tuple[str, ...] = FAMILIES, scan: dict | None = None) -> dict:
    """Train one model and invert it (target None: a model trained clean)."""
    model, asr, clean = (cifar_model(attack, target or 0, seed, device, *cifar) if cifar
                         else backdoored_model(attack, target or 0, seed, device))
    train_part, val = data.train_val(clean, 0.1, seed=seed)
    start = time.perf_counter()
    ctx = DefenseContext(train_part, val, device, seed=seed)
    inversion = {**BENCH_INVERSION, "scan": {**BENCH_INVERSION["scan"],
                                             "families": list(families), **(scan or {})}}
    det = invert(model, ctx, InversionParams(**inversion)).detection
    row = {"attack": attack, "target": target, "seed": seed,
           "asr": round(asr, 3) if asr is not None else None,
           "detected": det.target, "correct": det.target == target,
           "confidence": round(det.confidence, 3), "margin": round(det.margin, 3),
           "generator_confident": det.generator_confident,
           "scans": {r.family: {"smallest": r.smallest, "ratio": round(r.ratio, 3),
                                "anomalous": r.anomalous} for r in det.scan.results},
           "seconds": round(time.perf_counter() - start, 1)}
    for name, rule in RULES.items():
        if set(rule) <= set(families):
            sub = replace(det, scan=Scan([r for r in det.scan.results if r.family in rule]))
            row[f"confident:{name}"] = sub.confident
    row["confident"] = row["confident:" + "+".join(ScanParams().families)]
    return row


def _mark(r: dict) -> str:
    """The generator's class and share, starred below `min_confidence`."""
    return f"{r['detected']} ({r['confidence']:.2f}" + (")" if r["generator_confident"] else "*)")


def _flag(r: dict, family: str) -> str:
    s = r["scans"][family]
    return f"{s['smallest']} ({s['ratio']:.2f}{'!' if s['anomalous'] else ''})"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (attack, target): the generator, each scan, and for each rule
    (which scans verify) the runs confident and right and the runs confidently wrong (on
    clean models: false alarms)."""
    rules = [n for n in RULES if any(f"confident:{n}" in r for r in rows)]
    out = ["| attack | target | ASR (min) | generator: class (share) | patch | additive | warp | "
           + " | ".join(f"{n}: right / wrong" for n in rules) + " | generator alone: wrong |",
           "|" + "---|" * (8 + len(rules))]
    for attack in ATTACKS:
        for t in (None,) if attack.startswith("clean") else TARGETS:
            rs = [r for r in rows if r["attack"] == attack and r["target"] == t]
            if not rs:
                continue
            asr = "-" if t is None else f"{min(r['asr'] for r in rs):.2f}"
            cells = [", ".join(_flag(r, fam) if fam in r["scans"] else "-" for r in rs)
                     for fam in FAMILIES]
            per_rule = []
            for n in rules:
                right = sum(r.get(f"confident:{n}", False) and r["correct"] for r in rs)
                wrong = sum(r.get(f"confident:{n}", False) and not r["correct"] for r in rs)
                per_rule.append(f"{'-' if t is None else right} / {wrong}")
            gen_wrong = sum(r["generator_confident"] and not r["correct"] for r in rs)
            out.append(f"| {attack} | {'-' if t is None else t} | {asr} | "
                       + ", ".join(_mark(r) for r in rs) + " | " + " | ".join(cells) + " | "
                       + " | ".join(per_rule) + f" | {gen_wrong} |")
    return "\n".join(out) + ("\n\n`*`: the generator's share is below `min_confidence` (0.5); "
                              "scans: smallest class (ratio), `!` anomalous (ratio <= 0.5). A "
                              "rule is confident when the share reaches 0.5 and one of its scans "
                              "flags the generator's class.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--targets", nargs="+", type=int, default=list(TARGETS))
    ap.add_argument("--tag", default="", help="suffix of the result files (a partial run)")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                    help="scan families to run (the rules over the others are left out)")
    ap.add_argument("--cifar", type=Path, help="cifar10-jpeg.tar.gz: real data instead")
    ap.add_argument("--cache", type=Path, help="decode the archive once into .npz files here")
    ap.add_argument("--epochs", type=int, default=30, help="CIFAR-10 training epochs")
    ap.add_argument("--scan-images", type=int, help="the scans' images (default: the demo's)")
    ap.add_argument("--scan-epochs", type=int, help="the scans' epochs (default: the demo's)")
    a = ap.parse_args()
    scan = {k: v for k, v in (("max_images", a.scan_images), ("epochs", a.scan_epochs))
            if v is not None}
    cifar = None
    if a.cifar:
        from bench.cifar10_fidelity import split_refs

        cifar = (split_refs(a.cifar.resolve(), a.cache), a.epochs)
    torch.set_num_threads(1)  # two of these can run side by side on two cores
    device = torch.device("cpu")
    rows = []
    name = "bti_detection" + (f"-{a.tag}" if a.tag else "")
    # seeds outermost, and the files rewritten after every run: a stopped run still leaves
    # a table covering every (attack, target) for the seeds it finished
    for s in a.seeds:
        for attack in a.attacks:
            for t in (None,) if attack.startswith("clean") else a.targets:
                rows.append(run_one(attack, t, s, device, cifar, tuple(a.families), scan))
                print(rows[-1], flush=True)
                (RESULTS / f"{name}.md").write_text(table(rows))
                write(name, {
                    "what": "BTI-DBF detection, small_cnn, "
                            + ("CIFAR-10 at CPU scale" if cifar else "synthetic")
                            + ", 10% poisoning",
                    "inversion": InversionParams(**{**BENCH_INVERSION, "scan": {
                        **BENCH_INVERSION["scan"], "families": list(a.families),
                        **scan}}).model_dump(),
                    "rows": rows,
                    "correct": sum(r["correct"] for r in rows), "runs": len(rows),
                    "confidently_wrong": {
                        "generator_alone": sum(r["generator_confident"] and not r["correct"]
                                               for r in rows),
                        **{n: sum(r.get(f"confident:{n}", False) and not r["correct"]
                                  for r in rows) for n in RULES}}})


if __name__ == "__main__":
    main()
