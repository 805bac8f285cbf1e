"""Fetching and unpacking, safely: HTTP(S) downloads that resume, checksums, guarded extraction.

- `download` writes to `<dest>.part`, resumes it with a Range request (a server that ignores
  Range sends the whole file and the part restarts), retries a dropped connection a few times,
  checks the sha256 and renames to `dest` only when complete and verified.
- `extract` unpacks a zip or tar archive, refusing any entry that would land outside the target
  (`../`, absolute paths) and any link or special file, before writing anything; it writes into a
  temporary sibling folder and moves the result into place at the end, so a refused or failed
  extraction leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator

from tqdm import tqdm

from dgl.errors import UserError

CHUNK = 1 << 20
USER_AGENT = "dgl-dataset-download (python urllib)"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- download ----------------------------------------------------------------------------------


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in the .part file."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={offset}-"} if offset else {})
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """Where a 206 response's body starts (`Content-Range: bytes START-END/TOTAL`)."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


def _already_complete(error: urllib.error.HTTPError, offset: int) -> bool:
    """A 416 whose `Content-Range: bytes */TOTAL` says the part already holds the whole file."""
    match = re.match(r"bytes \*/(\d+)", error.headers.get("Content-Range", "") if error.headers else "")
    return match is not None and int(match[1]) == offset


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of `url` to `part` (or restart it when the server cannot resume)."""
    name = part.name.removesuffix(".part")
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            if _already_complete(e, offset):
                return
            part.unlink()  # the part is not a prefix of what the server has now: start over
            return _transfer(url, part, progress, timeout)
        raise UserError(
            f"{name}: HTTP {e.code} ({e.reason}) from {url}; the address may have moved: "
            f"download the file by hand and put it at {part.with_name(name)}, then run again"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise _Interrupted(str(getattr(e, "reason", e))) from None
    with response:
        if response.status == 206 and _range_start(response) != offset:
            part.unlink(missing_ok=True)
            raise _Interrupted("the server sent another byte range than the one asked for; restarting")
        resumed = response.status == 206
        offset = offset if resumed else 0  # a server that ignores Range sends everything: restart
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        bar = tqdm(total=total, initial=offset, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                   disable=not progress)
        with bar, open(part, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _Interrupted(f"{type(e).__name__}: {e}") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed at {size} of {total} bytes")


def _transfer_with_retries(url: str, part: Path, progress: bool, timeout: float, retries: int) -> None:
    """`_transfer`, resumed at once after each of up to `retries` interruptions."""
    for _ in range(retries):
        with contextlib.suppress(_Interrupted):
            return _transfer(url, part, progress, timeout)
    _transfer(url, part, progress, timeout)


def download(url: str, dest: Path, sha256: str | None, progress: bool = True, retries: int = 3,
             timeout: float = 60.0) -> str:
    """Fetch `url` to `dest` (resuming `dest.part`), check `sha256` if given; returns the file's sha256.

    A dropped connection is resumed up to `retries` times; after that the part file stays for the
    next run to resume. On a checksum mismatch the part file is removed and nothing is written.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    try:
        _transfer_with_retries(url, part, progress, timeout, retries)
    except _Interrupted as e:
        if not part.exists() or part.stat().st_size == 0:
            raise UserError(f"{dest.name}: cannot download {url} ({e}); check the network, or fetch the file "
                            f"by hand and put it at {dest}") from None
        raise UserError(f"{dest.name}: download from {url} interrupted ({e}); {part.stat().st_size} bytes kept "
                        f"in {part}: run again to resume") from None
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise UserError(
            f"{dest.name}: sha256 mismatch (expected {sha256}, got {digest}); the download was removed: run "
            f"again, and if it happens again the file at {url} has changed: check it before trusting it"
        )
    part.replace(dest)
    return digest


# --- extract -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str  # path inside the archive
    kind: str  # "file", "dir", "link" or "special"
    open: Callable[[], IO[bytes]]


@contextlib.contextmanager
def _zip_entries(archive: Path) -> Iterator[list[_Entry]]:
    with zipfile.ZipFile(archive) as zf:
        yield [
            _Entry(info.filename,
                   "dir" if info.is_dir() else "link" if stat.S_ISLNK(info.external_attr >> 16) else "file",
                   lambda info=info: zf.open(info))
            for info in zf.infolist()
        ]


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym() or member.islnk():
        return "link"
    return "file" if member.isfile() else "special"


@contextlib.contextmanager
def _tar_entries(archive: Path) -> Iterator[list[_Entry]]:
    with tarfile.open(archive) as tf:
        yield [_Entry(m.name, _tar_kind(m), lambda m=m: tf.extractfile(m)) for m in tf.getmembers()]


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
    if entry.kind in ("link", "special"):
        raise UserError(f"{archive}: refused entry {entry.name!r}: a {entry.kind} (only files and folders are "
                        "extracted); the archive is not what was expected, get it from the official source")
    if _unsafe(entry.name) or _unsafe(destination) or not destination.strip("/"):
        raise UserError(f"{archive}: refused entry {entry.name!r}: it would be written outside the target folder; "
                        "the archive is not what was expected, get it from the official source")


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
    plan = []
    for entry in entries:
        destination = select(entry.name)
        if destination is None:
            continue
        _check(archive, entry, destination)
        if entry.kind == "file":
            plan.append((entry, destination.strip("/")))
    return plan


def _write(plan: list[tuple[_Entry, str]], folder: Path) -> None:
    for entry, destination in plan:
        out_path = folder / destination
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with entry.open() as source, open(out_path, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)


def extract(archive: Path, target_dir: Path, select: Callable[[str], str | None] | None = None) -> list[str]:
    """Unpack `archive` into `target_dir` (created if missing); returns the files written (relative paths).

    `select` maps an entry's path to where it goes under target_dir (None: skip it); by default
    every entry keeps its path. Skipped entries are never written, so only the selected ones are
    checked: one that is a link, a special file or would escape the target is refused with a
    UserError before anything is written.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    try:
        with _archive_reader(archive)(archive) as entries:
            plan = _plan(archive, entries, select or (lambda name: name))
            target_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.extracting-", dir=target_dir.parent))
            try:
                _write(plan, staging)
                _merge(staging, target_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(f"{archive}: cannot be extracted ({type(e).__name__}: {e}); delete it and run again") from None
    return [destination for _, destination in plan]
