"""QRA, the Query-based Reactivation Attack: leave the weights alone and learn an input
perturbation generator that reactivates the backdoor on the purified model.

Generator: MLP 3HW -> h -> h -> h -> 3HW (ReLU, tanh); delta(x) = clamp(eps * AE(x), -eps,
eps); x' = clip(x + delta, 0, 1). Loss per batch: alpha * KL(softmax f_RA(x) || softmax
f_pur(x')) + CE(f_ref(x'), y_true), over clean images and poisoned non-target images.
The second term, on a benign reference model, keeps delta from being a plain adversarial
perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Trigger
from ..data import DeviceLoader, ImageSet
from ..metrics import attack_success_rate, target_rate
from ..models import frozen_copy
from ..spec import QRASpec
from ..train import Progress, autocast, no_progress


class PerturbationGenerator(nn.Module):
    """The MLP auto-encoder that maps an image to its bounded perturbation."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, eps: float) -> None:
        super().__init__()
        d = shape[0] * shape[1] * shape[2]
        self.shape = shape
        self.eps = eps
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(True),
                                 nn.Linear(hidden, hidden), nn.ReLU(True),
                                 nn.Linear(hidden, hidden), nn.ReLU(True),
                                 nn.Linear(hidden, d), nn.Tanh())

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The perturbation, within [-eps, eps], in the generator's dtype (images come as
        float32; a float64 generator, as the equivalence tests use, computes in float64)."""
        x = x.to(self.net[1].weight.dtype)
        return (self.eps * self.net(x)).clamp(-self.eps, self.eps).view(-1, *self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta(x)).clamp(0, 1)


@dataclass
class QRAOutcome:
    """The trained generator and the four numbers of METHODS.md §4."""

    generator: PerturbationGenerator
    asr: float  # f_pur on triggered test + delta
    clean_to_target: float  # f_pur on clean test + delta
    ref_asr: float
    ref_clean_to_target: float
    losses: list[float]


def kl_batchmean(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over classes, averaged over the batch (`F.kl_div(log_q, p,
    reduction="batchmean")`, written out: vmap, which the batched QRA trains under, has no
    batching rule for `kl_div`)."""
    return (torch.xlogy(p, p) - p * log_q).sum() / log_q.shape[0]


