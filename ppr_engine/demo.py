"""`ppr demo`: the whole story on one machine, nothing downloaded.

Make a BadNets-backdoored small CNN on synthetic data, then audit it with LP, FT, FST, EP,
PAM (fed the known trigger) and BTI-DBF: purification, the Retuning Attack against a
baseline, QRA and the LMC path. The budgets are scaled down from the paper's so it runs in
a few minutes on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

from .backdoor import BackdoorRecipe, make_backdoor
from .checkpoint import save_model
from .spec import AuditSpec, validate_spec
from .train import Progress, no_progress

DEMO_TRAIN = "synthetic:?n=4000&seed=0"
DEMO_TEST = "synthetic:?n=1000&seed=1"
DEMO_CLEAN = "synthetic:?n=1000&seed=2"
DEMO_ATTACKER = "synthetic:?n=2000&seed=3"
DEMO_INVERSION = {"rounds": 2, "pretrain_epochs": 5, "mask_epochs": 5, "gen_epochs": 10,
                  "round_unlearn_epochs": 1}


def demo_spec(quick: bool = False) -> AuditSpec:
    """The demo's audit spec (quick: smaller budgets, for tests)."""
    ep = 5 if quick else 10
    # the synthetic images already carry random shifts; the backdoored model is trained
    # without crop/flip, so the defenses tune without them too
    tune = {"epochs": ep, "augment": False}
    return validate_spec({
        "model": {"arch": "small_cnn", "num_classes": 10},
        "data": {"clean": DEMO_CLEAN, "test": DEMO_TEST, "attacker": DEMO_ATTACKER},
        "triggers": [{"attack": "badnets", "target": 0}],
        "plan": {
            "methods": [
                {"name": "lp", **tune},
                {"name": "ft", **tune},
                {"name": "fst", **tune},
                {"name": "ep", **tune},
                {"name": "pam", **tune, "rho": 0.2, "data": "trigger"},
                {"name": "bti_dbf", **tune, "inversion": DEMO_INVERSION},
            ],
            "retune": {"poison_num": 20, "clean_num": 980, "epochs": 5,
                       "sweep": [] if quick else [[5, 5], [50, 5]]},
            "qra": {"epochs": 5 if quick else 20, "hidden": 256 if quick else 512,
                    "clean_num": 500, "poison_num": 500},
            "lmc": {"points": 6 if quick else 11},
        },
        "seed": 0,
        "gate": ["pam.p_asr <= 0.5", "all.o_cacc >= 0.80"],
    })


def make_demo_model(out: Path, *, epochs: int = 8, progress: Progress = no_progress) -> dict:
    """Train the demo's backdoored model, save it, and return its numbers."""
    recipe = BackdoorRecipe(arch="small_cnn", attack="badnets", rate=0.1, epochs=epochs,
                            lr=0.05, augment=False, seed=0)
    res = make_backdoor(recipe, DEMO_TRAIN, DEMO_TEST, progress=progress)
    sha = save_model(res.model, out, attack="badnets", target="0", rate="0.1")
    return {"checkpoint": str(out), "sha256": sha, "c_acc": res.c_acc, "asr": res.asr,
            "seconds": res.seconds}
