"""QRA against many models at once: one vmapped generator training, and its transfer.

Every method's QRA of one trigger trains the same generator from the same initial weights
on the same training set in the same batch order, against its own purified model, guided
by its own retuned model and held off by the one shared reference model (the baseline). So
the audit's QRA stages run one small training N times; as one `torch.func` vmap over the
stacked generators and purified models (the reference model's weights are shared, not
stacked), N small steps become one N-times-wider step, for the GPU (on the CPU it is slower,
as RA's batch is: `ppr_engine.ppr.batched`). Members whose purified models differ in
structure train alone, by `train_qra` itself.

QRA's transfer (each method's perturbation against every other method's model) evaluates
the models of one structure as one vmapped model on each perturbed set.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..attacks import Trigger
from ..data import DeviceLoader, ImageSet
from ..models import frozen_copy
from ..spec import QRASpec
from ..train import Progress, autocast, eval_batches, no_progress
from .batched import groups, sgd_update, stacked_state
from .qra import (
    PerturbationGenerator,
    guide_answers,
    initial_generator,
    kl_batchmean,
    perturbed,
    positioned,
    train_qra,
)


def train_qra_together(purified: Sequence[nn.Module], retuned: Sequence[nn.Module],
                       reference: nn.Module, data: ImageSet, spec: QRASpec, *,
                       device: torch.device, seed: int, progress: Progress = no_progress
                       ) -> list[PerturbationGenerator]:
    """`train_qra(purified[i], retuned[i], reference, ...)` for every i, as each gives alone:
    the purified models of one structure as one vmapped training, any other alone."""
    out: list[PerturbationGenerator | None] = [None] * len(purified)
    parts = groups(purified)
    for done, idx in enumerate(parts):
        def part(msg: str, frac: float, done=done) -> None:
            progress(msg, (done + frac) / len(parts))

        if len(idx) == 1:
            i = idx[0]
            out[i] = train_qra(purified[i], retuned[i], reference, data, spec, device=device,
                               seed=seed, progress=part)
            continue
        trained = _train_stacked([purified[i] for i in idx], [retuned[i] for i in idx],
                                 reference, data, spec, device=device, seed=seed, progress=part)
        for i, gen in zip(idx, trained, strict=True):
            out[i] = gen
    return out  # type: ignore[return-value]


def _train_stacked(purified: Sequence[nn.Module], retuned: Sequence[nn.Module],
                   reference: nn.Module, data: ImageSet, spec: QRASpec, *,
                   device: torch.device, seed: int, progress: Progress
                   ) -> list[PerturbationGenerator]:
    """`train_qra`'s training for purified models of one structure, one vmapped step per
    batch: the same initial generator, batches, loss and SGD update for each, against the
    same frozen eval-mode copies."""
    start = initial_generator(data, spec, device, seed)
    gen_params, _ = stacked_state([start] * len(purified))
    frozen = [frozen_copy(m, train_mode=False) for m in purified]
    pur_base = frozen[0]
    pur_params, pur_buffers = stacked_state(frozen)
    reference = frozen_copy(reference, train_mode=False)
    data = positioned(data)
    answers = torch.stack([guide_answers(m, data, spec, device) for m in retuned])

    def member_loss(gp, pp, pb, p_ra, x, y):
        xp = functional_call(start, gp, (x,))
        kl = kl_batchmean(F.log_softmax(functional_call(pur_base, (pp, pb), (xp,)).float(),
                                        1), p_ra)
        return spec.alpha * kl + F.cross_entropy(reference(xp).float(), y)

    batched_loss = vmap(member_loss, in_dims=(0, 0, 0, 0, None, None))
    weights = list(gen_params.values())
    momentum: list[torch.Tensor | None] = [None] * len(weights)
    loader = DeviceLoader(data, spec.batch_size, shuffle=True, device=device, seed=seed)
    for epoch in range(spec.epochs):
        for x, y, at in loader.indexed():
            with autocast(device):
                # the members' losses summed: each generator gets its own gradient
                loss = batched_loss(gen_params, pur_params, pur_buffers, answers[:, at],
                                    x, y).sum()
            sgd_update(weights, torch.autograd.grad(loss, weights), momentum, spec.lr,
                       spec.momentum)
        progress(f"qra: epoch {epoch + 1}/{spec.epochs}", (epoch + 1) / spec.epochs)
    out = []
    for j in range(len(purified)):
        gen = PerturbationGenerator(start.shape, spec.hidden, start.eps).to(device)
        gen.load_state_dict({n: w[j].detach() for n, w in gen_params.items()})
        out.append(gen.eval())
    return out


@torch.no_grad()
def predict_together(models: Sequence[nn.Module], images: ImageSet | torch.Tensor,
                     device: torch.device) -> list[torch.Tensor]:
    """Each model's predicted labels (on the CPU) for `images`, as `train.predict` gives
    them (eval mode, the same batches): models of one structure as one vmapped model."""
    out: list[torch.Tensor | None] = [None] * len(models)
    for idx in groups(models):
        members = [models[i] for i in idx]
        base = copy.deepcopy(members[0]).eval()  # runs every member's weights, never trains
        params, buffers = stacked_state(members)
        run = vmap(lambda p, b, x, base=base: functional_call(base, (p, b), (x,)),
                   in_dims=(0, 0, None))
        found = []
        for x in eval_batches(images, device):
            with autocast(device):
                found.append(run(params, buffers, x).argmax(-1))
        labels = (torch.cat(found, 1).cpu() if found
                  else torch.empty(len(idx), 0, dtype=torch.long))
        for i, row in zip(idx, labels, strict=True):
            out[i] = row
    return out  # type: ignore[return-value]


def transfer_asrs(gen: PerturbationGenerator, models: Sequence[nn.Module],
                  triggered_test: ImageSet, trigger: Trigger, device: torch.device
                  ) -> list[float]:
    """`qra_asr(gen, model, ...)` for each of `models`: the triggered test images perturbed
    once, every model's predictions from `predict_together`."""
    images = perturbed(gen, triggered_test, device)
    targets = torch.as_tensor(trigger.targets(triggered_test.y)).cpu()
    return [float((labels == targets).float().mean()) if len(labels) else float("nan")
            for labels in predict_together(models, images, device)]
