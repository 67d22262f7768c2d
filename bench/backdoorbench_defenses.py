"""BackdoorBench's post-training defenses (NC, SAU, CLP, BNP, RNP, NPD, MCR) on a BadNets
small_cnn (synthetic data, 10% poisoning) at the test budgets: C-Acc and ASR before and
after each.

Run: `python bench/backdoorbench_defenses.py [--target 3] [--seed 0] [names ...]`
(writes bench/results/backdoorbench_defenses-t<target>.json). Target 3 with seed 0 is the
demo's model; any other target trains one the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import write  # noqa: E402
from ppr_engine import attacks, data, metrics  # noqa: E402
from ppr_engine.backdoor import BackdoorRecipe, make_backdoor  # noqa: E402
from ppr_engine.defenses import DefenseContext, purify  # noqa: E402
from ppr_engine.demo import DEMO_CLEAN, DEMO_TEST, DEMO_TRAIN  # noqa: E402

# name -> (method, params): the budgets of tests/engine/test_defenses_bb.py, and variants
CASES = {
    "nc": ("nc", {"epochs": 5, "augment": False, "scan": {"max_images": 500}}),
    "rnp": ("rnp", {"unlearning_epochs": 5, "recovering_epochs": 5}),
    "bnp": ("bnp", {}),
    "clp": ("clp", {}),
    "clp_u2": ("clp", {"u": 2.0}),
    "sau": ("sau", {"epochs": 3, "augment": False, "lr": 1e-3}),
    "npd": ("npd", {"epochs": 10, "warm_epochs": 2, "augment": False}),
    "mcr": ("mcr", {"epochs": 5, "ft_epochs": 5, "augment": False}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("names", nargs="*", default=list(CASES))
    args = ap.parse_args()
    recipe = BackdoorRecipe(arch="small_cnn", attack="badnets", rate=0.1, epochs=8, lr=0.05,
                            augment=False, seed=args.seed,
                            attack_params={"target": args.target})
    model = make_backdoor(recipe, DEMO_TRAIN, DEMO_TEST).model.eval()
    test, clean = data.load(DEMO_TEST), data.load(DEMO_CLEAN)
    trigger = attacks.build_trigger("badnets", {"target": args.target})
    triggered = attacks.triggered_test(test, trigger)
    train, val = data.train_val(clean, 0.1, seed=0)
    ctx = DefenseContext(train, val, torch.device("cpu"), seed=0, triggers=[trigger])
    rows = [{"method": "backdoored", "c_acc": metrics.clean_accuracy(model, test),
             "asr": metrics.attack_success_rate(model, triggered, args.target)}]
    for name in args.names:
        method, params = CASES[name]
        start = time.perf_counter()
        out = purify(method, model, ctx, params)
        rows.append({"method": name, "params": params,
                     "c_acc": metrics.clean_accuracy(out.model, test),
                     "asr": metrics.attack_success_rate(out.model, triggered, args.target),
                     "seconds": round(time.perf_counter() - start, 1),
                     "record": {k: v for k, v in out.record.items()
                                if k not in ("params", "trace")}})
        print(f"{name:8s} C-Acc {rows[-1]['c_acc']:.3f} ASR {rows[-1]['asr']:.3f}", flush=True)
    write(f"backdoorbench_defenses-t{args.target}", {
        "what": "BackdoorBench's post-training defenses on a BadNets small_cnn (synthetic, "
                f"10%, target {args.target}, seed {args.seed}) at the test budgets",
        "rows": rows})


if __name__ == "__main__":
    main()
