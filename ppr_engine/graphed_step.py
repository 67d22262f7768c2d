"""`fit`'s step in a form one CUDA graph can hold: forward, loss, backward and optimizer.

On a GPU the host, not the device, bounds a small model's step: a few hundred aten ops at
tens of microseconds each. Replaying a captured CUDA graph launches them all at once. For
that the step must be capture-safe, which is what this module's step is on every device:

- the learning rate is a one-element device tensor read by a fused optimizer, set from a
  schedule computed once (`cosine_schedule`), so no Python float changes between steps;
- the batch is copied into static input buffers (channels_last, the model's layout);
- autocast does not cache its weight casts (a cache would be captured stale);
- nothing in the step reads a value back to the host.

A caller's step body (`fit`'s `step_fn`) is taken through the same path when it declares
itself capture-safe (`capture_safe = True`, as PAM's step does: its shift toward theta_bd,
gradient and restore are device-side foreach ops); any other body runs eagerly.

On CUDA each batch shape (the full batch and the epoch's tail) is captured once, after a
few warm-up steps whose effects are undone. The first capture of each kind of step in a
process (`step_kind`: fit's own, PAM's, the inversion's generator step, ...) is checked: one
replay against one eager step from the same state on the same batch; if they differ, or a
loss cannot be captured (a host sync inside it), that step stays eager and says so in the
log. On the CPU the step runs eagerly: the tests compare it there with `fit`'s own loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger("ppr.engine")

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.optim.Optimizer, LossFn], None]

# Per device and kind of step (`step_kind`), how this process's first replay of that step
# compared with an eager one: True (they agreed: graphs from then on), False (they differed:
# that step stays eager in this process).
_REPLAY_CHECKED: dict[tuple[str, str], bool] = {}


def step_kind(body: StepFn | None, loss: LossFn) -> str:
    """What a step computes, for its replay check: the body's class (PAM's, SAM's, ...) or
    the loss's qualified name (fit's own, the inversion's). Each kind is checked on its
    own, so one step's capture that goes wrong leaves the others' graphs alone, and a step
    is never trusted on another step's check."""
    fn = body if body is not None else loss
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def replays_trusted(device: torch.device | str, kind: str | None = None) -> bool | None:
    """How this process's first CUDA-graph replay of `kind` (None: of any step) on `device`
    compared with an eager step: True (graphs are in use), False (they differed: that step
    is eager; with kind None, some step's did), None (none was checked yet, as on the
    CPU)."""
    dev = str(torch.device(device))
    found = [v for (d, k), v in _REPLAY_CHECKED.items() if d == dev and kind in (None, k)]
    if not found:
        return None
    return all(found)


def capture_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA without its weight-cast cache, which a graph would hold stale;
    nothing on the CPU (`train.autocast`'s precision)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def capture_safe_body(step_fn: StepFn | None) -> bool:
    """Whether `fit` may take a step body through `FitStep` (none: fit's own step)."""
    return step_fn is None or bool(getattr(step_fn, "capture_safe", False))


def cosine_schedule(lr: float, total_steps: int, device: torch.device) -> torch.Tensor:
    """The learning rate of every step of a cosine decay to zero over `total_steps` (what
    `CosineAnnealingLR` gives step by step, in closed form), on `device`."""
    t = torch.arange(max(1, total_steps), dtype=torch.float64)
    values = lr * (1 + torch.cos(math.pi * t / max(1, total_steps))) / 2
    return values.to(device=device, dtype=torch.float32)


def make_optimizer(params: Iterable[torch.Tensor], kind: str, lr: torch.Tensor,
                   momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """A fused SGD (with momentum) or Adam reading its learning rate from the tensor `lr`;
    its state is created now, at zero, so that no step allocates (zero state steps exactly
    as a fresh optimizer's first step does)."""
    params = [p for p in params if p.requires_grad]
    if kind == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        for p in params:
            opt.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                            "exp_avg_sq": torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)}
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              fused=True)
        if momentum:
            for p in params:
                opt.state[p] = {"momentum_buffer": torch.zeros_like(
                    p, memory_format=torch.preserve_format)}
    return opt


def adam(params: Iterable[torch.Tensor], lr: float, device: torch.device, capture_safe: bool
         ) -> torch.optim.Optimizer:
    """Adam without weight decay: fused and reading its learning rate from a device tensor
    where its steps may be captured (`make_optimizer`), `torch.optim.Adam` otherwise."""
    if capture_safe:
        return make_optimizer(params, "adam", torch.tensor(float(lr), device=device), 0.0, 0.0)
    return torch.optim.Adam(params, lr=lr)


