"""The artifact store: a local directory, every write atomic.

Uploads stream into a temporary file while being hashed and size-checked; only a complete
upload is renamed into place, so a refused or broken upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ppr_engine.util import atomic_write_bytes


class TooLarge(Exception):
    """An upload passed its size limit."""


class Upload:
    """A streaming upload: write chunks, then `commit` to a key or `abort`."""

    def __init__(self, store: ArtifactStore, limit: int) -> None:
        self.store, self.limit = store, limit
        fd, self.tmp = tempfile.mkstemp(prefix="upload-", dir=store.tmp_dir)
        self.fh = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk; TooLarge past the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"upload is larger than {self.limit} bytes")
        self.hash.update(chunk)
        self.fh.write(chunk)

    @property
    def sha256(self) -> str:
        """Hex digest of what was written."""
        return self.hash.hexdigest()

    @property
    def path(self) -> Path:
        """The temporary file (complete once closed)."""
        return Path(self.tmp)

    def close(self) -> None:
        """Flush and close the temporary file."""
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def commit(self, key: str) -> Path:
        """Move the complete upload to `key`."""
        self.close()
        dest = self.store.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, dest)
        return dest

    def abort(self) -> None:
        """Drop the upload."""
        self.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


class ArtifactStore:
    """Files under one root directory, addressed by relative keys."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of `key` (refusing keys that leave the root)."""
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"artifact key {key!r} leaves the store")
        return p

    def upload(self, limit: int) -> Upload:
        """Start a streaming upload."""
        return Upload(self, limit)

    def write_bytes(self, key: str, data: bytes) -> Path:
        """Write a whole artifact atomically."""
        p = self.path(key)
        atomic_write_bytes(p, data)
        return p

    def exists(self, key: str) -> bool:
        """Whether `key` holds a file."""
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        """Remove every artifact under `prefix`."""
        p = self.path(prefix)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
