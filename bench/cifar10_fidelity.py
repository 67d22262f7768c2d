"""CIFAR-10 fidelity run: backdoor a CIFAR ResNet-18 (BadNets or Blended, 5%) on the real
data with the paper's recipe, then the full audit (every method at its reference budget,
RA at the reference budget and a sweep, QRA with transfer, LMC), with the wall time of
every stage. Meant for a GPU; `--scale cpu` is the run these 2-core machines can do (a
width-16 ResNet-18 on all of CIFAR-10, the authors' PAM/BTI-DBF schedule with a width-8
generator); `--smoke` shrinks everything to check the pipeline.

From the committed fixtures (bench/fixtures/*-fp16.safetensors), without training:

    python bench/cifar10_fidelity.py audit --scale cpu --data ARCHIVE --attack badnets \
        --target 3 --ckpt bench/fixtures/badnets-3-w16-fp16.safetensors --methods pam,ep

Two phases, so that each fits a short GPU lease (checkpoints travel between them):

    python bench/cifar10_fidelity.py train --data ARCHIVE --attack badnets --out DIR
    python bench/cifar10_fidelity.py audit --data ARCHIVE --attack badnets --ckpt DIR/...
    python bench/cifar10_fidelity.py all   --data ARCHIVE --attack blended

`--cache DIR` decodes the JPEG archive once into .npz files there (later runs read those).
`train` writes the checkpoint (fp32, and `--half` an fp16 copy small enough to carry) and
bench/results/cifar10_backdoor-ATTACK-TARGET[-cpu].json; `audit` writes
bench/results/cifar10_fidelity-ATTACK-TARGET[-TAG][_smoke].{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write  # noqa: E402
from ppr_engine import audit, models  # noqa: E402
from ppr_engine import data as data_mod  # noqa: E402
from ppr_engine.attacks import build_trigger, triggered_test  # noqa: E402
from ppr_engine.backdoor import BackdoorRecipe, make_backdoor  # noqa: E402
from ppr_engine.checkpoint import load_model, save_model  # noqa: E402
from ppr_engine.demo import DEMO_INVERSION  # noqa: E402
from ppr_engine.metrics import attack_success_rate, clean_accuracy  # noqa: E402
from ppr_engine.report import to_markdown  # noqa: E402
from ppr_engine.spec import validate_spec  # noqa: E402

ALL = ["ft", "lp", "ft_init", "fe_tuning", "fst", "fp", "nad", "anp", "ibau", "ft_sam",
       "bti_dbf", "tsbd", "ep", "pam", "nc", "sau", "clp", "bnp", "rnp", "npd", "mcr"]


def split_refs(archive: Path, cache: Path | None) -> dict[str, str]:
    """References to the train and test splits; with `cache`, decoded once into .npz."""
    if cache is None:
        return {s: f"imagefolder:{archive}?split={s}" for s in ("train", "test")}
    cache.mkdir(parents=True, exist_ok=True)
    refs = {}
    for split in ("train", "test"):
        npz = cache / f"{split}.npz"
        if not npz.exists():
            ds = data_mod.load(f"imagefolder:{archive}?split={split}")
            tmp = cache / f".{split}.tmp.npz"
            np.savez(tmp, x=ds.x.permute(0, 2, 3, 1).numpy(), y=ds.y.numpy())
            tmp.replace(npz)
        refs[split] = f"npz:{npz}"
    return refs


def with_options(ref: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return ref + ("&" if "?" in ref else "?") + query


def progress_printer():
    """A progress callback printing a line whenever the message changes (runs without a
    terminal, e.g. in a GPU lease, still show where they are)."""
    t0, last = time.perf_counter(), [""]

    def show(message: str, fraction: float) -> None:
        head = message.split(" (")[0]
        if head != last[0]:
            last[0] = head
            print(f"{time.perf_counter() - t0:8.1f}s {fraction:6.1%} {message}", flush=True)
    return show


def train(a: argparse.Namespace, refs: dict[str, str]) -> Path:
    """Backdoor training with the paper's recipe; returns the checkpoint path."""
    train_ref, test_ref = refs["train"], refs["test"]
    if a.smoke:
        train_ref = with_options(train_ref, fraction=0.1, seed=0)
        test_ref = with_options(test_ref, fraction=0.2, seed=0)
    recipe = BackdoorRecipe(arch=a.arch, width=a.width, attack=a.attack,
                            attack_params={"target": a.target}, rate=a.rate,
                            epochs=2 if a.smoke else a.epochs)
    t0 = time.perf_counter()
    bd = make_backdoor(recipe, train_ref, test_ref, progress=progress_printer())
    out = Path(a.out)
    name = f"{a.attack}-{a.target}{'-w' + str(a.width) if a.width else ''}"
    ckpt = out / f"{name}.safetensors"
    save_model(bd.model, ckpt)
    record = {"c_acc": bd.c_acc, "asr": bd.asr, "poisoned": bd.poisoned,
              "train_seconds": round(bd.seconds, 1),
              "images_per_second": round(bd.images_per_second, 1),
              "stage_seconds": round(time.perf_counter() - t0, 1)}
    if a.half:
        # an fp16 copy, small enough to carry between GPU leases; it is measured too, as
        # it is the model that the audit phase then sees
        half = Path(a.half_dir or out) / f"{name}-fp16.safetensors"
        save_model(bd.model.half(), half)
        model = load_model(half, a.arch, 10, width=a.width)
        test = data_mod.load(test_ref, size=models.architecture(a.arch).input_size)
        trigger = build_trigger(a.attack, {"target": a.target})
        record["fp16_copy"] = {"file": half.name, "c_acc": clean_accuracy(model, test),
                               "asr": attack_success_rate(model, triggered_test(test, trigger),
                                                          a.target)}
    suffix = ("_smoke" if a.smoke else "") + ("-cpu" if a.scale == "cpu" else "")
    write(f"cifar10_backdoor-{a.attack}-{a.target}{suffix}", {
        "what": f"{a.arch}{f' width {a.width}' if a.width else ''} {a.attack} {a.rate:.0%} "
                f"target {a.target} on all of CIFAR-10's training split (JPEG), "
                f"{recipe.epochs} epochs, SGD 0.1 / momentum 0.9 / wd 5e-4, cosine, batch 128, "
                "crop+flip; C-Acc and ASR on the full test split" + (" (SMOKE)" if a.smoke else ""),
        "recipe": recipe.__dict__, "backdoor": record})
    return ckpt


