"""Model registry: architectures by name, each with its head, stages and normalization.

Every model takes images in [0, 1] pixel space (triggers and QRA work there) and
normalizes inside, through a forward pre-hook whose mean/std are non-persistent buffers, so
state dicts keep the architecture's usual keys. What must not live here: training loops,
checkpoint files (see `ppr_engine.checkpoint`).
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecError
from ..registry import Registry

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """How to build a model and where its parts are (head, feature stages)."""

    build: Callable[..., nn.Module]  # build(num_classes) or, with a base width, (n, width)
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head: str  # dotted path of the final nn.Linear
    stages: tuple[str, ...]  # dotted paths of the last stages (NAD attention, BTI features)
    # how BTI-DBF's benign-feature bound applies to the last stage's features: "absolute"
    # where they are the authors' (CIFAR ResNet-18, layer4, CIFAR normalization), else
    # "relative" to their mean square (see ppr_engine.inversion.inverter)
    feature_bound: str = "relative"
    # the base width (channels of the first stage) when the architecture takes one, so a
    # reduced-width copy with the same blocks and feature stages fits a small machine;
    # None: the width is fixed
    default_width: int | None = None


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def register(name: str, *, summary: str = "") -> Callable[[Callable[[], Architecture]], None]:
    """Register an architecture under `name`; the decorated function returns its spec."""

    def deco(fn: Callable[[], Architecture]) -> None:
        ARCHITECTURES.register(name, summary=summary or (fn.__doc__ or "").strip())(fn())

    return deco


def list_models() -> list[str]:
    """Names of all registered architectures."""
    return ARCHITECTURES.names()


def architecture(name: str) -> Architecture:
    """The registered architecture `name` (SpecError if unknown)."""
    return ARCHITECTURES.get(name).obj


def _normalize_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
    x = args[0]
    return ((x - module.input_mean) / module.input_std,)


def check_width(name: str, width: int | None) -> None:
    """Refuse a base width for an architecture whose width is fixed (SpecError)."""
    if width is not None and architecture(name).default_width is None:
        widths = [n for n in list_models() if architecture(n).default_width is not None]
        raise SpecError(f"architecture {name} has a fixed width; model.width applies to "
                        f"{', '.join(widths)}")


def create(
    name: str, num_classes: int = 10, *, width: int | None = None,
    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
) -> nn.Module:
    """Build architecture `name` (at base `width` when given) taking [0, 1] images,
    normalizing inside."""
    arch = architecture(name)
    check_width(name, width)
    model = arch.build(num_classes) if width is None else arch.build(num_classes, width)
    m = torch.tensor(mean or arch.mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std or arch.std, dtype=torch.float32).view(1, -1, 1, 1)
    model.register_buffer("input_mean", m, persistent=False)
    model.register_buffer("input_std", s, persistent=False)
    model.register_forward_pre_hook(_normalize_hook)
    model.arch_name = name  # type: ignore[assignment]
    model.arch_width = width  # type: ignore[assignment]
    return model


@functools.cache
def has_batchnorm(name: str) -> bool:
    """Whether architecture `name` has BatchNorm layers (built on the meta device: no memory,
    milliseconds), for refusing at validation a method that works on them."""
    with torch.device("meta"):
        model = architecture(name).build(2)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def submodule(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted `path` (e.g. "heads.head")."""
    return model.get_submodule(path)


def fast_layout(model: nn.Module) -> nn.Module:
    """`model` in channels_last, the layout cuDNN's and oneDNN's fast convolutions take: on
    2 CPU cores a small_cnn training step at batch 32 took 10 ms instead of 26, its
    input-gradient step at batch 640 (the scans') 200 ms instead of 320."""
    return model.to(memory_format=torch.channels_last)


def frozen_copy(model: nn.Module, train_mode: bool) -> nn.Module:
    """A copy of `model` whose parameters take no gradient (inputs, masks and generators
    that feed it still do), in the fast layout, its eval-mode BatchNorms folded into their
    convolutions: scans and inversions differentiate through it at every step."""
    out = copy.deepcopy(model).train(train_mode)
    for q in out.parameters():
        q.requires_grad_(False)
    if not train_mode:
        fold_batchnorm(out)
    return fast_layout(out)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d fed by a Conv2d alone into that convolution and
    replace it by an identity; returns how many were folded. An eval-mode BatchNorm is a
    per-channel affine map, so the model computes the same function (to float rounding)
    with one layer less forward and backward: on 2 CPU cores the BatchNorms were a fifth of
    a trigger scan's step. Only for a model that stays in eval mode with frozen weights.
    The pairs come from an fx trace of the forward; a model fx cannot trace is left as is."""
    from torch.fx import Node, symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    try:
        graph = symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - data-dependent control flow: nothing to fold
        return 0
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    folded = 0
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        src = node.args[0] if node.args else None
        if not (isinstance(bn, nn.BatchNorm2d) and isinstance(src, Node)
                and src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                and len(src.users) == 1 and bn.running_mean is not None
                and calls[node.target] == calls[src.target] == 1):
            continue
        conv = modules[src.target]
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                    bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = w.requires_grad_(False), b.requires_grad_(False)
        parent, _, name = str(node.target).rpartition(".")
        setattr(model.get_submodule(parent), name, nn.Identity())
        folded += 1
    return folded


def model_fingerprint(model: nn.Module) -> str:
    """SHA-1 of a model's parameters and buffers: equal weights, equal fingerprint (a cache
    key for work done on one model, e.g. a pre-trained generator)."""
    import hashlib

    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def head_of(model: nn.Module) -> nn.Linear:
    """The final linear classifier of a registered model."""
    head = submodule(model, architecture(model.arch_name).head)
    assert isinstance(head, nn.Linear)
    return head


def features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits): the head's input is captured with a hook."""
    captured: list[torch.Tensor] = []
    handle = head_of(model).register_forward_hook(lambda m, a, o: captured.append(a[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[0], logits


from . import cifar, small, tv  # noqa: E402,F401  (registration side effects)
