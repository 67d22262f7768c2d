"""Data references: `KIND:LOCATION[?key=value&...]` strings, parsed and validated.

Kinds: imagefolder, cifar10, cifar100, npz, synthetic, dataset (service uploads),
backdoorbench (the poisoned samples of a BackdoorBench `attack_result.pt`, `?part=bd_test`
or `bd_train`). Server
deployments confine LOCATION to configured roots (`confine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import DatasetError

KIND_SUMMARIES = {
    "imagefolder": "a directory or .tar/.tar.gz/.zip laid out [split/]class/image (numbered "
                   "class folders give their number as the label)",
    "cifar10": "CIFAR-10 python batches (directory or tar.gz); ?split=train|test",
    "cifar100": "CIFAR-100 python batches (fine labels); ?split=train|test",
    "npz": ".npz with uint8 x (N x H x W x C) and integer y; pickles refused",
    "image": "one image file (PNG, JPEG, ...), e.g. a Blended trigger's pattern; label 0",
    "synthetic": "generated images (tests and the demo); ?n=&seed=",
    "dataset": "an uploaded dataset, dataset:<id> (service only)",
    "backdoorbench": "the poisoned samples of a BackdoorBench attack_result.pt (its folder or "
                     "the file), ?part=bd_test|bd_train; labels are the true classes",
}
KINDS = tuple(KIND_SUMMARIES)
# each option's type and bounds (numbers: [low, high]; words: the longest accepted). `size`
# (the side images are resized to) and `classes` bound the memory a reference can ask for;
# `n` the images; the service caps `n` lower (SPEC_LIMITS) and bounds decoded pixels.
OPTIONS: dict[str, tuple[type, float, float]] = {
    "split": (str, 1, 64), "part": (str, 1, 64),
    "fraction": (float, 1e-6, 1.0), "noise": (float, 0.0, 1.0),
    "n": (int, 1, 10_000_000), "seed": (int, 0, 2**32 - 1), "world": (int, 0, 2**32 - 1),
    "size": (int, 8, 1024), "classes": (int, 2, 1000),
}


@dataclass(frozen=True)
class DataRef:
    """A parsed data reference."""

    kind: str
    location: str
    options: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kind}:{self.location}" + (f"?{query}" if query else "")

    def with_options(self, **options: object) -> DataRef:
        """A copy with `options` added or replaced."""
        return DataRef(self.kind, self.location, {**self.options, **options})


def parse_ref(text: str) -> DataRef:
    """Parse `KIND:LOCATION?opts`; DatasetError names what is wrong."""
    if not isinstance(text, str) or ":" not in text:
        raise DatasetError(f"data reference {text!r} must look like KIND:LOCATION[?k=v]; "
                           f"kinds: {', '.join(KINDS)}")
    kind, rest = text.split(":", 1)
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DatasetError(f"unknown data kind {kind!r} in {text!r}; kinds: {', '.join(KINDS)}")
    location, _, query = rest.partition("?")
    options: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in OPTIONS:
            raise DatasetError(f"unknown option {key[:40]!r} in the data reference; options: "
                               f"{', '.join(OPTIONS)}")
        cast, low, high = OPTIONS[key]
        try:
            parsed = cast(value) if len(value) <= 32 or cast is str else None
        except ValueError:
            parsed = None
        if parsed is None or (cast is str and not low <= len(parsed) <= high):
            raise DatasetError(f"option {key}={value[:40]!r} in the data reference is not a "
                               f"valid {cast.__name__}" + (f" of at most {high:g} characters"
                                                          if cast is str else ""))
        if cast is not str and not low <= parsed <= high:
            raise DatasetError(f"option {key}={parsed} is out of range: {key} must be between "
                               f"{low:g} and {high:g}")
        options[key] = parsed
    if kind not in ("synthetic",) and not location:
        raise DatasetError(f"data reference {text!r} has no location")
    return DataRef(kind, location, options)


def confine(ref: DataRef, roots: list[Path]) -> Path:
    """Resolve a file-system location and refuse it unless it lies under one of `roots`."""
    path = Path(ref.location).expanduser().resolve()
    for root in roots:
        if path == root.resolve() or root.resolve() in path.parents:
            return path
    raise DatasetError(f"data location {ref.location!r} is outside the allowed data roots")
