"""RA against N models, one after another and as one vmapped batch (`ppr.batched`): the
audit's retuning of every method's model at one budget; and one LMC path of 11 points,
point by point and as one vmapped model (`ppr.lmc.points_together`).

    python bench/batched_ra.py [--arch resnet18_cifar] [--models 15] [--device cuda]

The RA reference budget (5 poisoned + 995 clean images, 5 epochs, batch 128) on synthetic
images, against N models of one architecture (different initial weights: the timing does
not depend on them); LMC between two of them with BatchNorm recomputed on 1,000 clean
images, evaluated on 1,000 test and 900 triggered images. Writes
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
from ppr_engine.ppr.lmc import trace_path  # noqa: E402
from ppr_engine.ppr.retune import build_retune_set, retune  # noqa: E402
from ppr_engine.spec import RetuneSpec  # noqa: E402


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
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    device = torch.device(a.device)
    trig = attacks.build_trigger("badnets", {"target": 0})
    rset = build_retune_set(data.make_synthetic(2000, seed=3), trig, 5, 995, seed=1)
    spec = RetuneSpec(epochs=a.epochs)
    nets = []
    for seed in range(a.models):
        torch.manual_seed(seed)
        nets.append(models.create(a.arch, 10, width=a.width).to(device))
    retune_together(nets[:2], rset, spec, epochs=1, device=device)  # warm-up
    retune(nets[0], rset, spec, epochs=1, device=device)
    one_by_one = _timed(lambda: [retune(m, rset, spec, device=device) for m in nets])
    together = _timed(lambda: retune_together(nets, rset, spec, device=device))
    clean, test = data.make_synthetic(1000, seed=2), data.make_synthetic(1000, seed=1)
    lmc = {"clean": clean, "test": test, "triggered": triggered_test(test, trig), "target": 0,
           "points": 11, "device": device}
    path_alone = _timed(lambda: trace_path(nets[0], nets[1], **lmc))
    path_together = _timed(lambda: trace_path(nets[0], nets[1], **lmc, batched=True))
    name = f"batched_ra-{device.type}-{a.arch}" + (f"-{a.tag}" if a.tag else "")
    write(name, {"what": "RA reference budget against N models: sequential vs one vmapped "
                         "batch", "arch": a.arch, "width": a.width, "models": a.models,
                 "epochs": a.epochs, "images": len(rset.data),
                 "sequential_seconds": round(one_by_one, 2),
                 "batched_seconds": round(together, 2),
                 "speedup": round(one_by_one / together, 2),
                 "lmc_points": 11, "lmc_sequential_seconds": round(path_alone, 2),
                 "lmc_batched_seconds": round(path_together, 2),
                 "lmc_speedup": round(path_alone / path_together, 2)})


if __name__ == "__main__":
    main()
