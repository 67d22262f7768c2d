"""The purification-method interface and registry.

A method takes the backdoored model (it works on its own copy), the defender's clean set
split into train and held-out validation parts, its validated parameters and a context
(device, seed, progress, the trigger when the audit knows it), and returns the purified
model plus a record of what it did (thresholds chosen, target detected, ...). No method
sees the test set: every choice uses `ctx.val`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..bounds import budget
from ..inversion import InversionContext
from ..models import head_of
from ..registry import Registry
from ..train import Batch, accuracy

if TYPE_CHECKING:
    from ..attacks import Trigger


@dataclass
class DefenseContext(InversionContext):
    """What a method may use besides the model: the defender's data, the run settings, a
    cache shared by the methods of one audit, and the triggers the audit knows (EP's oracle
    data; methods that invert a trigger never see them, see `InversionContext`)."""

    triggers: list[Trigger] = field(default_factory=list)

    def without_data(self) -> DefenseContext:
        """This context with empty clean, held-out and trigger lists: what a data-free
        method is handed, so that it provably uses none of the defender's data."""
        none = torch.zeros(0, dtype=torch.long)
        return dataclasses.replace(self, clean=self.clean.subset(none),
                                   val=self.val.subset(none), triggers=[])


DATA_FREE = "data-free"  # the registry tag of methods that use no data at all
NEEDS_BATCHNORM = "needs-batchnorm"  # the tag of methods that work on BatchNorm layers


@dataclass
class Purified:
    """A purified model and a JSON-able record of what the method did."""

    model: nn.Module
    record: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


Method = Callable[[nn.Module, DefenseContext, Any], Purified]
DEFENSES: Registry[Method] = Registry("purification method")


class TuneParams(BaseModel):
    """SGD fine-tuning settings shared by most methods (reference: CIFAR-10, ResNet-18)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = budget("epochs", 10)
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    batch_size: int = budget("batch", 128)
    augment: bool = Field(True, description="random crop + flip on the clean set")

    def work(self, n: int, classes: int) -> float:
        """Image passes (forward + backward of one image) on a defender's set of `n`."""
        return float(self.epochs * n)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `train.fit`."""
        return {"epochs": self.epochs, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "augment": self.augment}


class ScaledBudget(BaseModel):
    """An epoch budget counted at a reference set size.

    The authors' budgets (30 epochs per round, ...) are epochs over their defender's set,
    5% of CIFAR-10's training set (2,500 images). Counted in epochs, a 1,000-image set would
    get 40% of the reference's optimizer steps; with `scale_to` the epochs are multiplied by
    `scale_to / n` so that the number of steps matches the reference (`scaled_epochs`).
    """

    model_config = ConfigDict(extra="forbid")
    epochs: int = budget("epochs", 10)
    scale_to: int | None = budget("images", 2500, description="epochs are counted for a "
                                  "defender's set of this size (more epochs on a smaller set, "
                                  "the same number of optimizer steps); null: epochs as given")


    def step_images(self, n: int) -> float:
        """Images one round of these epochs passes over: epochs x n, or epochs x scale_to
        (the same steps at any n; independent of n, so a gateway can bound it unloaded)."""
        return float(self.epochs * (self.scale_to or n))


def weight_distance(model: nn.Module, reference: nn.Module) -> float:
    """||theta - theta_ref||_2 over `model`'s trainable parameters (by name)."""
    ref = dict(reference.named_parameters())
    names = [n for n, q in model.named_parameters() if q.requires_grad]
    d = torch._foreach_sub([ref[n].detach() for n in names],
                           [model.get_parameter(n).detach() for n in names])
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(d))))


def round_record(model: nn.Module, reference: nn.Module, ctx: DefenseContext,
                 rho: float | None = None) -> dict[str, float | None]:
    """What a round of a rounds-based method (PAM, BTI-DBF) left: its distance to the
    backdoored weights, rho relative to it (how far PAM's shifted point reaches back toward
    theta_bd), and C-Acc on the defender's held-out split (never the test set), so a round
    that costs accuracy is seen where it happens."""
    distance = weight_distance(model, reference)
    out: dict[str, float | None] = {"distance_to_bd": distance,
                                    "val_c_acc": accuracy(model, ctx.val) if len(ctx.val) else None}
    if rho is not None:
        out["rho_over_distance"] = rho / distance if distance > 0 else None
    return out


