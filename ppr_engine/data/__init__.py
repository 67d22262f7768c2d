"""Data references -> ImageSets, subsets, and the device loader.

`load(ref)` is the one entry point: every kind of reference (ImageFolder dir/archive,
CIFAR batches, .npz, synthetic, uploaded `dataset:<id>`, a BackdoorBench result's poisoned
samples) becomes an `ImageSet` of uint8
images. Query options `fraction`/`n` and `seed` take a stratified subset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DatasetError
from .archive import ArchiveLimits, validate_archive
from .imageset import ImageSet, read_imageset, save_imageset
from .loader import DeviceLoader, device_generator, random_crop_flip, to_float
from .refs import DataRef, confine, parse_ref
from .sources import load_cifar, load_image, load_imagefolder, load_npz
from .split import stratified_indices, take, train_val
from .synthetic import make_synthetic

# The service sets this to map `dataset:<id>` to a stored archive path and to confine
# server-side paths; the CLI leaves both unset (a local user may read any path).
DatasetResolver = Callable[[str], Path]


def load(ref: str | DataRef, *, resolve_dataset: DatasetResolver | None = None,
         roots: list[Path] | None = None, size: int | None = None) -> ImageSet:
    """Load the data a reference names, applying its subset options."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    opts = r.options
    size = int(opts.get("size", size or 0)) or None
    text = str(r)
    if r.kind == "synthetic":
        ds = make_synthetic(int(opts.get("n", 6000)), int(opts.get("seed", 0)),
                            world=int(opts.get("world", 0)), num_classes=int(opts.get(
                                "classes", 10)), noise=float(opts.get("noise", 0.6)))
        return ds
    if r.kind == "dataset":
        if resolve_dataset is None:
            raise DatasetError(f"{text}: dataset:<id> references only work on the service")
        path = resolve_dataset(r.location)
    else:
        path = confine(r, roots) if roots is not None else Path(r.location).expanduser()
    split = opts.get("split")
    if r.kind in ("imagefolder", "dataset"):
        ds = load_imagefolder(path, str(split) if split else None, size, text)
    elif r.kind in ("cifar10", "cifar100"):
        ds = load_cifar(path, str(split or "train"), r.kind == "cifar100", text)
    elif r.kind == "image":
        ds = load_image(path, size, text)
    elif r.kind == "backdoorbench":
        from .backdoorbench import load_part

        ds = load_part(path, str(opts.get("part", "bd_test")), text)
    else:
        ds = load_npz(path, text)
    if "fraction" in opts or ("n" in opts):
        ds, _ = take(ds, n=opts.get("n"), fraction=opts.get("fraction"),
                     seed=int(opts.get("seed", 0)))
    return ds


__all__ = [
    "ArchiveLimits", "DataRef", "DeviceLoader", "ImageSet", "confine", "device_generator",
    "load", "make_synthetic", "read_imageset", "save_imageset",
    "parse_ref", "random_crop_flip", "stratified_indices", "take", "to_float", "train_val",
    "validate_archive",
]
