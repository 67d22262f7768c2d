"""`ImageSet`: a labelled image collection held as one uint8 N x C x H x W tensor."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch


@dataclass
class ImageSet:
    """Images (uint8, N x C x H x W), labels, and where each image came from.

    `index` holds each image's position in its source, so sample-specific triggers (SSBA)
    and provenance survive subsetting.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    source: str = ""
    index: torch.Tensor | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = torch.arange(len(self.y))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> ImageSet:
        """The images at positions `idx` (a new set sharing nothing mutable)."""
        idx = idx.to(self.x.device)
        return replace(self, x=self.x[idx], y=self.y[idx], index=self.index[idx.to(
            self.index.device)])

    def with_images(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ImageSet:
        """The same set with its images (and optionally labels) replaced."""
        return replace(self, x=x, y=self.y if y is None else y)

    def to(self, device: torch.device | str) -> ImageSet:
        """This set with its tensors on `device`."""
        return replace(self, x=self.x.to(device), y=self.y.to(device),
                       index=self.index.to(device))

    def content_hash(self) -> str:
        """SHA-256 over the images and labels: equal data, equal hash."""
        h = hashlib.sha256()
        h.update(str(tuple(self.x.shape)).encode())
        h.update(self.x.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.y.detach().cpu().to(torch.int64).numpy().tobytes())
        return h.hexdigest()

    def image_digests(self) -> list[bytes]:
        """One digest per image (its pixels only): identical images, identical digests."""
        rows = self.x.detach().cpu().contiguous().flatten(1).numpy()  # empty sets too
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]

    def shared_with(self, other: ImageSet) -> torch.Tensor:
        """Positions in this set of images that also occur, pixel for pixel, in `other`."""
        theirs = set(other.image_digests())
        return torch.tensor([i for i, d in enumerate(self.image_digests()) if d in theirs],
                            dtype=torch.long)

    @staticmethod
    def concat(*sets: ImageSet) -> ImageSet:
        """Several sets as one (same image size and classes)."""
        first = sets[0]
        return replace(first, x=torch.cat([s.x for s in sets]),
                       y=torch.cat([s.y for s in sets]),
                       index=torch.cat([s.index for s in sets]))


def save_imageset(ds: ImageSet, path: Path) -> None:
    """`ds` as a safetensors file (images, labels, source positions, class count, split):
    what `read_imageset` gives back, with no code in it to run."""
    from safetensors.torch import save_file

    save_file({"x": ds.x.detach().cpu().contiguous(), "y": ds.y.detach().cpu().contiguous(),
               "index": ds.index.detach().cpu().contiguous()}, str(path),
              metadata={"num_classes": str(ds.num_classes), "split": ds.split})


def read_imageset(path: Path, source: str) -> ImageSet:
    """The set `save_imageset` wrote, named `source`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        return ImageSet(f.get_tensor("x"), f.get_tensor("y"), int(meta["num_classes"]),
                        source=source, index=f.get_tensor("index"),
                        split=meta.get("split", "train"))
