"""CIFAR-10 fidelity run: backdoor a CIFAR ResNet-18 with BadNets 5% on the real data,
then the full audit (every method, RA with the baseline and a sweep, QRA, LMC), with the
wall time of every stage. Meant for a GPU; `--smoke` shrinks everything to check the
pipeline on the CPU.

    python bench/cifar10_fidelity.py --data ../shared/data/cifar10-jpeg.tar.gz
    python bench/cifar10_fidelity.py --data ... --smoke       # minutes on a CPU

Writes bench/results/cifar10_fidelity[_smoke].json and the Markdown table beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write  # noqa: E402
from ppr_engine import audit  # noqa: E402
from ppr_engine.backdoor import BackdoorRecipe, make_backdoor  # noqa: E402
from ppr_engine.checkpoint import save_model  # noqa: E402
from ppr_engine.report import to_markdown  # noqa: E402
from ppr_engine.spec import validate_spec  # noqa: E402

ALL = ["ft", "lp", "ft_init", "fe_tuning", "fst", "fp", "nad", "anp", "ibau", "ft_sam",
       "bti_dbf", "tsbd", "ep", "pam"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="cifar10-jpeg.tar.gz (ImageFolder archive)")
    ap.add_argument("--arch", default="resnet18_cifar")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument("--smoke", action="store_true", help="tiny budgets, to test the pipeline")
    a = ap.parse_args()
    archive = Path(a.data).resolve()
    train = f"imagefolder:{archive}?split=train"
    test = f"imagefolder:{archive}?split=test"
    methods = [{"name": m} for m in a.methods.split(",")]
    plan = {"methods": methods, "retune": {"sweep": [[20, 5], [50, 5], [50, 10]]}}
    if a.smoke:
        train += "&fraction=0.1&seed=0"
        test += "&fraction=0.2&seed=0"
        a.epochs = 2
        small = {"epochs": 1}
        inv = {"pretrain_epochs": 1, "mask_epochs": 1, "gen_epochs": 1}
        for m in methods:
            if m["name"] == "anp":
                m.update(iterations=20)
            elif m["name"] == "ibau":
                m.update(rounds=1)
            elif m["name"] in ("bti_dbf", "pam"):
                m.update(small, rounds=1, scale_to=None, inversion=inv)
            elif m["name"] == "tsbd":
                m.update(small, max_unlearn_epochs=1)
            else:
                m.update(small)
        plan = {"methods": methods, "retune": {"epochs": 1},
                "qra": {"epochs": 1, "hidden": 64}, "lmc": {"points": 3}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bd.safetensors"
        t0 = time.perf_counter()
        recipe = BackdoorRecipe(arch=a.arch, attack="badnets", rate=a.rate, epochs=a.epochs)
        bd = make_backdoor(recipe, train, test)
        save_model(bd.model, ckpt)
        t1 = time.perf_counter()
        spec = validate_spec({
            "model": {"arch": a.arch, "num_classes": 10},
            "data": {"clean": f"imagefolder:{archive}?split=train&fraction=0.05&seed=1",
                     "test": test,
                     "attacker": f"imagefolder:{archive}?split=train&fraction=0.02&seed=7"},
            "triggers": [{"attack": "badnets", "target": 0}], "plan": plan, "seed": 0})
        report = audit.run(spec, ckpt).report
        t2 = time.perf_counter()
    name = "cifar10_fidelity_smoke" if a.smoke else "cifar10_fidelity"
    (RESULTS / f"{name}.md").parent.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(to_markdown(report))
    write(name, {
        "what": f"{a.arch} BadNets {a.rate:.0%} on CIFAR-10 JPEG, {a.epochs} epochs; audit "
                "with the reference budgets" + (" (SMOKE: tiny budgets)" if a.smoke else ""),
        "backdoor": {"c_acc": bd.c_acc, "asr": bd.asr, "train_seconds": round(bd.seconds, 1),
                     "images_per_second": round(bd.images_per_second, 1)},
        "backdoor_stage_seconds": round(t1 - t0, 1), "audit_seconds": round(t2 - t1, 1),
        "report": report.model_dump(mode="json")})


if __name__ == "__main__":
    main()