def qra_training_set(pool: ImageSet, trigger: Trigger, spec: QRASpec, seed: int) -> ImageSet:
    """`clean_num` clean images plus `poison_num` triggered non-target ones, true labels."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=g)
    clean = pool.subset(order[:spec.clean_num])
    moved = order[trigger.attacked(pool.y.cpu()[order])]
    nt = moved[spec.clean_num:spec.clean_num + spec.poison_num]
    if len(nt) == 0:
        nt = moved[:spec.poison_num]
    poisoned, _ = trigger.draw_triggered(pool, nt, spec.poison_num, clean_label_rule=False)
    return ImageSet.concat(clean, poisoned)


def initial_generator(data: ImageSet, spec: QRASpec, device: torch.device, seed: int
                      ) -> PerturbationGenerator:
    """The generator every QRA of `seed` starts from (seeds the global stream, as QRA
    always has)."""
    torch.manual_seed(seed)
    return PerturbationGenerator(tuple(data.x.shape[1:]), spec.hidden,
                                 spec.eps / 255).to(device)


def positioned(data: ImageSet) -> ImageSet:
    """`data` with each image's index its position: the loader then hands the positions
    under which `guide_answers` are looked up."""
    return replace(data, index=torch.arange(len(data), device=data.x.device))


@torch.no_grad()
def guide_answers(retuned: nn.Module, data: ImageSet, spec: QRASpec, device: torch.device
                  ) -> torch.Tensor:
    """The retuned model's softmax on every image of `data`, in order. They depend on the
    image alone (eval mode, no augmentation), so they are computed once, not once per
    epoch, by a frozen eval-mode copy."""
    guide = frozen_copy(retuned, train_mode=False)
    with autocast(device):
        return torch.cat([F.softmax(guide(x).float(), 1) for x, _ in DeviceLoader(
            data, spec.batch_size, shuffle=False, device=device)])


def train_qra(purified: nn.Module, retuned: nn.Module, reference: nn.Module, data: ImageSet,
              spec: QRASpec, *, device: torch.device, seed: int,
              progress: Progress = no_progress) -> PerturbationGenerator:
    """Learn the perturbation generator against `purified`, guided by `retuned`."""
    gen = initial_generator(data, spec, device, seed)
    opt = torch.optim.SGD(gen.parameters(), lr=spec.lr, momentum=spec.momentum)
    # frozen eval-mode copies: the gradient reaches the generator only, and the models the
    # caller shares with other stages (the baseline, a purified model) are never touched
    purified, reference = (frozen_copy(m, train_mode=False) for m in (purified, reference))
    data = positioned(data)
    answers = guide_answers(retuned, data, spec, device)
    loader = DeviceLoader(data, spec.batch_size, shuffle=True, device=device, seed=seed)
    for epoch in range(spec.epochs):
        for x, y, at in loader.indexed():
            with autocast(device):
                p_ra = answers[at]
                xp = gen(x)
                kl = kl_batchmean(F.log_softmax(purified(xp).float(), 1), p_ra)
                loss = spec.alpha * kl + F.cross_entropy(reference(xp).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        progress(f"qra: epoch {epoch + 1}/{spec.epochs}", (epoch + 1) / spec.epochs)
    return gen.eval()


@torch.no_grad()
def perturbed(gen: PerturbationGenerator, data: ImageSet, device: torch.device) -> torch.Tensor:
    """Float images of `data` with the generator's perturbation added (on `device`)."""
    out = [gen(x) for x, _ in DeviceLoader(data, 512, shuffle=False, device=device)]
    return torch.cat(out) if out else torch.empty(0)


def qra_asr(gen: PerturbationGenerator, model: nn.Module, triggered_test: ImageSet,
            trigger: Trigger, device: torch.device) -> float:
    """ASR on the triggered test images + delta, over the trigger's label map (all the
    transfer to other methods' models needs)."""
    trig = triggered_test.with_images(perturbed(gen, triggered_test, device))
    return attack_success_rate(model, trig, trigger.targets(triggered_test.y))


def evaluate_qra(gen: PerturbationGenerator, model: nn.Module, clean_test: ImageSet,
                 triggered_test: ImageSet, trigger: Trigger, device: torch.device
                 ) -> tuple[float, float]:
    """(ASR on triggered test + delta, backdoor-label rate on the clean test images the
    backdoor moves + delta), both over the trigger's label map."""
    asr = qra_asr(gen, model, triggered_test, trigger, device)
    moved = trigger.non_target(clean_test)
    clean = perturbed(gen, moved, device)
    return asr, target_rate(model, clean, trigger.targets(moved.y))


def run_qra(purified: nn.Module, retuned: nn.Module, reference: nn.Module, pool: ImageSet,
            clean_test: ImageSet, triggered_test: ImageSet, trigger: Trigger, spec: QRASpec,
            *, device: torch.device, seed: int, progress: Progress = no_progress) -> QRAOutcome:
    """Train the generator and report its four numbers."""
    data = qra_training_set(pool, trigger, spec, seed)
    gen = train_qra(purified, retuned, reference, data, spec, device=device, seed=seed,
                    progress=progress)
    return qra_outcome(gen, purified, reference, clean_test, triggered_test, trigger, device)


def qra_outcome(gen: PerturbationGenerator, purified: nn.Module, reference: nn.Module,
                clean_test: ImageSet, triggered_test: ImageSet, trigger: Trigger,
                device: torch.device) -> QRAOutcome:
    """A trained generator's four numbers, on the purified and on the reference model."""
    asr, c2t = evaluate_qra(gen, purified, clean_test, triggered_test, trigger, device)
    r_asr, r_c2t = evaluate_qra(gen, reference, clean_test, triggered_test, trigger, device)
    return QRAOutcome(gen, asr, c2t, r_asr, r_c2t, [])
