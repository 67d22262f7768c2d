"""Device loader: batches from a uint8 tensor already on the device, augmented there.

No DataLoader workers and no PIL on the hot path: random crop (zero padding) and
horizontal flip are tensor ops on the whole batch, drawn from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .imageset import ImageSet


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """Per-sample random crop after zero padding, and random horizontal flip."""
    b, c, h, w = x.shape
    dev = x.device
    if padding:
        padded = F.pad(x, (padding,) * 4)
        i = torch.randint(0, 2 * padding + 1, (b,), generator=generator,
                          device=generator.device).to(dev)
        j = torch.randint(0, 2 * padding + 1, (b,), generator=generator,
                          device=generator.device).to(dev)
        rows = (i[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (j[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(b, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator, device=generator.device).to(dev) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def device_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator on `device` when it is a GPU, else on the CPU."""
    device = torch.device(device)
    return torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1]."""
    return x.float().div_(255.0)


class DeviceLoader:
    """Iterate (float images in [0, 1], labels) batches of an ImageSet on `device`."""

    def __init__(self, ds: ImageSet, batch_size: int = 128, *, shuffle: bool = True,
                 augment: bool = False, device: torch.device | str = "cpu", seed: int = 0,
                 drop_last: bool = False) -> None:
        self.ds = ds.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.device = torch.device(device)
        self.drop_last = drop_last
        # on the GPU the shuffle and the crop/flip draws happen there: no per-batch copies
        # (the CPU stream, which the tests see, is unchanged)
        self.generator = device_generator(self.device, seed)

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.indexed():
            yield x, y

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches with each image's index in its source (for sample-specific triggers)."""
        n = len(self.ds)
        order = (torch.randperm(n, generator=self.generator, device=self.generator.device)
                 if self.shuffle else torch.arange(n)).to(self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x = self.ds.x[idx]
            if self.augment:
                x = random_crop_flip(x, self.generator)
            yield to_float(x), self.ds.y[idx], self.ds.index[idx]
