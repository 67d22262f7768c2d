"""RA against many models at once: one vmapped training over their stacked weights.

Every method's model (and the baseline) is retuned on the same retuning set, in the same
batch order, at the same budget, so the audit's RA stages run the same small training N
times one after another. On a GPU each of those steps is a few hundred small kernels that
leave it mostly idle; stacking the N models' weights and running them as one `torch.func`
vmap turns N small steps into one N-times-wider step. On the CPU it is slower (a vmapped
convolution becomes a grouped one: 8 small_cnns took 37.9 s vmapped against 29.4 s one
after another), which is why the plan batches on CUDA only (`RetuneSpec.batched_on`).

Each member trains exactly as `retune` trains it alone: the same batches (`DeviceLoader`
with RA's seed), cross-entropy, SGD with momentum and no weight decay at a constant
learning rate (PyTorch's update: the first step's momentum buffer is the gradient), its own
BatchNorm statistics, autocast on CUDA. Models whose structure differs from the others'
(a pruning method's extra buffers, hooks, dropout, whose random draws vmap cannot share
with a sequential run) are retuned alone, by `retune` itself.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..data import DeviceLoader
from ..spec import RetuneSpec
from ..train import Progress, autocast, no_progress, prepare
from .retune import RetuneSet, retune


def structure(model: nn.Module) -> tuple:
    """What must agree for models to train as one vmapped batch: module types and settings
    (a BatchNorm's momentum, a convolution's stride), parameter and buffer names, shapes,
    dtypes and trainability, and the hooks each module carries (the batch runs the first
    model's modules with every member's weights)."""
    modules = tuple((name, type(m).__name__, m.extra_repr(), len(m._forward_hooks),
                     len(m._forward_pre_hooks)) for name, m in model.named_modules())
    params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad)
                   for n, p in model.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers())
    return modules, params, buffers


def _batchable(model: nn.Module) -> bool:
    """Dropout draws differ between a vmapped and a sequential run: such models train alone."""
    return not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def groups(models: Sequence[nn.Module]) -> list[list[int]]:
    """Indices of `models` that can train together, in order of first appearance."""
    by_structure: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        key = structure(m) if _batchable(m) else ("alone", i)
        by_structure.setdefault(key, []).append(i)
    return list(by_structure.values())


def retune_together(models: Sequence[nn.Module], rset: RetuneSet, spec: RetuneSpec, *,
                    epochs: int | None = None, device: torch.device,
                    progress: Progress = no_progress, seed: int | None = None
                    ) -> list[nn.Module]:
    """Retuned copies of `models` (the inputs are not modified), as `retune` gives each
    alone: models of one structure as one vmapped training, any other alone."""
    out: list[nn.Module | None] = [None] * len(models)
    parts = groups(models)
    for done, idx in enumerate(parts):
        def part(msg: str, frac: float, done=done) -> None:
            progress(msg, (done + frac) / len(parts))

        kw = {"epochs": epochs, "device": device, "seed": seed, "progress": part}
        if len(idx) == 1:
            out[idx[0]] = retune(models[idx[0]], rset, spec, **kw)
        else:
            stacked = _fit_stacked([models[i] for i in idx], rset, spec, **kw)
            for i, m in zip(idx, stacked, strict=True):
                out[i] = m
    return out  # type: ignore[return-value]


def stacked_state(models: Sequence[nn.Module]) -> tuple[dict, dict]:
    """The models' parameters and buffers, each stacked along a new first dimension (for
    `functional_call` under vmap). Contiguous: a stack of channels_last weights keeps their
    strides, and vmap has no batching rule for the in-place restride a channels_last pooling
    output then takes."""
    first = models[0]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
              .contiguous().requires_grad_(p.requires_grad) for n, p in first.named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).contiguous()
               for n, _ in first.named_buffers()}
    return params, buffers


@torch.no_grad()
def sgd_update(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
               momentum: list[torch.Tensor | None], lr: float, mu: float) -> None:
    """`torch.optim.SGD`'s step (momentum `mu`, no dampening, no weight decay) over stacked
    weights, in place; `momentum` holds the buffers, None before the first step, when
    PyTorch's buffer is the gradient itself."""
    for k, (w, g) in enumerate(zip(weights, grads, strict=True)):
        if mu == 0:
            update = g
        elif momentum[k] is None:
            momentum[k] = update = g.clone()
        else:
            update = momentum[k].mul_(mu).add_(g)
        w.sub_(update, alpha=lr)


def _fit_stacked(models: Sequence[nn.Module], rset: RetuneSet, spec: RetuneSpec, *,
                 epochs: int | None, device: torch.device, seed: int | None,
                 progress: Progress) -> list[nn.Module]:
    """`retune`'s training, for models of one structure, as one vmapped step per batch."""
    copies = [prepare(copy.deepcopy(m), device).train() for m in models]
    base = copies[0]
    params, buffers = stacked_state(copies)

    def member_loss(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    # x and y are the same batch for every member; the buffers are updated in place
    batched_loss = vmap(member_loss, in_dims=(0, 0, None, None))
    trained = [w for w in params.values() if w.requires_grad]
    momentum: list[torch.Tensor | None] = [None] * len(trained)
    lr, mu = spec.lr, spec.momentum
    n_epochs = epochs or spec.epochs
    loader = DeviceLoader(rset.data, spec.batch_size, shuffle=True, augment=False,
                          device=device, seed=spec.seed if seed is None else seed)
    total, step = n_epochs * len(loader), 0
    for epoch in range(n_epochs):
        for x, y in loader:
            with autocast(device):
                # the members' losses summed: each member's weights get its own gradient
                loss = batched_loss(params, buffers, x, y).sum()
            sgd_update(trained, torch.autograd.grad(loss, trained), momentum, lr, mu)
            step += 1
        progress(f"retune: epoch {epoch + 1}/{n_epochs}", step / max(1, total))
    with torch.no_grad():
        for j, m in enumerate(copies):
            for n, w in m.named_parameters():
                w.copy_(params[n][j])
            for n, b in m.named_buffers():
                b.copy_(buffers[n][j])
    return [m.eval() for m in copies]
