"""Fetching, safely: HTTP(S) downloads that resume, with checksums (archives: dgl.data.extract).

- `download` writes to `<dest>.part`, and beside it `<dest>.part.json`: the address, the server's
  validator (a strong ETag, else Last-Modified) and the full length. It resumes the part with a
  Range request carrying `If-Range`, so a file changed on the server since is sent whole and the
  part restarts instead of being spliced onto (as does a server that ignores Range, or a 206 whose
  validator or length differ, or that carries no validator); a part without a validator is never
  continued: nothing could tell that the rest comes from the same file. A body of unknown length
  (no Content-Length) cannot tell a cut from an end: a chunked one cut short fails to parse, and
  after any other the server is asked for what follows (416: the end; 206: it was cut). A dropped
  connection is retried a few times; the file is renamed to `dest` only when complete and its
  sha256 checked. One run gives up after DEADLINE seconds in all (a server that trickles bytes
  never times out a read), keeping the part for the next run.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

from dgl.checksums import sha256_of
from dgl.cli import progress_bar
from dgl.errors import UserError

CHUNK = 1 << 20  # bytes read at a time from a response
USER_AGENT = "dgl-dataset-download (python urllib)"
DEADLINE = 12 * 3600.0  # seconds one download may take in all: MSR-VTT's 6.3 GB at 150 kB/s


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in the .part file."""


class _PastDeadline(_Interrupted):
    """The download took longer than its deadline; not retried."""


class ChecksumMismatch(UserError):
    """The downloaded file is not the one expected; the download was removed."""

    def __init__(self, message: str, expected: str, actual: str):
        super().__init__(message)
        self.expected, self.actual = expected, actual


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _about_path(part: Path) -> Path:
    """What the part file is a part of: its address, the server's validator and the full length."""
    return part.with_name(part.name + ".json")


