"""SSBA from pre-generated poisoned images (the StegaStamp encoder is not run here).

The caller supplies .npz files whose `x` holds the poisoned version of every image of the
train (or test) set, aligned by position; a sample's trigger is looked up by its index.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from ..data.sources import load_npz
from ..errors import SpecError
from .base import ATTACKS, Trigger, TriggerParams


class SSBAParams(TriggerParams):
    """SSBA: paths of pre-generated poisoned train and test images (.npz, x and y)."""

    train_images: str | None = Field(None, description=".npz of poisoned training images")
    test_images: str | None = Field(None, description=".npz of poisoned test images")


@ATTACKS.register("ssba", params=SSBAParams, summary="SSBA: imported sample-specific trigger")
class SSBA(Trigger):
    """Look poisoned images up by sample index in imported arrays."""

    Params = SSBAParams

    def __init__(self, params):
        super().__init__(params)
        self._cache: dict[str, torch.Tensor] = {}

    def _paths(self) -> dict[str, str]:
        p: SSBAParams = self.params  # type: ignore[assignment]
        return {split: path for split, path in (("train", p.train_images),
                                                ("test", p.test_images)) if path}

    def data_refs(self) -> list[str]:
        return [f"npz:{path}" for path in self._paths().values()]

    def bind(self, load):
        """Read the arrays through the audit's loader (a server's data roots apply)."""
        for split, path in self._paths().items():
            self._cache[split] = load(f"npz:{path}").x

    def _images(self, split: str) -> torch.Tensor:
        if split not in self._cache:
            p: SSBAParams = self.params  # type: ignore[assignment]
            path = p.train_images if split == "train" else p.test_images
            if not path:
                raise SpecError(f"ssba: no pre-generated {split} images given")
            self._cache[split] = load_npz(Path(path), f"ssba {split} images").x
        return self._cache[split]

    def apply(self, x, index=None, split="test"):
        if index is None:
            raise SpecError("ssba: triggers are sample-specific; images need their index")
        bank = self._images(split)
        if int(index.max()) >= len(bank):
            raise SpecError(f"ssba: {split} images hold {len(bank)} samples; index "
                            f"{int(index.max())} is out of range")
        return bank[index.cpu()].to(x.device).float() / 255
