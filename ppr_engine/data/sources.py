"""Readers for each data kind: ImageFolder (dir or archive), CIFAR python batches, .npz.

All of them treat files as hostile: archives go through `archive.iter_members`, CIFAR
pickles through a restricted unpickler that can only rebuild NumPy arrays, and .npz files
load with `allow_pickle=False`. Images come back as uint8 N x C x H x W tensors.
"""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .archive import is_archive, iter_members
from .imageset import ImageSet

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


# Decoding is bounded before it happens: a header that claims more pixels than this is
# refused unread (a decompression bomb), and the decoded images of one reference may not
# exceed MAX_DECODED_BYTES in all.
MAX_IMAGE_PIXELS = 40_000_000
MAX_DECODED_BYTES = 8 << 30
# What decoding costs is the source's pixels, not the (resized) output's: ten 6000x6000 PNGs
# compress to 2 KB and take seconds to decode even at ?size=32. One reference may read this
# many source pixels in all (about a minute of decoding; CIFAR-10's 60,000 images are 6e7).
MAX_SOURCE_PIXELS = 4_000_000_000


def header_pixels(name: str, blob: bytes) -> int:
    """The pixels an image's header claims (0 for a file that is not an image), read
    without decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            w, h = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return 0
    return w * h


def check_source_pixels(total: int, source: str) -> None:
    """Refuse a reference whose images' source pixels, summed, pass MAX_SOURCE_PIXELS."""
    if total > MAX_SOURCE_PIXELS:
        raise DatasetError(f"{source}: its images hold more than {MAX_SOURCE_PIXELS} source "
                           "pixels in all, more than one data reference may decode; use "
                           "smaller images or fewer of them")


def _decode(name: str, blob: bytes, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DatasetError(f"image {name!r} claims {w}x{h} pixels, more than the "
                                   f"{MAX_IMAGE_PIXELS} an image may have")
            img = img.convert("RGB")
            if size and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DatasetError(f"image {name!r} claims more pixels than the {MAX_IMAGE_PIXELS} an "
                           "image may have (a decompression bomb)") from None
    except UnidentifiedImageError:
        raise DatasetError(f"image {name!r} cannot be decoded: not an image format PIL "
                           "reads") from None
    except (OSError, ValueError) as exc:
        text = re.sub(r"<[^>]* at 0x[0-9a-f]+>", "the file", str(exc))  # no object reprs
        raise DatasetError(f"image {name!r} cannot be decoded: {text}") from None


def _from_files(files: Iterable[tuple[str, bytes]], split: str | None, size: int | None,
                source: str) -> ImageSet:
    """Build an ImageSet from (relative path, bytes) pairs laid out `[split/]class/file`,
    decoding each image as it arrives (no archive member is held after its image is
    decoded) within MAX_DECODED_BYTES."""
    samples: list[tuple[str, str, np.ndarray]] = []
    decoded = pixels = 0
    for name, blob in files:
        parts = name.split("/")
        if not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        if split is not None:
            if split not in parts[:-2]:
                continue
            parts = parts[parts.index(split) + 1:]
        if len(parts) < 2:
            continue
        pixels += header_pixels(name, blob)
        check_source_pixels(pixels, source)
        array = _decode(name, blob, size)
        decoded += array.nbytes
        if decoded > MAX_DECODED_BYTES:
            raise DatasetError(f"{source}: decodes to more than {MAX_DECODED_BYTES} bytes of "
                               "images; take a subset (?n=) or a smaller ?size=")
        samples.append((parts[-2], name, array))
    if not samples:
        where = f" under split {split!r}" if split else ""
        raise DatasetError(f"{source}: no images found{where} (layout: [split/]class/image)")
    classes = sorted({c for c, _, _ in samples})
    if all(c.isascii() and c.isdigit() for c in classes):
        # numbered folders name their class: a subset that lacks some classes (poisoned
        # examples without the target class) keeps the right labels
        lookup = {c: int(c) for c in classes}
    else:
        lookup = {c: i for i, c in enumerate(classes)}
    samples.sort(key=lambda s: s[1])
    arrays = [a for _, _, a in samples]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"{source}: images differ in size {sorted(shapes)[:3]}; pass "
                           "?size=N to resize")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([lookup[c] for c, _, _ in samples], dtype=torch.long)
    return ImageSet(x, y, max(lookup.values()) + 1, source=source, split=split or "train")