def method_entry(text: str) -> dict:
    """`pam` or `pam+data=trigger` (a variant with parameters, reported as `pam_trigger`)."""
    name, *pairs = text.split("+")
    entry: dict = {"name": name}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            entry[key] = json.loads(value)  # numbers and booleans
        except json.JSONDecodeError:
            entry[key] = value  # a word such as `trigger`
    if pairs:
        entry["label"] = "_".join([name] + [p.partition("=")[2] for p in pairs])
    return entry


def plan(a: argparse.Namespace) -> dict:
    """Every method at its reference budget; RA at the reference budget and a sweep."""
    methods = [method_entry(m) for m in a.methods.split(",")]
    if a.scale == "cpu" and not a.smoke:
        # the width-16 ResNet-18 on 2 cores: PAM and BTI-DBF(U) at the authors' schedule
        # (rounds, epochs, learning rate, momentum, rho, reversed-sample share: their
        # defaults) with only the generator's width reduced (UNet width 8, as the report's
        # params say); NC's scan and unlearning at 20 epochs
        for m in methods:
            if m["name"] in ("bti_dbf", "pam") and m.get("data") != "trigger":
                m.setdefault("inversion", {}).update(gen_width=8, sizes="authors")
            elif m["name"] in ("nc", "sau", "npd"):  # BackdoorBench's 100 / 100 / 50 epochs
                m.update(epochs=20)
        return {"methods": methods, "retune": {"sweep": [[20, 5], [50, 5]]},
                "qra": {"enabled": a.qra, "epochs": 10}, "lmc": {"enabled": a.qra,
                                                                 "points": 5}}
    if not a.smoke:
        return {"methods": methods, "retune": {"sweep": [[20, 5], [50, 5], [50, 10]]}}
    inv = {**DEMO_INVERSION, "pretrain_epochs": 1, "mask_epochs": 1, "gen_epochs": 1,
           "scan": {"epochs": 1, "max_images": 100}}
    for m in methods:
        if m["name"] == "anp":
            m.update(iterations=20)
        elif m["name"] == "ibau":
            m.update(rounds=1)
        elif m["name"] in ("bti_dbf", "pam"):
            m.update(epochs=1, rounds=1, scale_to=None, inversion=inv)
        elif m["name"] == "tsbd":
            m.update(epochs=1, max_unlearn_epochs=1)
        elif m["name"] == "rnp":
            m.update(unlearning_epochs=1, recovering_epochs=1)
        elif m["name"] not in ("clp", "bnp"):  # one pass over weights or one batch already
            m.update(epochs=1)
    return {"methods": methods, "retune": {"epochs": 1, "poison_num": 5, "clean_num": 195,
                                           "sweep": [[20, 1]]},
            "qra": {"epochs": 1, "hidden": 64, "clean_num": 100, "poison_num": 100},
            "lmc": {"points": 3}}


def clean_draw(refs: dict[str, str], smoke: bool = False) -> str:
    """The defender's and attacker's images: 7% of the training split (seed 1): 1,000 set
    aside for the attacker (RA and QRA), 2,500 for the defender, as the authors split it."""
    return with_options(refs["train"], fraction=0.05 if smoke else 0.07, seed=1)


