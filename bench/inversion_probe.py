"""Why does BTI-DBF's inversion miss a trigger? One inversion round per variant of the
inversion settings against one backdoored checkpoint, recording what the generator found.

For each variant (a JSON object of `InversionParams` overrides): the detected class, the
confidence (share of non-target images G sends there), the round's record (E[phi^2], the
share of generator steps held back by the pixel or by the feature bound, the mean
backdoor-feature distance), and the real trigger's ASR on the same images (what a
perfect inversion would reach). Issue 8: on CIFAR-10 the inversion found BadNets' class
with confidence 0.19-0.33 (docs/RESULTS.md); this tells a bound that pins G from a
generator that cannot draw the patch.

    python bench/inversion_probe.py --ckpt MODEL.safetensors --arch small_cnn \\
        --clean 'npz:train.npz?fraction=0.04&seed=1' --attack badnets --target 0 \\
        --variants '{}' '{"gen_output": "direct"}' '{"feat_bound": 3}' --tag cpu

Writes bench/results/inversion_probe-TAG.json (rewritten after every variant).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import data, metrics, models  # noqa: E402
from ppr_engine.attacks import build_trigger, triggered_test  # noqa: E402
from ppr_engine.checkpoint import load_model  # noqa: E402
from ppr_engine.inversion import InversionContext, InversionParams, invert  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--clean", required=True, help="the defender's data reference")
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--base", default="{}", help="InversionParams shared by every variant")
    ap.add_argument("--variants", nargs="+", default=["{}"])
    ap.add_argument("--tag", default="probe")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arch = models.architecture(a.arch)
    model = load_model(a.ckpt, a.arch, 10).to(device).float()
    clean = data.load(a.clean, size=arch.input_size)
    train, val = data.train_val(clean, 0.1, seed=0)
    trigger = build_trigger(a.attack, {"target": a.target})
    real_asr = metrics.attack_success_rate(model, triggered_test(train, trigger), a.target)
    base = json.loads(a.base)
    rows = []
    for text in a.variants:
        overrides = json.loads(text)
        params = InversionParams(**{**base, **overrides})
        start = time.perf_counter()
        inverter = invert(model, InversionContext(train, val, device, seed=0), params)
        det = inverter.detection
        rows.append({"variant": overrides,
                     "bounds": params.model_dump(include={"feat_bound", "feat_bound_units",
                                                          "norm_bound", "gen_output"}),
                     "detected": det.target,
                     "correct": det.target == a.target, "confidence": round(det.confidence, 3),
                     "margin": round(det.margin, 3),
                     "round": inverter.record()["inversion_rounds"][0],
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
        write(f"inversion_probe-{a.tag}", {
            "what": f"one BTI-DBF inversion round per variant, {a.arch} {a.attack} target "
                    f"{a.target}, defender's set {len(train)} images",
            "checkpoint": a.ckpt.name, "clean": a.clean, "base": base,
            "real_trigger_asr_on_defender_images": round(real_asr, 3), "rows": rows})


if __name__ == "__main__":
    main()