def round_weights(p, ctx: DefenseContext, model: nn.Module, passes: int = 1) -> list[float]:
    """The relative costs of a rounds-based method's parts in the order they run, for its
    progress (`progress_parts`): the generator's pre-training, then per round the inversion
    and the unlearning (`passes` forward and backward passes per image). Methods whose data
    are the real trigger (`data: trigger`) invert nothing: those parts weigh 0."""
    n = len(ctx.clean)
    rounds = p.rounds
    inverting = getattr(p, "data", "bti") != "trigger"
    inversion = (p.inversion.part_work(n, head_of(model).out_features, rounds) if inverting
                 else [0.0] * (rounds + 1))
    out = [inversion[0]]
    for r in range(rounds):
        out += [inversion[1 + r], passes * p.step_images(n)]
    return out


def scaled_epochs(p: ScaledBudget, n: int) -> int:
    """`p.epochs` scaled to a set of `n` images (at least 1 epoch; unscaled above scale_to
    only by the same rule, so a larger set gets fewer epochs and the same steps)."""
    if p.scale_to is None or n <= 0:
        return p.epochs
    return max(1, round(p.epochs * p.scale_to / n))


def purify(name: str, model: nn.Module, ctx: DefenseContext,
           params: dict[str, Any] | BaseModel | None = None) -> Purified:
    """Run method `name` on a copy of `model`; the input model is never modified. A
    data-free method gets a context without data, and its record says `data_free`."""
    entry = DEFENSES.get(name)
    parsed = params if isinstance(params, BaseModel) else entry.parse(params)
    work = copy.deepcopy(model).to(ctx.device)
    data_free = DATA_FREE in entry.tags
    if data_free:
        ctx = ctx.without_data()
    torch.manual_seed(ctx.seed)  # initializations and noise: same seed, same result
    start = time.perf_counter()
    result = entry.obj(work, ctx, parsed)
    result.seconds = time.perf_counter() - start
    result.model.eval()
    result.record.setdefault("params", parsed.model_dump())
    if data_free:
        result.record["data_free"] = True
    if len(ctx.val):
        result.record.setdefault("val_acc", accuracy(result.model, ctx.val))
    return result


def reinit_head(model: nn.Module, seed: int) -> nn.Linear:
    """Re-initialize the linear head with U(+-1/sqrt(d_in)), seeded; return the head."""
    head = head_of(model)
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(head.in_features)
    with torch.no_grad():
        head.weight.copy_((torch.rand(head.weight.shape, generator=g) * 2 - 1) * bound)
        head.bias.copy_((torch.rand(head.bias.shape, generator=g) * 2 - 1) * bound)
    return head


Replacement = Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                       tuple[torch.Tensor, torch.Tensor]]  # (images, labels, index) -> same


def replace_share(fn: Replacement, ratio: float) -> Batch:
    """A batch transform replacing the first `ratio` of each (shuffled) batch by fn(x, y,
    index): the unlearning data of EP, BTI-DBF(U) and PAM (`index` None: for an `fn` that
    does not read it)."""

    def transform(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(round(ratio * len(x)))
        if k == 0:
            return x, y
        x, y = x.clone(), y.clone()
        with torch.no_grad():
            new_x, new_y = fn(x[:k], y[:k], None if index is None else index[:k])
            x[:k], y[:k] = new_x.to(x.dtype), new_y.to(y.dtype)
        return x, y

    return transform


def triggers_fn(triggers: list[Trigger], split: str = "train") -> Replacement:
    """The known triggers on consecutive slices of a batch, true labels (EP's oracle data);
    images keep their source index, so sample-specific triggers find their poisoned version
    in the attack's `split` (the defender's images come from the training split), and a
    trigger given by example puts its own images (and their labels) in its slice."""

    def fn(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
        parts = torch.tensor_split(torch.arange(len(x), device=x.device), len(triggers))
        out_x, out_y = x.clone(), y.clone()
        for trig, idx in zip(triggers, parts, strict=True):
            if len(idx):
                out_x[idx], out_y[idx] = trig.unlearning_batch(x[idx], y[idx], index[idx],
                                                               split)
        return out_x, out_y

    return fn
