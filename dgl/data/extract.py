"""Unpacking archives, safely (downloads: dgl.data.download).

- `extract` unpacks a zip or tar archive, refusing any entry that would land outside the target
  (`../`, absolute paths), any link or special file, and selected entries that would write more
  than a cap in all, before writing anything; it writes into a temporary sibling folder and moves
  the result into place at the end, so a refused or failed extraction leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from dgl.errors import UserError

CHUNK = 1 << 20  # bytes read at a time: an archive's tail, an entry's contents


@dataclass(frozen=True)
class _Entry:
    name: str  # path inside the archive
    kind: str  # "file", "dir", "link" or "special"
    size: int  # bytes once extracted, as the archive declares it (zip and tar readers stop there)
    open: Callable[[], IO[bytes]]
    unreadable: str | None = None  # why it cannot be unpacked here (an encrypted zip entry, ...)


# what Python's zipfile unpacks: stored, deflate, bzip2, lzma (not Deflate64, PPMd, ...)
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _zip_unreadable(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & 0x1:
        return "it is encrypted (password protected)"
    if info.compress_type not in _ZIP_METHODS:
        return f"it is compressed with method {info.compress_type} (e.g. 9 = Deflate64), which Python cannot unpack"
    return None


@contextlib.contextmanager
def _zip_entries(archive: Path) -> Iterator[list[_Entry]]:
    with zipfile.ZipFile(archive) as zf:
        yield [
            _Entry(
                info.filename,
                "dir" if info.is_dir() else "link" if stat.S_ISLNK(info.external_attr >> 16) else "file",
                info.file_size,
                lambda info=info: zf.open(info),
                _zip_unreadable(info),
            )
            for info in zf.infolist()
        ]


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym() or member.islnk():
        return "link"
    return "file" if member.isfile() else "special"


def _tar_members(tf: tarfile.TarFile, stops: list[tarfile.HeaderError]) -> list[tarfile.TarInfo]:
    """Every member, once the whole archive has been read to its end: tarfile's own listing stops
    silently at a damaged or missing header, as if the archive ended there (`stops` holds what
    ended it). Only an end-of-archive block of zeros, with nothing but zeros after it, is an end;
    reading to the last byte also has a compressed archive check its stream's checksum."""
    members = tf.getmembers()
    if not stops or not isinstance(stops[-1], tarfile.EOFHeaderError):
        why = "a damaged header" if stops and isinstance(stops[-1], tarfile.InvalidHeaderError) else "its end"
        raise tarfile.ReadError(
            f"truncated or damaged: {why} after {len(members)} entries, where an end-of-archive marker should be"
        )
    while chunk := tf.fileobj.read(CHUNK):
        if chunk.count(0) != len(chunk):
            raise tarfile.ReadError(f"damaged: more data after an end-of-archive marker, after {len(members)} entries")
    return members


@contextlib.contextmanager
def _tar_entries(archive: Path) -> Iterator[list[_Entry]]:
    stops: list[tarfile.HeaderError] = []

    class Recorded(tarfile.TarInfo):  # what stopped tarfile's listing
        @classmethod
        def fromtarfile(cls, tf):
            try:
                return super().fromtarfile(tf)
            except tarfile.HeaderError as e:
                stops.append(e)
                raise

    with tarfile.open(archive, tarinfo=Recorded) as tf:
        try:
            members = _tar_members(tf, stops)
        except (lzma.LZMAError, OSError, EOFError) as e:  # a compressed stream that is damaged or cut short
            raise tarfile.ReadError(f"{type(e).__name__}: {e}") from None
        yield [_Entry(m.name, _tar_kind(m), m.size, lambda m=m: tf.extractfile(m)) for m in members]


ArchiveReader = Callable[[Path], contextlib.AbstractContextManager[list[_Entry]]]
ARCHIVE_FORMATS: dict[str, tuple[Callable[[Path], bool], ArchiveReader]] = {
    "zip": (zipfile.is_zipfile, _zip_entries),
    "tar": (tarfile.is_tarfile, _tar_entries),
}


