"""`ppr demo`: the whole story on one machine, nothing downloaded.

Make a BadNets-backdoored small CNN (target class 3) on synthetic data, then audit it with
one method of each outcome the paper describes: FT (the backdoor stays), FST and BTI-DBF
(hidden, not removed), EP (the oracle baseline) and PAM (both inverting the trigger with
BTI-DBF's generator, as deployed): purification, the Retuning Attack against the EP
baseline at its reference budget and a larger one, QRA and the LMC path. The budgets are
scaled down from the paper's so it runs in four minutes on two CPU cores; where that
changes a method's setting, the spec and the printed note say so. (LP, which also leaves
the backdoor in place, and the sweep's smaller budget are left out for time: every
method is one `--method` away in `ppr audit`.)
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
# The smallest-trigger scan that checks a detected target (BTI-DBF, PAM, `attack: inverted`)
# at CPU scale: 500 of the defender's images instead of 1,000 (15 epochs either way). On the
# demo's model it found class 3 at 0.36 times the other classes' median mask; docs/RESULTS.md
# has the rest.
DEMO_SCAN = {"max_images": 500}

# BTI-DBF's inversion at CPU scale (the reference: 50 / 20 / 30 epochs at batch 128 on 2,500
# images, UNet width 32 with 4 blocks). Fewer epochs at batch 32 keep about half the
# reference's optimizer steps on a 900-image set: the generator needs steps (one BadNets model
# of the detection bench: at batch 128, 5/10 mask/generator epochs found a wrong class and
# 10/20 the right one with confidence 0.19; at batch 32, 5/10 epochs found it with 1.0). The
# same settings serve the demo, the tests and bench/bti_detection.py.
# A UNet of width 8 with 3 blocks costs 1.7 times the small CNN per image (width 16: 5 times)
# and found the same targets.
# The generator's output is the residual one (bounded, the identity at start), not the
# authors' linear output: at this scale the linear output, after 5 or 20 pre-training epochs,
# found a Blended model's target 3 with a share of 0.33 / 0.44 (another class), the residual
# one with 1.0 (docs/RESULTS.md, inversion variants).
DEMO_INVERSION = {"pretrain_epochs": 5, "mask_epochs": 5, "gen_epochs": 10, "gen_width": 8,
                  "gen_blocks": 3, "gen_output": "residual", "batch_size": 32,
                  "augment": False, "scan": DEMO_SCAN}

DEMO_UNKNOWN_TRIGGER = {"attack": "inverted", "inversion": DEMO_INVERSION}


# The demo's PAM departs from the authors' momentum 0.1 on purpose, and says so: at this scale
# (a 4-MMAC net, 900 defender images) PAM at momentum 0.1 stays near theta_bd and is
# superficial even with the budget scaled to the reference's steps (BadNets, target 3:
# P-ASR 0.62 against EP's 0.13 after 3 rounds x 83 epochs); at momentum 0.9 two rounds of 10
# epochs hold (P-ASR 0.04, every sweep point at or below EP's). docs/RESULTS.md has the study.
PAM_NOTE = ("PAM runs at momentum 0.9 here: at the authors' momentum 0.1 it stays close to "
            "the backdoored weights at this scale and is flagged superficial "
            "(docs/RESULTS.md, PAM budget study)")
DEMO_TARGET = 3
# The demo's accuracy margin for `degraded` is 0.08, not the default 0.05: with 900 defender
# images and a 4-MMAC net, an unlearning method's C-Acc moves by a few points from one random
# stream to another (PAM measured 0.036 and 0.050 below the model's C-Acc in two runs that
# differed only in their streams), so 0.05 would split one method's runs between `robust`
# and `degraded`. Audits at the reference scale keep 0.05.
DEMO_MAX_ACC_DROP = 0.08


def demo_spec(quick: bool = False) -> AuditSpec:
    """The demo's audit spec (quick: no QRA or LMC, fewer epochs; for tests)."""
    # the synthetic images already carry random shifts; the backdoored model is trained
    # without crop/flip, so the defenses tune without them too
    tune = {"epochs": 10, "augment": False}
    unlearn = {"rounds": 2, "scale_to": None, "augment": False, "inversion": DEMO_INVERSION}
    return validate_spec({
        "model": {"arch": "small_cnn", "num_classes": 10},
        "data": {"clean": DEMO_CLEAN, "test": DEMO_TEST, "attacker": DEMO_ATTACKER},
        "triggers": [{"attack": "badnets", "target": DEMO_TARGET}],
        "plan": {
            "methods": [
                {"name": "ft", **tune},
                {"name": "fst", **tune},
                {"name": "bti_dbf", **unlearn, "epochs": 30},
                {"name": "ep", **tune},
                {"name": "pam", **unlearn, "epochs": 10, "momentum": 0.9},
            ],
            "retune": {"poison_num": 20, "clean_num": 980, "epochs": 5,
                       "sweep": [[50, 5]], "max_acc_drop": DEMO_MAX_ACC_DROP},
            # QRA and LMC at the demo's size (the reference: 50 epochs, hidden 1024, 500 + 500
            # images; at 10 epochs on 500 + 500 QRA was a sixth of the demo's time), and 6
            # points on the path (lambda 0, 0.2, ..., 1)
            "qra": {"enabled": not quick, "epochs": 5, "hidden": 512, "clean_num": 250,
                    "poison_num": 250},
            "lmc": {"enabled": not quick, "points": 6},
        },
        "seed": 0,
        "gate": ["pam.o_asr <= 0.2", "pam.max_gap <= 0.2", "all.o_cacc >= 0.80"],
    })


def make_demo_model(out: Path, *, epochs: int = 8, progress: Progress = no_progress) -> dict:
    """Train the demo's backdoored model, save it, and return its numbers."""
    recipe = BackdoorRecipe(arch="small_cnn", attack="badnets", rate=0.1, epochs=epochs,
                            lr=0.05, augment=False, seed=0,
                            attack_params={"target": DEMO_TARGET})
    res = make_backdoor(recipe, DEMO_TRAIN, DEMO_TEST, progress=progress)
    sha = save_model(res.model, out, attack="badnets", target=str(DEMO_TARGET), rate="0.1")
    return {"checkpoint": str(out), "sha256": sha, "c_acc": res.c_acc, "asr": res.asr,
            "seconds": res.seconds}
