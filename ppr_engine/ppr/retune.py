"""RA, the Retuning Attack: fine-tune a purified model on a few poisoned samples mixed with
clean ones and measure how much of the backdoor comes back (P-ASR).

Reference budget (METHODS.md §4): `clean_num` + `poison_num` images drawn with RA's own
seed from the attacker's pool (never the defender's images); the poisoned ones are
non-target images with the trigger, labelled with the target, not augmented (for
clean-label attacks, SIG and LC, they are target-class images with the trigger, as the
authors retune with the attack's own poisoned training images); the clean ones are
augmented once (frozen); all parameters; SGD lr 0.01, momentum 0.9, no weight decay, no
schedule, batch 128, 5 epochs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import Trigger
from ..data import ImageSet, random_crop_flip
from ..spec import RetuneSpec
from ..train import Progress, fit, no_progress


@dataclass
class RetuneSet:
    """The attacker's retuning data and which of its samples are poisoned."""

    data: ImageSet
    poisoned: torch.Tensor  # bool mask
    source_index: torch.Tensor  # positions in the pool they were drawn from (-1: an example)


def build_retune_set(pool: ImageSet, trigger: Trigger, poison_num: int, clean_num: int,
                     seed: int) -> RetuneSet:
    """Draw `clean_num` clean and `poison_num` poisoned samples from `pool`: non-target
    images relabelled to the target, or target-class images for clean-label attacks (a
    trigger given by example draws its poisoned samples from its own images)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=g)
    poisoned, poison_pos = trigger.draw_triggered(pool, order, poison_num)
    used = torch.zeros(len(pool), dtype=torch.bool)
    used[poison_pos] = True
    clean_pos = order[~used[order]][:clean_num]
    if len(poisoned) < poison_num or len(clean_pos) < clean_num:
        from ..errors import SpecError

        kind = "target-class" if trigger.clean_label else "non-target"
        raise SpecError(f"retune: the attacker's pool has {len(pool)} images, too few for "
                        f"{poison_num} poisoned ({kind}) + {clean_num} clean")
    clean = pool.subset(clean_pos)
    clean_x = random_crop_flip(clean.x, torch.Generator().manual_seed(seed + 1))
    target = trigger.targets(poisoned.y)  # the backdoor label of each image
    data = ImageSet.concat(clean.with_images(clean_x), poisoned.with_images(poisoned.x, target))
    mask = torch.cat([torch.zeros(len(clean_pos), dtype=torch.bool),
                      torch.ones(len(poisoned), dtype=torch.bool)])
    if len(poison_pos) != len(poisoned):  # a trigger given by example: not from the pool
        poison_pos = torch.full((len(poisoned),), -1, dtype=torch.long)
    return RetuneSet(data, mask, torch.cat([clean_pos, poison_pos]))


def retune(model: nn.Module, rset: RetuneSet, spec: RetuneSpec, *, epochs: int | None = None,
           device: torch.device, progress: Progress = no_progress,
           seed: int | None = None) -> nn.Module:
    """A retuned copy of `model` (the input is not modified); `seed` (default: RA's own)
    orders the batches."""
    attacked = copy.deepcopy(model)
    return fit(attacked, rset.data, epochs=epochs or spec.epochs, lr=spec.lr,
               momentum=spec.momentum, weight_decay=0.0, batch_size=spec.batch_size,
               schedule="constant", augment=False, device=device,
               seed=spec.seed if seed is None else seed, progress=progress, stage="retune")
