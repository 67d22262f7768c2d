"""The artifact store: where checkpoints, datasets, stage models and reports live.

Two back ends behind one interface, chosen by `open_artifacts(settings)`: a local directory
(the embedded default) and any fsspec URL (`PPR_ARTIFACT_URL=s3://bucket/prefix`, with s3fs),
so workers on machines that share no disk share their artifacts through an object store.

The engine reads and writes local files, so the store hands out local paths: `fetch(key)`
gives a readable file (the stored file itself in a directory store, a scratch copy from an
object store), and `writing(key)` a scratch path whose file is stored when the block ends.
A write is whole or absent: a directory store renames a complete file into place, an object
store's put is atomic per object, and a block that raises stores nothing. `release()`
removes the scratch copies (a worker calls it at the end of every job and stage), so nothing
of a job stays on a worker's disk when its artifacts live elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings


class TooLarge(Exception):
    """An upload passed its size limit."""


def check_key(key: str) -> str:
    """`key` if it names a place inside the store (relative, no `..`, no empty part)."""
    if not key or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"artifact key {key!r} leaves the store")
    return key


class Upload:
    """A streaming upload into a scratch file, hashed and size-checked as it comes: write
    chunks, then `commit` it to a key or `abort` it (a refused upload stores nothing)."""

    def __init__(self, store: ArtifactStore, limit: int) -> None:
        self.store, self.limit = store, limit
        fd, self.tmp = tempfile.mkstemp(prefix="upload-", dir=store.scratch_dir)
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
        """The scratch file (complete once closed)."""
        return Path(self.tmp)

    def close(self) -> None:
        """Flush and close the scratch file."""
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def commit(self, key: str) -> None:
        """Store the complete upload as `key` (the scratch file is consumed)."""
        self.close()
        self.store.put_file(key, self.path)

    def abort(self) -> None:
        """Drop the upload."""
        self.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


class ArtifactStore(ABC):
    """Files addressed by relative keys (`jobs/<id>/out/report.json`)."""

    scratch_dir: Path

    @abstractmethod
    def put_file(self, key: str, local: Path) -> None:
        """Store the complete file `local` as `key`; `local` is consumed."""

    @abstractmethod
    def fetch(self, key: str) -> Path:
        """A local file holding `key` (FileNotFoundError when absent)."""

    @abstractmethod
    def open(self, key: str) -> IO[bytes]:
        """`key` opened for reading."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether `key` holds a file."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every artifact under `prefix` (a key or a folder of keys)."""

    def local_path(self, key: str) -> Path | None:
        """The stored file itself when it is on this machine's disk, else None."""
        return None

    def release(self) -> None:  # noqa: B027 - a directory store has nothing to release
        """Remove the scratch copies `fetch` made (none for a directory store)."""

    def scratch_file(self, suffix: str = "") -> Path:
        """A new, unused path in the scratch directory."""
        return self.scratch_dir / f"w-{uuid.uuid4().hex}{suffix}"

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A scratch path to write `key`'s file to; stored when the block ends without an
        error, removed either way."""
        check_key(key)
        tmp = self.scratch_file(PurePosixPath(key).suffix)
        try:
            yield tmp
            self.put_file(key, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` as `key`, whole or not at all."""
        with self.writing(key) as tmp:
            tmp.write_bytes(data)

    def read_bytes(self, key: str) -> bytes:
        """`key`'s content."""
        with self.open(key) as fh:
            return fh.read()

    def upload(self, limit: int) -> Upload:
        """Start a streaming upload."""
        return Upload(self, limit)


class DirectoryStore(ArtifactStore):
    """Files under one local directory: the embedded default, and a disk shared by every
    worker where there is one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.scratch_dir = self.root / ".tmp"  # same filesystem: a rename stores a file
        self.scratch_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of `key`."""
        p = (self.root / check_key(key)).resolve()
        if self.root not in p.parents:
            raise ValueError(f"artifact key {key!r} leaves the store")
        return p

    def put_file(self, key: str, local: Path) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "rb") as fh:  # durable before it is visible
            os.fsync(fh.fileno())
        os.replace(local, dest)

    def fetch(self, key: str) -> Path:
        p = self.path(key)
        if not p.is_file():
            raise FileNotFoundError(f"artifact {key} is missing")
        return p

    def open(self, key: str) -> IO[bytes]:
        return open(self.fetch(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        p = self.path(prefix)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    def local_path(self, key: str) -> Path | None:
        return self.fetch(key)


class ObjectStore(ArtifactStore):
    """Objects under an fsspec URL (`s3://bucket/prefix`; s3fs takes the endpoint and the
    credentials from `options` or, as any boto-based tool, from `AWS_ENDPOINT_URL`,
    `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`). Fetched files are scratch copies,
    kept until `release` so a stage that reads one model twice downloads it once."""

    def __init__(self, url: str, scratch_dir: Path, options: dict | None = None) -> None:
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.root = root.rstrip("/")
        self.url = url
        self.scratch_dir = Path(scratch_dir).resolve()
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self._fetched: dict[str, Path] = {}

    def _remote(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put_file(self, key: str, local: Path) -> None:
        self.fs.put_file(str(local), self._remote(key))
        Path(local).unlink(missing_ok=True)

    def fetch(self, key: str) -> Path:
        if key in self._fetched and self._fetched[key].is_file():
            return self._fetched[key]
        dest = self.scratch_dir / f"r-{uuid.uuid4().hex}-{PurePosixPath(key).name}"
        try:
            self.fs.get_file(self._remote(key), str(dest))
        except FileNotFoundError:
            dest.unlink(missing_ok=True)
            raise FileNotFoundError(f"artifact {key} is missing") from None
        self._fetched[key] = dest
        return dest

    def open(self, key: str) -> IO[bytes]:
        try:
            return self.fs.open(self._remote(key), "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact {key} is missing") from None

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._remote(key)))

    def delete_prefix(self, prefix: str) -> None:
        remote = self._remote(prefix)
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)
        for key in [k for k in self._fetched if k == prefix or k.startswith(prefix + "/")]:
            self._fetched.pop(key).unlink(missing_ok=True)

    def release(self) -> None:
        for path in self._fetched.values():
            path.unlink(missing_ok=True)
        self._fetched.clear()


def open_artifacts(settings: Settings) -> ArtifactStore:
    """The store the settings name: `artifact_url` (an object store) or the directory."""
    if settings.artifact_url:
        return ObjectStore(settings.artifact_url, settings.scratch, settings.artifact_options())
    return DirectoryStore(settings.artifact_dir)
