"""RA and QRA against N models, one after another and as one vmapped batch (`ppr.batched`,
`ppr.batched_qra`): the audit's retuning of every method's model at one budget and its QRA
generators of one trigger; and one LMC path of 11 points, point by point and as one
vmapped model (`ppr.lmc.points_together`).

    python bench/batched_ra.py [--arch resnet18_cifar] [--models 15] [--device cuda]

The RA reference budget (5 poisoned + 995 clean images, 5 epochs, batch 128) on synthetic
images, against N models of one architecture (different initial weights: the timing does
not depend on them); LMC between two of them with BatchNorm recomputed on 1,000 clean
images, evaluated on 1,000 test and 900 triggered images; QRA against all N (each its own guide,
the last also the shared reference) at its reference sizes (1,000 images, a 1,024-wide generator)
for `--qra-epochs` epochs (50 in an audit; the time per epoch is what the batch changes).
`--smoke` runs every part at tiny sizes (the GPU suite's CPU test). Writes
bench/results/batched_ra-<device>-<arch>.json: seconds each way and the speed-ups.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import attacks, data, models  # noqa: E402
from ppr_engine.attacks import triggered_test  # noqa: E402
from ppr_engine.ppr.batched import retune_together  # noqa: E402
from ppr_engine.ppr.batched_qra import train_qra_together  # noqa: E402
from ppr_engine.ppr.lmc import trace_path  # noqa: E402
from ppr_engine.ppr.qra import qra_training_set, train_qra  # noqa: E402
from ppr_engine.ppr.retune import build_retune_set, retune  # noqa: E402
from ppr_engine.spec import QRASpec, RetuneSpec  # noqa: E402


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--width", type=int)
    ap.add_argument("--models", type=int, default=15, help="14 methods and the baseline")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--qra-epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tag", default="")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the code runs, the "
                    "timings mean nothing")
    a = ap.parse_args()
    device = torch.device(a.device)
    trig = attacks.build_trigger("badnets", {"target": 0})
    n = 200 if a.smoke else 1000  # images per set
    rset = build_retune_set(data.make_synthetic(2 * n, seed=3), trig, 5, n - 5, seed=1)
    spec = RetuneSpec(epochs=a.epochs)
    nets = []
    for seed in range(a.models):
        torch.manual_seed(seed)
        nets.append(models.create(a.arch, 10, width=a.width).to(device))
    retune_together(nets[:2], rset, spec, epochs=1, device=device)  # warm-up
    retune(nets[0], rset, spec, epochs=1, device=device)
    one_by_one = _timed(lambda: [retune(m, rset, spec, device=device) for m in nets])
    together = _timed(lambda: retune_together(nets, rset, spec, device=device))
    clean, test = data.make_synthetic(n, seed=2), data.make_synthetic(n, seed=1)
    points = 3 if a.smoke else 11
    lmc = {"clean": clean, "test": test, "triggered": triggered_test(test, trig), "target": 0,
           "points": points, "device": device}
    path_alone = _timed(lambda: trace_path(nets[0], nets[1], **lmc))
    path_together = _timed(lambda: trace_path(nets[0], nets[1], **lmc, batched=True))
    name = f"batched_ra-{device.type}-{a.arch}" + (f"-{a.tag}" if a.tag else "")
    result = {"what": "RA reference budget against N models: sequential vs one vmapped "
                      "batch", "arch": a.arch, "width": a.width, "models": a.models,
              "epochs": a.epochs, "images": len(rset.data),
              "sequential_seconds": round(one_by_one, 2),
              "batched_seconds": round(together, 2),
              "speedup": round(one_by_one / together, 2),
              "lmc_points": points, "lmc_sequential_seconds": round(path_alone, 2),
              "lmc_batched_seconds": round(path_together, 2),
              "lmc_speedup": round(path_alone / path_together, 2)}
    write(name, result)  # RA's and LMC's figures first: a run cut off during QRA keeps them
    q = QRASpec(epochs=a.qra_epochs, clean_num=n // 2, poison_num=n // 2,
                hidden=64 if a.smoke else 1024)
    qset = qra_training_set(data.make_synthetic(2 * n, seed=4), trig, q, seed=7)
    attacked, reference = nets, nets[-1]  # the timing does not depend on which is which
    qra_kw = {"device": device, "seed": 7}
    qra_alone = _timed(lambda: [train_qra(m, m, reference, qset, q, **qra_kw)
                                for m in attacked])
    qra_together = _timed(lambda: train_qra_together(attacked, attacked, reference, qset, q,
                                                     **qra_kw))
    write(name, {**result, "qra_models": len(attacked), "qra_epochs": a.qra_epochs,
                 "qra_sequential_seconds": round(qra_alone, 2),
                 "qra_batched_seconds": round(qra_together, 2),
                 "qra_speedup": round(qra_alone / qra_together, 2)})


if __name__ == "__main__":
    main()
