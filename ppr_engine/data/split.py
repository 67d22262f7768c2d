"""Seeded, stratified subsets: the defender's clean set and its held-out validation split.

Every threshold or stopping choice a defense makes uses the validation split, never the
test set.
"""

from __future__ import annotations

import torch

from .imageset import ImageSet


def stratified_indices(y: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` positions drawn per class in proportion to class sizes, seeded."""
    g = torch.Generator().manual_seed(seed)
    y = y.cpu()
    n = len(y)
    count = max(0, min(count, n))
    classes = torch.unique(y)
    picked = []
    quotas = {int(c): int(round(count * int((y == c).sum()) / n)) for c in classes}
    while sum(quotas.values()) > count:  # rounding drift
        quotas[max(quotas, key=quotas.get)] -= 1
    while sum(quotas.values()) < count:
        quotas[min(quotas, key=quotas.get)] += 1
    for c, q in quotas.items():
        pos = torch.nonzero(y == c).flatten()
        picked.append(pos[torch.randperm(len(pos), generator=g)[:q]])
    out = torch.cat(picked) if picked else torch.empty(0, dtype=torch.long)
    return out[torch.randperm(len(out), generator=g)]


def take(ds: ImageSet, *, n: int | None = None, fraction: float | None = None,
         seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(a stratified subset of `n` or `fraction` of `ds`, the rest)."""
    count = n if n is not None else int(round(len(ds) * (fraction or 0.0)))
    idx = stratified_indices(ds.y, count, seed)
    mask = torch.ones(len(ds), dtype=torch.bool)
    mask[idx] = False
    rest = torch.nonzero(mask).flatten()
    return ds.subset(idx), ds.subset(rest)


def train_val(ds: ImageSet, val_fraction: float = 0.1, seed: int = 0) -> tuple[ImageSet,
                                                                               ImageSet]:
    """Split the defender's clean set into (train, held-out validation)."""
    val, train = take(ds, fraction=val_fraction, seed=seed + 1)
    return train, val
