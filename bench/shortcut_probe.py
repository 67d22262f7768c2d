"""Is the backdoor a shortcut? The premise of trigger inversion, measured on one model.

Inversion (BTI-DBF's generator, Neural Cleanse's scan) finds a backdoor because its target
should be reachable with a much smaller change to the input than any other class. This probe
trains a model of `bench/bti_detection.py` (attack, target, seed) and measures (1) the ASR of
the real trigger at a fraction `a` of its strength, x + a * (T(x) - x), beside the L2 norm of
that change, and (2) per class, the share of test images of other classes that one universal
additive perturbation of L2 norm at most `eps` (PGD on the defender's images) sends there.
When every class is reached at a smaller norm than the trigger needs, the backdoor is not a
shortcut, and inversion cannot single out its target.
Run: `python bench/shortcut_probe.py --attack sig --target 3 --seed 0` (about 2 minutes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bti_detection import ATTACKS, backdoored_model  # noqa: E402
from bench.common import write  # noqa: E402
from ppr_engine import attacks, data  # noqa: E402
from ppr_engine.data import to_float  # noqa: E402


def reach(model, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Share of the images of other classes that `model` sends to class `k`."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    return float((pred[y != k] == k).float().mean())


def universal(model, x: torch.Tensor, k: int, eps: float, steps: int, seed: int
              ) -> torch.Tensor:
    """One additive perturbation of L2 norm <= eps that sends `x` to class k (PGD)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.zeros(1, *x.shape[1:], requires_grad=True)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = F.cross_entropy(model((x[idx] + d).clamp(0, 1)), torch.full((128,), k))
        (grad,) = torch.autograd.grad(loss, d)
        with torch.no_grad():
            d -= 0.2 * eps * grad / grad.norm().clamp_min(1e-12)
            d *= (eps / d.norm().clamp_min(1e-12)).clamp(max=1.0)
    return d.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attack", default="sig", choices=[a for a in ATTACKS
                                                        if not a.startswith("clean")])
    ap.add_argument("--target", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", nargs="+", type=float, default=[1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    model, asr, clean = backdoored_model(a.attack, a.target, a.seed, device)
    model.eval()
    noise = ATTACKS[a.attack][1]
    test = data.make_synthetic(1000, seed=1, noise=noise)
    x, y, xc = to_float(test.x), test.y, to_float(clean.x)
    trig = attacks.build_trigger(a.attack, {"target": a.target, **ATTACKS[a.attack][0]})
    change = trig.apply(x) - x
    strength = [{"fraction": f, "l2": round(float((f * change).flatten(1).norm(dim=1).mean()), 2),
                 "asr": round(reach(model, (x + f * change).clamp(0, 1), y, a.target), 3)}
                for f in (0.25, 0.5, 0.75, 1.0)]
    per_eps = {str(eps): [round(reach(model, (x + universal(model, xc, k, eps, a.steps, a.seed))
                                      .clamp(0, 1), y, k), 3) for k in range(10)]
               for eps in a.eps}
    for row in strength:
        print(row)
    for eps, shares in per_eps.items():
        print("eps", eps, shares)
    write(f"shortcut_probe-{a.attack}-{a.target}-s{a.seed}", {
        "what": "trigger strength vs ASR, and per-class reach of one universal L2 perturbation",
        "attack": a.attack, "target": a.target, "seed": a.seed, "asr": asr,
        "trigger_strength": strength, "universal_reach_by_eps": per_eps})


if __name__ == "__main__":
    main()
