"""What an inversion may see: the defender's data and the run settings, nothing else.

A trigger inverted from a model must be found without the audit's knowledge of the attack,
so the inversion takes this context, not a defense's (which also carries the known
triggers, for EP's oracle data). `DefenseContext` extends it; `InversionContext.of(ctx)`
projects any context down to it.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import ImageSet
from ..train import Progress, no_progress


@dataclass
class InversionContext:
    """The defender's clean set (train and held-out parts), device, seed, progress, and a
    cache shared by every inversion of one audit (pre-trained generators, scans; an audit
    passes the process's `SharedCache` for its data, so later audits share it too)."""

    clean: ImageSet
    val: ImageSet
    device: torch.device
    seed: int = 0
    progress: Progress = no_progress
    cache: MutableMapping[Any, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: InversionContext) -> InversionContext:
        """`ctx` reduced to the defender's data (the cache is shared, not copied)."""
        return cls(ctx.clean, ctx.val, ctx.device, ctx.seed, ctx.progress, ctx.cache)


class SharedCache(MutableMapping):
    """The process's inversion work (pre-trained generators, first rounds, scans) seen from
    one defender's data on one device: every audit in the process that inverts the same
    model from the same data with the same settings reuses it (a purification after an
    audit of the same checkpoint, a second audit that asks for `attack: inverted`). Every
    key already names the model's weights and the settings; the scope adds what the keys
    leave out, the data's content and the device.

    Entries are the most recent `MAX_ENTRIES` over all scopes (a generator with its
    optimizer state, or a scan: tens of MB each at the authors' sizes, far less at the CPU
    sizes); generators and rounds are deep-copied by their readers and scans are only read,
    so nothing a stage does changes an entry."""

    MAX_ENTRIES = 8
    _store: OrderedDict[tuple, Any] = OrderedDict()
    _lock = threading.Lock()

    def __init__(self, clean: ImageSet, val: ImageSet, device: torch.device) -> None:
        self._data = clean, val, device

    @functools.cached_property
    def scope(self) -> tuple[str, str, str]:
        """The data's content and the device (hashed on first use: audits that invert
        nothing never pay for it)."""
        clean, val, device = self._data
        return clean.content_hash(), val.content_hash(), str(device)

    @classmethod
    def clear(cls) -> None:
        """Forget everything (tests that must see the work done)."""
        with cls._lock:
            cls._store.clear()

    def __getitem__(self, key: Any) -> Any:
        scoped = (self.scope, key)  # hashed (once) outside the process-wide lock
        with self._lock:
            value = self._store[scoped]
            self._store.move_to_end(scoped)
            return value

    def __setitem__(self, key: Any, value: Any) -> None:
        scoped = (self.scope, key)
        with self._lock:
            self._store[scoped] = value
            self._store.move_to_end(scoped)
            while len(self._store) > self.MAX_ENTRIES:
                self._store.popitem(last=False)

    def __delitem__(self, key: Any) -> None:
        scoped = (self.scope, key)
        with self._lock:
            del self._store[scoped]

    def __contains__(self, key: object) -> bool:
        scoped = (self.scope, key)
        with self._lock:
            return scoped in self._store

    def _keys(self) -> list:
        scope = self.scope
        with self._lock:
            return [k for s, k in self._store if s == scope]

    def __iter__(self) -> Iterator:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())
