"""Training throughput: the engine's loop against a reference-style pipeline, same process,
same device, same model, same batch size.

The engine (`ppr_engine.train.fit`): uint8 images resident on the device, crop and flip as
batched tensor ops, channels_last, bf16 autocast on CUDA; timed twice, with its capture-safe
step (`graphed_step`: a fused optimizer, one CUDA graph per batch shape on CUDA) and with the
eager loop. The reference style (what
BackdoorBench's training does): PIL images through torchvision transforms, a `DataLoader`
with worker processes, fp32. Model FLOP utilization (MFU) is the achieved training FLOP/s
(forward + backward FLOPs of one image counted by `torch.utils.flop_counter`, times
images/s) over the bf16 matrix-product peak measured in the same run.

    python bench/train_throughput.py --data ARCHIVE_OR_NPZ          # CUDA: ResNet-18
    python bench/train_throughput.py --arch small_cnn --images 4000 # CPU pair

Writes bench/results/train_throughput-<device>-<arch>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write  # noqa: E402
from ppr_engine import data as data_mod  # noqa: E402
from ppr_engine import graphed_step, models  # noqa: E402
from ppr_engine.train import fit, pick_device  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device) -> float | None:
    """bf16 FLOP/s of large square matrix products on `device` (None on the CPU)."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def train_flops_per_image(arch: str, num_classes: int, size: int) -> float:
    """Forward + backward FLOPs of one image (counted on the CPU, batch of 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = models.create(arch, num_classes)
    x = torch.rand(2, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return counter.get_total_flops() / 2


def engine_rate(arch: str, ds, epochs: int, batch: int, device: torch.device,
                capture_safe: bool) -> float:
    """Images/s of `fit` (after one warm-up epoch on a slice): with `capture_safe`, the
    step of `graphed_step` (one CUDA graph per batch shape on CUDA, eager on the CPU), else
    the plain eager loop."""
    model = models.create(arch, ds.num_classes)
    warm, _ = data_mod.take(ds, n=min(len(ds), 20 * batch), seed=1)
    fit(model, warm, epochs=1, lr=0.05, batch_size=batch, device=device,
        capture_safe=capture_safe)
    sync(device)
    t = time.perf_counter()
    fit(model, ds, epochs=epochs, lr=0.05, batch_size=batch, device=device,
        capture_safe=capture_safe)
    sync(device)
    return epochs * len(ds) / (time.perf_counter() - t)


class _PILSet(torch.utils.data.Dataset):
    """uint8 tensors served as PIL images through torchvision transforms, as in reference code."""

    def __init__(self, ds, transform) -> None:
        self.x = ds.x.permute(0, 2, 3, 1).numpy()
        self.y = ds.y.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_rate(arch: str, ds, epochs: int, batch: int, device: torch.device,
                   workers: int) -> float:
    """Images/s of a BackdoorBench-style loop: PIL + torchvision, DataLoader workers, fp32."""
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(ds.x.shape[-1], padding=4),
                           T.RandomHorizontalFlip(), T.ToTensor()])
    loader = torch.utils.data.DataLoader(
        _PILSet(ds, transform), batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False)
    model = models.create(arch, ds.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()

    def one_epoch() -> None:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    one_epoch()  # warm-up: worker start, cuDNN autotuning
    sync(device)
    t = time.perf_counter()
    for _ in range(epochs):
        one_epoch()
    sync(device)
    return epochs * len(ds) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="a data reference or an archive path; "
                    "default: synthetic 32x32 images")
    ap.add_argument("--arch", default="resnet18_cifar")
    ap.add_argument("--images", type=int, default=None, help="train on this many images")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs of the engine")
    ap.add_argument("--ref-epochs", type=int, default=1, help="timed epochs of the reference")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=8, help="reference DataLoader workers")
    ap.add_argument("--tag", default="", help="suffix of the result file")
    a = ap.parse_args()
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ref = a.data or "synthetic:?n=8000&seed=0"
    if ":" not in ref.split("/")[0]:
        ref = f"imagefolder:{Path(ref).resolve()}?split=train"
    arch = models.architecture(a.arch)
    ds = data_mod.load(ref, size=arch.input_size)
    if a.images:
        ds, _ = data_mod.take(ds, n=min(a.images, len(ds)), seed=0)
    flops = train_flops_per_image(a.arch, ds.num_classes, arch.input_size)
    peak = matmul_peak(device)
    eager = engine_rate(a.arch, ds, a.epochs, a.batch, device, capture_safe=False)
    engine = engine_rate(a.arch, ds, a.epochs, a.batch, device, capture_safe=True)
    reference = reference_rate(a.arch, ds, a.ref_epochs, a.batch, device, a.workers)

    def mfu(rate: float) -> float | None:
        return round(rate * flops / peak, 4) if peak else None

    write(f"train_throughput-{device.type}-{a.arch}" + (f"-{a.tag}" if a.tag else ""), {
        "what": f"{a.arch} training images/s, batch {a.batch}: the engine's fit (device-"
                f"resident data, tensor augmentation, channels_last, bf16 on CUDA; its "
                f"capture-safe step, one CUDA graph per batch shape on CUDA, and the eager "
                f"loop) against a "
                f"reference-style loop (PIL + torchvision transforms, DataLoader with "
                f"{a.workers} workers, fp32), same process and device",
        "data": ref, "images": len(ds),
        "train_gflop_per_image": round(flops / 1e9, 3),
        "bf16_matmul_peak_tflops": round(peak / 1e12, 1) if peak else None,
        "engine_images_per_second": round(engine, 1),
        "engine_graphed": bool(graphed_step.replays_trusted(device)),
        "engine_eager_images_per_second": round(eager, 1),
        "graphed_over_eager": round(engine / eager, 2),
        "reference_images_per_second": round(reference, 1),
        "ratio": round(engine / reference, 2),
        "engine_mfu": mfu(engine), "engine_eager_mfu": mfu(eager),
        "reference_mfu": mfu(reference)})


if __name__ == "__main__":
    main()
