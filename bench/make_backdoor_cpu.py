"""Time `ppr make-backdoor` for the small net on synthetic data (3 seeds).

Counts the training loop only (poisoning and evaluation excluded); images/s is
epochs x training images / seconds. Run: `python bench/make_backdoor_cpu.py`.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine.backdoor import BackdoorRecipe, make_backdoor  # noqa: E402

TRAIN, TEST = "synthetic:?n=4000&seed=0", "synthetic:?n=1000&seed=1"


def main() -> None:
    runs = []
    for seed in (0, 1, 2):
        recipe = BackdoorRecipe(arch="small_cnn", attack="badnets", rate=0.1, epochs=8,
                                lr=0.05, augment=False, seed=seed)
        r = make_backdoor(recipe, TRAIN, TEST)
        runs.append({"seed": seed, "seconds": round(r.seconds, 2), "c_acc": r.c_acc,
                     "asr": r.asr, "images_per_second": round(r.images_per_second, 1)})
    write("make_backdoor_cpu", {
        "what": "small_cnn, BadNets 10%, synthetic 4000 train / 1000 test, 8 epochs, batch 128",
        "runs": runs,
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_images_per_second": statistics.median(r["images_per_second"] for r in runs)})


if __name__ == "__main__":
    main()