def _read_about(part: Path) -> dict:
    try:
        about = json.loads(_about_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return about if isinstance(about, dict) else {}


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _about_path(part).unlink(missing_ok=True)


def _validator(headers: Message) -> str | None:
    """What `If-Range` can send back: a strong ETag, else the Last-Modified date (a weak ETag cannot)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _resumable(about: dict, url: str) -> bool:
    """A part can be continued only if it is known what it is a part of: the same address and a
    validator for `If-Range` (a length alone matches any other version of the same size)."""
    return about.get("url") == url and about.get("validator") is not None


def _open(url: str, offset: int, validator: str | None, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        # If-Range: the rest if the file is still the one the part came from, else all of it (a 200)
        headers |= {"Range": f"bytes={offset}-"} | ({"If-Range": validator} if validator else {})
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range(headers: Message | None) -> tuple[int | None, int | None]:
    """(first byte, full length) of `Content-Range: bytes START-END/TOTAL` or `bytes */TOTAL`."""
    match = re.match(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", headers.get("Content-Range", "") if headers else "")
    if match is None:
        return None, None
    return (int(match[1]) if match[1] else None), (int(match[2]) if match[2] != "*" else None)


def _same_file(about: dict, headers: Message, total: int | None) -> bool:
    """Does a 206 come from the file the part came from (for servers that ignore If-Range)? Only if
    it says so: the part's validator again (none: nothing says it, and it is not spliced)."""
    if about.get("length") is not None and total is not None and total != about["length"]:
        return False
    return about.get("validator") is not None and _validator(headers) == about["validator"]


def _transfer(url: str, part: Path, progress: bool, timeout: float, until: float) -> bool:
    """Append the rest of `url` to `part`, or start it over when it cannot be continued. Returns
    whether the part is known to be complete: False after a body of unknown length, which reads the
    same whether it was whole or cut short."""
    name = part.name.removesuffix(".part")
    about = _read_about(part)
    offset = part.stat().st_size if part.exists() else 0
    if offset and not _resumable(about, url):
        _discard(part)  # unknown what it is a part of: splicing onto it could make a file that never existed
        offset, about = 0, {}
    try:
        response = _open(url, offset, about.get("validator"), timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            total = _content_range(e.headers)[1]
            if total == offset and about.get("length") in (None, offset):
                return True  # the part already holds the whole file
            _discard(part)  # the part is not a prefix of what the server has now: start over
            return _transfer(url, part, progress, timeout, until)
        raise UserError(
            f"{name}: HTTP {e.code} ({e.reason}) from {url}; the address may have moved: "
            f"download the file by hand and put it at {part.with_name(name)}, then run again"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise _Interrupted(str(getattr(e, "reason", e))) from None
    with response:
        start, total = _content_range(response.headers)
        resumed = response.status == 206
        if resumed and (start != offset or not _same_file(about, response.headers, total)):
            _discard(part)
            raise _Interrupted("the server sent another byte range or another version of the file; restarting")
        if not resumed:  # a 200: the whole file, either asked for or because it changed since the part began
            length = response.headers.get("Content-Length")
            offset, total = 0, int(length) if length is not None else None
            about = {"url": url, "validator": _validator(response.headers), "length": total}
            _about_path(part).write_text(json.dumps(about) + "\n")
        bar = progress_bar(
            progress, total=total, initial=offset, desc=name, unit="B", unit_scale=True, unit_divisor=1024
        )
        with bar, open(part, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read1(CHUNK):  # what has arrived: the deadline is checked as it comes
                    out.write(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() > until:
                        raise _PastDeadline(f"still unfinished after {out.tell()} bytes when its time ran out")
            except http.client.IncompleteRead as e:  # a chunked body cut short: keep what did arrive
                out.write(e.partial)
                raise _Interrupted(f"connection closed after {out.tell()} bytes") from None
            except (OSError, http.client.HTTPException) as e:  # the socket's timeout, a reset, ...
                raise _Interrupted(f"{type(e).__name__}: {e}") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed at {size} of {total} bytes")
    return total is not None


def _check_end(url: str, part: Path, timeout: float) -> None:
    """After a body of unknown length: ask for what follows it. A server that knows ranges answers 416
    at the end of the file, or sends the rest (the body was cut: _Interrupted, and the part resumes);
    one that does not sends the whole file again, which is closed unread: then nothing can tell."""
    about, size = _read_about(part), part.stat().st_size
    try:
        response = _open(url, size, about.get("validator"), timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and _content_range(e.headers)[1] not in (None, size):
            _discard(part)
            raise _Interrupted("the file on the server has another length now; restarting") from None
        return
    except (urllib.error.URLError, OSError):
        return
    with response:
        if response.status == 206:
            raise _Interrupted(f"the body ended at {size} bytes but the server has more; resuming")


def _transfer_with_retries(url: str, part: Path, progress: bool, timeout: float, retries: int, until: float) -> None:
    """`_transfer` (and `_check_end` after a body of unknown length), resumed at once after each of
    up to `retries` interruptions, until the monotonic time `until`."""
    for attempt in range(retries + 1):
        try:
            if not _transfer(url, part, progress, timeout, until):
                _check_end(url, part, timeout)
            return
        except _PastDeadline:
            raise
        except _Interrupted:
            if attempt == retries or time.monotonic() > until:
                raise


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    deadline: float = DEADLINE,
) -> str:
    """Fetch `url` to `dest` (resuming `dest.part`), check `sha256` if given; returns the file's sha256.
    `timeout` bounds each read, `deadline` the whole download (seconds).

    A dropped connection is resumed up to `retries` times, with `If-Range` so that a file changed on
    the server meanwhile starts over instead of being spliced; after that the part file (and
    `dest.part.json`, what it is a part of) stays for the next run. On a checksum mismatch the part
    file is removed, nothing is written and ChecksumMismatch is raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    try:
        _transfer_with_retries(url, part, progress, timeout, retries, time.monotonic() + deadline)
    except _PastDeadline as e:
        kept = part.stat().st_size if part.exists() else 0
        again = "resume" if _resumable(_read_about(part), url) else "start over"
        raise UserError(
            f"{dest.name}: download from {url} took more than its {deadline:g} s ({e}; the server "
            f"sends too slowly); {kept} bytes kept in {part}: run again to {again}, or fetch the file "
            f"by hand and put it at {dest}"
        ) from None
    except _Interrupted as e:
        if part.exists() and part.stat().st_size and not _resumable(_read_about(part), url):
            _discard(part)  # the next run could not continue it anyway
            raise UserError(
                f"{dest.name}: download from {url} interrupted ({e}) and the server gives no way to "
                "resume it: run again to start over"
            ) from None
        if not part.exists() or part.stat().st_size == 0:
            raise UserError(
                f"{dest.name}: cannot download {url} ({e}); check the network, or fetch the file "
                f"by hand and put it at {dest}"
            ) from None
        raise UserError(
            f"{dest.name}: download from {url} interrupted ({e}); {part.stat().st_size} bytes kept "
            f"in {part}: run again to resume"
        ) from None
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        _discard(part)
        raise ChecksumMismatch(
            f"{dest.name}: sha256 mismatch (expected {sha256}, got {digest}); the download was removed: run "
            f"again, and if it happens again the file at {url} has changed: check it before trusting it",
            sha256,
            digest,
        )
    part.replace(dest)
    _about_path(part).unlink(missing_ok=True)
    return digest
