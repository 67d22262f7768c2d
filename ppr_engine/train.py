"""Shared training and evaluation loops, and the device and precision policy.

One `fit` (SGD, momentum, weight decay, cosine or constant schedule) serves backdoor
training, fine-tuning defenses and the Retuning Attack; defenses with custom steps reuse
`autocast`, `sgd` and `DeviceLoader`. channels_last on every device, bf16 autocast on CUDA.
The same code runs on the CPU for tests. No per-sample Python on the hot path.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data import DeviceLoader, ImageSet, to_float
from .errors import Cancelled
from .graphed_step import FitStep, StepFn, capture_safe_body, cosine_schedule, make_optimizer
from .models import fast_layout

# A progress callback gets (message, fraction in [0, 1]); it may raise Cancelled.
Progress = Callable[[str, float], None]


# A batch transform gets (images, labels, each image's index in its source) and returns
# (images, labels); the index lets sample-specific triggers (SSBA) find their images.
Batch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def progress_parts(progress: Progress, weights: list[float]) -> list[Progress]:
    """`progress` split over the consecutive parts of one task by their relative cost: part
    i maps its own fraction (0 to 1) onto its share of the task's, so the task's fraction
    only grows from one part to the next (a method with rounds of inversion and unlearning
    shows one rising fraction, not each part's from zero)."""
    total = sum(weights) or 1.0
    parts, start = [], 0.0
    for w in weights:
        end = start + w / total

        def part(message: str, fraction: float, start=start, end=end) -> None:
            progress(message, start + (end - start) * min(1.0, max(0.0, fraction)))

        parts.append(part)
        start = end
    return parts


def no_progress(message: str, fraction: float) -> None:
    """The progress callback that reports nothing."""


def pick_device(name: str | None = None) -> torch.device:
    """`name`, else $TORCH_DEVICE, else CUDA when available, else the CPU."""
    name = name or os.environ.get("TORCH_DEVICE") or ("cuda" if torch.cuda.is_available()
                                                      else "cpu")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on the CPU (where it would slow training down)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device`, in the fast layout (`models.fast_layout`) on every device."""
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
    return fast_layout(model)


def sgd(params: Iterable[torch.Tensor], lr: float, momentum: float = 0.9,
        weight_decay: float = 0.0) -> torch.optim.SGD:
    """Plain SGD, the optimizer of nearly every recipe here."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def cosine(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay to zero over `total_steps` optimizer steps."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))


def fit(model: nn.Module, data: ImageSet, *, epochs: int, lr: float, momentum: float = 0.9,
        weight_decay: float = 5e-4, batch_size: int = 128, schedule: str = "cosine",
        augment: bool = True, label_smoothing: float = 0.0, device: torch.device | None = None,
        seed: int = 0, params: Iterable[torch.Tensor] | None = None,
        progress: Progress = no_progress, after_step: Callable[[], None] | None = None,
        transform: Batch | None = None, loss_fn: LossFn | None = None,
        step_fn: StepFn | None = None, optimizer: str = "sgd",
        stage: str = "train", capture_safe: bool | None = None) -> nn.Module:
    """Train `model` on `data`; returns the same model, trained.

    The hooks make this the one loop of every recipe: `transform` edits each batch (EP and
    BTI replace a share with triggered or inverted images), `loss_fn` replaces plain CE
    (FST's penalty, NAD's distillation), `step_fn` replaces backward-and-step (PAM and SAM
    take gradients elsewhere), `after_step` runs after each step (FST's projection, FP's
    mask). `optimizer` is "sgd" (with momentum) or "adam" (BTI-DBF(U)'s unlearning).
    `capture_safe` (default: on CUDA) takes the steps through `graphed_step.FitStep`, where
    with fit's own loss each step is one CUDA graph, and so is a `step_fn` that declares
    itself capture-safe (PAM's); any other `step_fn` step is eager.
    """
    device = device or pick_device()
    prepare(model, device)
    loader = DeviceLoader(data, batch_size, shuffle=True, augment=augment, device=device,
                          seed=seed)
    trainable = params if params is not None else model.parameters()
    total = epochs * len(loader)
    loss = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y, label_smoothing=label_smoothing))
    if capture_safe is None:
        capture_safe = device.type == "cuda"
    runner = lr_now = lr_at = sched = None
    if capture_safe and capture_safe_body(step_fn):
        lr_now = torch.tensor(float(lr), device=device)
        lr_at = cosine_schedule(lr, total, device) if schedule == "cosine" else None
        opt = make_optimizer(trainable, optimizer, lr_now, momentum, weight_decay)
        # a loss of the caller's may read tensors a graph would hold stale (BTI-DBF(U)'s
        # clean batch): only fit's own loss is captured
        runner = FitStep(model, opt, loss, device, body=step_fn,
                         graph=device.type == "cuda" and loss_fn is None)
    else:
        opt = (torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
               if optimizer == "adam" else sgd(trainable, lr, momentum, weight_decay))
        sched = cosine(opt, total) if schedule == "cosine" else None
    model.train()
    step = 0
    for epoch in range(epochs):
        for x, y, index in loader.indexed():
            if transform is not None:
                x, y = transform(x, y, index)
            if runner is not None:
                if lr_at is not None:
                    lr_now.copy_(lr_at[step])
                runner.step(x, y)
            elif step_fn is not None:
                step_fn(model, x, y, opt, loss)
            else:
                with autocast(device):
                    value = loss(model, x, y)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
            if sched:
                sched.step()
            if after_step:
                after_step()
            step += 1
        progress(f"{stage}: epoch {epoch + 1}/{epochs}", step / max(1, total))
        model.train()
    model.eval()
    return model


def eval_batches(data: ImageSet | torch.Tensor, device: torch.device,
                 batch_size: int = 1024) -> Iterator[torch.Tensor]:
    """`data`'s images in order, as float batches on `device`: the batches `predict` and
    every evaluation built on it see, so that results computed from them agree bit for bit."""
    x_all = data.x if isinstance(data, ImageSet) else data
    for start in range(0, len(x_all), batch_size):
        x = x_all[start:start + batch_size].to(device)
        yield to_float(x) if x.dtype == torch.uint8 else x


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet | torch.Tensor, *, device: torch.device | None = None,
            batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels (on the CPU) for every image in `data` (uint8 or ImageSet); one
    copy to the host at the end, not one per batch. The model is never switched between
    train and eval mode (stages may share it): a model in train mode is predicted with by
    an eval-mode copy."""
    device = device or next(model.parameters()).device
    if model.training:
        model = copy.deepcopy(model).eval()
    out = []
    for x in eval_batches(data, device, batch_size):
        with autocast(device):
            out.append(model(x).argmax(1))
    return torch.cat(out).cpu() if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: ImageSet, **kw) -> float:
    """Share of `data` classified as its label."""
    if len(data) == 0:
        return float("nan")
    return float((predict(model, data, **kw) == data.y.cpu()).float().mean())


__all__ = ["Cancelled", "Progress", "accuracy", "autocast", "cosine", "eval_batches", "fit",
           "no_progress", "pick_device", "predict", "prepare", "progress_parts", "sgd"]
