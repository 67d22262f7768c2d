"""Safe reading of dataset archives (.tar, .tar.gz, .zip) without trusting their members.

Members are read into memory one at a time after checks: no absolute paths, no `..`, no
links, no device files or FIFOs, and limits on file count and total size. Nothing is ever
extracted to disk by name from the archive, so a hostile member cannot land anywhere.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DatasetError


@dataclass(frozen=True)
class ArchiveLimits:
    """Ceilings applied to every archive."""

    max_files: int = 500_000
    max_total_bytes: int = 4 << 30
    max_member_bytes: int = 64 << 20


DEFAULT_LIMITS = ArchiveLimits()
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(path: Path) -> bool:
    """True when `path` names a supported archive by its suffix."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(name: str, label: str) -> str:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"archive {label}: member {name!r} has an absolute path")
    if ".." in pure.parts:
        raise DatasetError(f"archive {label}: member {name!r} escapes the archive "
                           "with '..'")
    return str(pure)


def iter_members(archive: Path, limits: ArchiveLimits = DEFAULT_LIMITS,
                 read: bool = True, shown: str | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (safe relative name, content) for each regular file, refusing unsafe members.
    Refusals name the archive as `shown` (the caller's file name for an upload, never our
    temporary one)."""
    count, total = 0, 0
    label = shown or archive.name

    def account(name: str, size: int) -> None:
        nonlocal count, total
        count += 1
        total += size
        if count > limits.max_files:
            raise DatasetError(f"archive {label}: more than {limits.max_files} files")
        if size > limits.max_member_bytes:
            raise DatasetError(f"archive {label}: member {name!r} is larger than "
                               f"{limits.max_member_bytes} bytes")
        if total > limits.max_total_bytes:
            raise DatasetError(f"archive {label}: unpacks to more than "
                               f"{limits.max_total_bytes} bytes")

    name_lower = archive.name.lower()
    try:
        if name_lower.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = _check_name(info.filename, label)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise DatasetError(f"archive {label}: member {name!r} is a "
                                           "symbolic link")
                    if info.is_dir():
                        continue
                    account(name, info.file_size)
                    yield name, zf.read(info) if read else b""
            return
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                name = _check_name(member.name, label)
                if member.issym() or member.islnk():
                    raise DatasetError(f"archive {label}: member {name!r} is a link")
                if member.isdev() or member.isfifo():
                    raise DatasetError(f"archive {label}: member {name!r} is a "
                                       "device or FIFO")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DatasetError(f"archive {label}: member {name!r} is not a "
                                       "regular file")
                account(name, member.size)
                if read:
                    fh = tf.extractfile(member)
                    yield name, fh.read() if fh else b""
                else:
                    yield name, b""
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DatasetError(f"archive {label} is unreadable: {exc}") from None


def validate_archive(archive: Path, limits: ArchiveLimits = DEFAULT_LIMITS,
                     shown: str | None = None) -> int:
    """Check every member of `archive` and every image's header (not its pixels) without
    keeping content; return the file count. An archive whose images' source pixels pass
    what one reference may decode is refused here, at upload, not by the worker."""
    from .sources import IMAGE_SUFFIXES, check_source_pixels, header_pixels

    files = pixels = 0
    label = shown or archive.name
    for name, blob in iter_members(archive, limits, read=True, shown=shown):
        files += 1
        if name.lower().endswith(IMAGE_SUFFIXES):
            pixels += header_pixels(name, blob)
            check_source_pixels(pixels, f"archive {label}")
    return files