class FitStep:
    """One training step of `fit` (see module): `step(x, y)` trains `model` on the batch
    with the learning rate currently in `lr`; `body`, a capture-safe step of the caller's
    (`capture_safe_body`), replaces loss, backward and optimizer step. `model` is every
    module whose parameters or buffers the step changes (the inversion's steps pass a
    `ModuleDict` of the trained module, the frozen network whose BatchNorm statistics
    move, and the round's running sums); `fp32` computes without autocast."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, loss: LossFn,
                 device: torch.device, *, graph: bool | None = None,
                 body: StepFn | None = None, fp32: bool = False) -> None:
        self.model, self.opt, self.loss, self.device = model, opt, loss, device
        self.body, self.fp32 = body, fp32
        # this process's replay verdict is kept per device and kind of step
        self._check_key = (str(device), step_kind(body, loss))
        self.graph = device.type == "cuda" if graph is None else graph
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The step's work, as it runs eagerly and as it is captured."""
        if self.body is not None:
            self.body(self.model, x, y, self.opt, self.loss)
            return
        with contextlib.nullcontext() if self.fp32 else capture_autocast(self.device):
            value = self.loss(self.model, x, y)
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        self.opt.step()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Train on one batch: a graph replay where one is held for its shape, else eager."""
        if not self.graph or _REPLAY_CHECKED.get(self._check_key) is False:
            self._eager(x, y)
            return
        key = (tuple(x.shape), x.dtype, tuple(y.shape))
        if key not in self._graphs:
            captured = self._capture(x, y)
            if captured is None:  # not capturable: this fit stays eager
                self.graph = False
                self._eager(x, y)
                return
            self._graphs[key] = captured
            if not _REPLAY_CHECKED.get(self._check_key):
                self._check_replay(captured, x, y)  # takes this batch's step
                return
        graph, static_x, static_y = self._graphs[key]
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()

    def _state(self) -> list[torch.Tensor]:
        """Every tensor a step changes: parameters, buffers (BatchNorm statistics and
        counts) and the optimizer's state."""
        out = list(self.model.parameters()) + list(self.model.buffers())
        for state in self.opt.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return out

    def _snapshot(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self._state()]

    def _restore(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for t, s in zip(self._state(), saved, strict=True):
                t.copy_(s)

    def _capture(self, x: torch.Tensor, y: torch.Tensor):
        """(graph, static input, static labels) for this batch shape, or None (logged) when
        the step cannot be captured. Warm-up steps run on a side stream, as capture needs,
        and what they changed is put back."""
        saved = self._snapshot()
        static_x = torch.empty_like(x, memory_format=torch.channels_last
                                    if x.dim() == 4 else torch.preserve_format)
        static_y = torch.empty_like(y)
        static_x.copy_(x)
        static_y.copy_(y)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._eager(static_x, static_y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._restore(saved)
            graph = torch.cuda.CUDAGraph()
            self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates them
            with torch.cuda.graph(graph):
                self._eager(static_x, static_y)
        except RuntimeError as exc:
            torch.cuda.synchronize(self.device)
            self._restore(saved)
            log.warning("training step not captured as a CUDA graph (%s); running eagerly",
                        str(exc).splitlines()[0][:200])
            return None
        return graph, static_x, static_y

    def _check_replay(self, captured, x: torch.Tensor, y: torch.Tensor) -> None:
        """The first capture of this kind of step in a process: one eager step and one
        replay from the same state on this batch must agree. If they do, the replay's step
        stands; if not, the eager step's does, the graphs are dropped and every later step
        of this kind in the process is eager (logged)."""
        saved = self._snapshot()
        self._eager(x, y)
        eager = self._snapshot()
        self._restore(saved)
        graph, static_x, static_y = captured
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        worst = max((float((g - e).abs().max() / e.abs().max().clamp_min(1e-12))
                     for g, e in zip(self._snapshot(), eager, strict=True)
                     if g.is_floating_point() and g.numel()), default=0.0)
        if worst <= 1e-3:
            _REPLAY_CHECKED[self._check_key] = True
            return
        log.warning("a CUDA-graph replay of the training step %s differs from the eager "
                    "step (relative %.2g); it runs eagerly in this process",
                    self._check_key[1], worst)
        _REPLAY_CHECKED[self._check_key] = False
        self._restore(eager)
        self._graphs.clear()
        self.graph = False