def _archive_reader(archive: Path) -> ArchiveReader:
    for is_format, reader in ARCHIVE_FORMATS.values():
        if is_format(archive):
            return reader
    raise UserError(f"{archive}: not a zip or tar archive (truncated or corrupt?); delete it and run again")


def _unsafe(name: str) -> bool:
    """Would this archive path land outside the target folder?"""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) is not None or ".." in PurePosixPath(posix).parts


def _check(archive: Path, entry: _Entry, destination: str) -> None:
    if entry.unreadable:
        raise UserError(
            f"{archive}: cannot unpack entry {entry.name!r}: {entry.unreadable}; unpack the archive "
            "with a tool that can and place its files in the manual folder, or get an unencrypted copy"
        )
    if entry.kind in ("link", "special"):
        raise UserError(
            f"{archive}: refused entry {entry.name!r}: a {entry.kind} (only files and folders are "
            "extracted); the archive is not what was expected, get it from the official source"
        )
    if _unsafe(entry.name) or _unsafe(destination) or not destination.strip("/"):
        raise UserError(
            f"{archive}: refused entry {entry.name!r}: it would be written outside the target folder; "
            "the archive is not what was expected, get it from the official source"
        )


def _merge(source: Path, target: Path) -> None:
    """Move everything under `source` into `target` (created if missing), replacing files."""
    if not target.exists():
        source.rename(target)
        return
    for item in source.iterdir():
        if item.is_dir() and (target / item.name).is_dir():
            _merge(item, target / item.name)
        else:
            os.replace(item, target / item.name)


def _plan(archive: Path, entries: list[_Entry], select: Callable[[str], str | None]) -> list[tuple[_Entry, str]]:
    """(entry, destination) for every selected file, after checking every selected entry."""
    plan, taken = [], {}
    for entry in entries:
        destination = select(entry.name)
        if destination is None:
            continue
        _check(archive, entry, destination)
        if entry.kind == "file":
            destination = destination.strip("/")
            if destination in taken:  # e.g. two folders' files of one name, selected into one folder
                raise UserError(
                    f"{archive}: entries {taken[destination]!r} and {entry.name!r} would both be written "
                    f"to {destination!r}; the archive is not what was expected, get it from the official "
                    "source"
                )
            taken[destination] = entry.name
            plan.append((entry, destination))
    return plan


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _too_large(archive: Path, size: int, max_bytes: int) -> UserError:
    return UserError(
        f"{archive}: extracting it would write {_size(size)}, more than the cap of {_size(max_bytes)} "
        "(data.max_extract_gb in params.yaml); if the archive is the one expected, raise the cap and "
        "run again"
    )


def _write(archive: Path, plan: list[tuple[_Entry, str]], folder: Path, max_bytes: int | None) -> None:
    written = 0
    for entry, destination in plan:
        out_path = folder / destination
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with entry.open() as source, open(out_path, "wb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:  # should an archive understate its sizes
                    raise _too_large(archive, written, max_bytes)
                out.write(chunk)


def extract(
    archive: Path, target_dir: Path, select: Callable[[str], str | None] | None = None, max_bytes: int | None = None
) -> list[str]:
    """Unpack `archive` into `target_dir` (created if missing); returns the files written (relative paths).

    `select` maps an entry's path to where it goes under target_dir (None: skip it); by default
    every entry keeps its path. Skipped entries are never written, so only the selected ones are
    checked: one that is a link, a special file or would escape the target is refused with a
    UserError before anything is written, and so are selected entries that would write more than
    `max_bytes` in all (an archive bomb, or a cap set too low).
    """
    archive, target_dir = Path(archive), Path(target_dir)
    try:
        with _archive_reader(archive)(archive) as entries:
            plan = _plan(archive, entries, select or (lambda name: name))
            size = sum(entry.size for entry, _ in plan)
            if max_bytes is not None and size > max_bytes:
                raise _too_large(archive, size, max_bytes)
            target_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.extracting-", dir=target_dir.parent))
            try:
                _write(archive, plan, staging, max_bytes)
                _merge(staging, target_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(f"{archive}: cannot be extracted ({type(e).__name__}: {e}); delete it and run again") from None
    return [destination for _, destination in plan]