def load_image(path: Path, size: int | None, source: str) -> ImageSet:
    """One image file as a set of one image (label 0)."""
    if not path.is_file():
        raise DatasetError(f"{source}: {path} is not a file")
    arr = _decode(path.name, path.read_bytes(), size)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()
    return ImageSet(x, torch.zeros(1, dtype=torch.long), 1, source=source)


def load_imagefolder(path: Path, split: str | None, size: int | None, source: str) -> ImageSet:
    """ImageFolder from a directory or a .tar/.tar.gz/.zip of one."""
    if not path.exists():
        raise DatasetError(f"{source}: {path} does not exist")
    if path.is_file():
        if not is_archive(path):
            raise DatasetError(f"{source}: {path.name} is neither a directory nor a "
                               ".tar/.tar.gz/.zip archive")
        return _from_files(iter_members(path), split, size, source)
    root = path.resolve()

    def walk() -> Iterable[tuple[str, bytes]]:
        for file in sorted(root.rglob("*")):
            if file.is_symlink():
                raise DatasetError(f"{source}: {file.relative_to(root)} is a symbolic link")
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                yield str(file.relative_to(root).as_posix()), file.read_bytes()

    return _from_files(walk(), split, size, source)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild dicts, lists and NumPy arrays and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in self.ALLOWED:
            raise DatasetError(f"pickle refers to {module}.{name}, which is not allowed in a "
                               "CIFAR batch")
        return super().find_class(module, name)


def safe_unpickle(blob: bytes, what: str) -> object:
    """Unpickle `blob` with the array-only allow-list."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as exc:  # malformed pickles raise many types
        raise DatasetError(f"{what} is not a valid CIFAR batch: {exc}") from None


def load_cifar(path: Path, split: str, coarse: bool, source: str) -> ImageSet:
    """CIFAR-10/100 python batches from a directory or a tar.gz of one."""
    files: dict[str, bytes] = {}
    if path.is_file():
        for name, blob in iter_members(path):
            files[name.split("/")[-1]] = blob
    elif path.is_dir():
        files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    else:
        raise DatasetError(f"{source}: {path} does not exist")
    if coarse:
        names = ["train"] if split == "train" else ["test"]
    else:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        if n not in files:
            raise DatasetError(f"{source}: batch file {n!r} is missing")
        batch = safe_unpickle(files[n], n)
        if not isinstance(batch, dict) or b"data" not in batch:
            raise DatasetError(f"{source}: {n} has no 'data' entry")
        key = b"fine_labels" if coarse else b"labels"
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[key], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys))
    return ImageSet(x, y, 100 if coarse else 10, source=source, split=split)


def load_npz(path: Path, source: str) -> ImageSet:
    """Arrays `x` (uint8 N x H x W x C) and `y` (int) from an .npz, pickles refused."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DatasetError(f"{source}: .npz needs arrays 'x' and 'y'")
            x, y = z["x"], z["y"]
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{source}: cannot read .npz: {exc}") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DatasetError(f"{source}: 'x' must be uint8 N x H x W x C, got {x.dtype} "
                           f"{x.shape}")
    if len(y) != len(x):
        raise DatasetError(f"{source}: {len(x)} images but {len(y)} labels")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64))
    if (yt < 0).any():
        raise DatasetError(f"{source}: negative labels")
    xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(xt, yt, int(yt.max()) + 1, source=source)


__all__ = ["load_imagefolder", "load_cifar", "load_npz", "safe_unpickle", "tarfile"]