def write_subset(archive: Path, refs: dict[str, str], out: Path) -> None:
    """An archive of the test split and the clean draw's training images, as the original
    JPEG files: what the audit phase reads, small enough to carry to a GPU lease."""
    import tarfile

    from ppr_engine.data.archive import iter_members
    from ppr_engine.data.sources import IMAGE_SUFFIXES

    train = data_mod.load(refs["train"])
    picked, _ = data_mod.take(train, fraction=0.07, seed=1)
    # the same order as the loader's: image files under a `train` folder, sorted by name
    names = sorted(n for n, _ in iter_members(archive)
                   if n.lower().endswith(IMAGE_SUFFIXES) and "train" in n.split("/")[:-2])
    keep = {names[i] for i in picked.index.tolist()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for name, blob in iter_members(archive):
            if name in keep or "test" in name.split("/")[:-2]:
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    print(f"{out}: {len(keep)} training images and the test split")


def run_audit(a: argparse.Namespace, refs: dict[str, str], ckpt: Path) -> None:
    """The full audit of `ckpt`; writes the report's JSON and Markdown."""
    # the defender holds 5% of the training set (2,500 images); the attacker's 1,000 RA/QRA
    # images are split off a 7% draw so that the two never share an image
    clean = a.clean or clean_draw(refs, a.smoke)
    test = with_options(refs["test"], fraction=0.2, seed=0) if a.smoke else refs["test"]
    spec = validate_spec({
        "model": {"arch": a.arch, "num_classes": 10, "width": a.width},
        "data": {"clean": clean, "test": test},
        "triggers": [{"attack": a.attack, "target": a.target}], "plan": plan(a), "seed": 0})
    t0 = time.perf_counter()
    report = audit.run(spec, ckpt, progress=lambda stage, frac, msg: print(
        f"{time.perf_counter() - t0:8.1f}s {frac:6.1%} {msg}", flush=True)).report
    seconds = time.perf_counter() - t0
    name = (f"cifar10_fidelity-{a.attack}-{a.target}" + (f"-{a.tag}" if a.tag else "")
            + ("_smoke" if a.smoke else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(to_markdown(report))
    stages: dict[str, float] = {}
    for m in report.methods:
        for st in m.stages:
            stages[st.name] = round(stages.get(st.name, 0.0) + st.seconds, 1)
    write(name, {
        "what": f"{a.arch}{f' width {a.width}' if a.width else ''} {a.attack} 5% target "
                f"{a.target}: audit at the reference budgets, RA (5 poisoned / 5 epochs) and "
                "sweep, QRA, LMC; defender 2,500 (less the 10% held-out split), attacker "
                "1,000, the full test split"
                + (" (SMOKE: tiny budgets)" if a.smoke else "")
                + (" (CPU SCALE: generator width 8 for PAM/BTI-DBF, NC 20 epochs, QRA 10 "
                   "epochs, sweep 20/5 and 50/5, LMC 5 points)" if a.scale == "cpu" else ""),
        "checkpoint": str(ckpt.name), "audit_seconds": round(seconds, 1),
        "stage_seconds_summed_over_methods": stages,
        "method_seconds": {m.key: m.seconds for m in report.methods},
        "report": json.loads(report.model_dump_json())})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["train", "audit", "all", "subset"])
    ap.add_argument("--data", required=True, help="cifar10-jpeg.tar.gz (ImageFolder archive)")
    ap.add_argument("--cache", type=Path, default=None, help="decode the archive once into "
                    ".npz files in this folder")
    ap.add_argument("--attack", default="badnets", choices=["badnets", "blended"])
    ap.add_argument("--arch", default="resnet18_cifar")
    ap.add_argument("--width", type=int, default=None, help="base width (resnet18_cifar; "
                    "default 64, 16 at --scale cpu)")
    ap.add_argument("--target", type=int, default=0, help="the attack's target class")
    ap.add_argument("--half-dir", default=None, help="folder of the fp16 copy (default --out)")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument("--out", default="out/fidelity", help="checkpoint folder (train)")
    ap.add_argument("--ckpt", type=Path, help="checkpoint to audit (audit)")
    ap.add_argument("--clean", help="the defender's (and attacker's) data reference "
                    "(audit; default: 7%% of the training split, seed 1)")
    ap.add_argument("--tag", default="", help="suffix of the result files (a method group)")
    ap.add_argument("--half", action="store_true", help="also save an fp16 copy (train)")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets, to test the pipeline")
    ap.add_argument("--no-qra", dest="qra", action="store_false", help="cpu scale: skip QRA "
                    "and LMC (RA and its sweep only)")
    ap.add_argument("--scale", choices=["gpu", "cpu"], default="gpu",
                    help="cpu: the run for 2 CPU cores: a width-16 CIFAR ResNet-18 on all "
                    "50,000 training images, 24 epochs; the authors' PAM/BTI-DBF schedule "
                    "with a width-8 generator")
    a = ap.parse_args()
    if a.scale == "cpu":
        a.width = a.width or 16
        a.epochs = min(a.epochs, 24)
        a.tag = a.tag or "cpu"
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    refs = split_refs(Path(a.data).resolve(), a.cache)
    if a.phase == "subset":
        return write_subset(Path(a.data).resolve(), refs, Path(a.out))
    ckpt = train(a, refs) if a.phase in ("train", "all") else a.ckpt
    if a.phase in ("audit", "all"):
        if ckpt is None:
            ap.error("audit needs --ckpt")
        run_audit(a, refs, ckpt)


if __name__ == "__main__":
    main()
