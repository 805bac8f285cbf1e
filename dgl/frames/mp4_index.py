"""What an mp4/mov file's index (its moov box) says of the first video track, read without running
anything: its frames (samples), seconds and keyframes (sync samples). The ffmpeg backend guesses
its picks from the frame count and chooses seeking from the keyframes; the decord backend checks
its own count against it. Every read of the index is bounded: a crafted or damaged file is a
VideoError, never an IndexError, a struct.error or a read past the file's end.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from dgl.frames.sampling import VideoError


class _Index:
    """An mp4/mov index (the moov box's bytes), read only through bounded reads: a field past the end
    of its box, or a box past the end of its parent, is a VideoError, never an IndexError or a
    struct.error. The one place that reads the index: every read of a crafted file is checked here."""

    def __init__(self, data: bytes):
        self.data = data

    def field(self, fmt: str, box: tuple[int, int], offset: int) -> tuple:
        """struct `fmt` at `offset` into `box` (payload start, end)."""
        start, end = box
        if offset < 0 or start + offset + struct.calcsize(fmt) > end:
            raise VideoError("damaged mp4 index: a box ends before its fields")
        return struct.unpack_from(fmt, self.data, start + offset)

    def children(self, box: tuple[int, int]) -> dict[bytes, tuple[int, int]]:
        """{type: (payload start, end)} of the boxes in `box` (the first of each type)."""
        found: dict[bytes, tuple[int, int]] = {}
        for kind, span in self.boxes(box):
            found.setdefault(kind, span)
        return found

    def boxes(self, box: tuple[int, int]) -> Iterator[tuple[bytes, tuple[int, int]]]:
        """(type, (payload start, end)) of the boxes in `box`, in order."""
        position, end = box
        while position + 8 <= end:
            size, kind = struct.unpack_from(">I4s", self.data, position)
            header = 16 if size == 1 else 8
            if size == 1:
                size = self.field(">Q", (position, end), 8)[0]
            size = size or end - position  # 0: to the end of the parent
            if size < header or position + size > end:
                raise VideoError(f"damaged mp4 index: box {kind!r} of {size} bytes does not fit in its parent")
            yield kind, (position + header, position + size)
            position += size


_MAX_MOOV = 1 << 30  # bytes: a 10-hour video's index is some tens of MB


def _mp4_moov(path: Path) -> bytes | None:
    """The index box (moov) of an mp4/mov file, wherever it lies; None for any other file or one
    without a moov (ffmpeg says what is wrong with it). A moov larger than what follows it in the
    file (or than _MAX_MOOV) is a VideoError: nothing is read past the file's end or into memory unbounded."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        position = 0
        while position + 8 <= file_size:  # top-level boxes: ftyp, mdat, moov, ... in any order
            f.seek(position)
            size, kind = struct.unpack(">I4s", f.read(8))
            if position == 0 and kind != b"ftyp":
                return None
            if size == 1:
                extended = f.read(8)
                if len(extended) < 8:
                    return None
                size = struct.unpack(">Q", extended)[0]
            size = size or file_size - position
            if kind == b"moov":
                if size > min(file_size - position, _MAX_MOOV):
                    raise VideoError(
                        f"truncated or damaged: its index (moov) claims {size} bytes, "
                        f"{file_size - position} are left in the file"
                    )
                f.seek(position)
                return f.read(size)
            if size < 8:
                return None
            position += size
    return None


class _Track(NamedTuple):
    frames: int
    seconds: float
    keyframes: int  # where decoding can start (sync samples)


def mp4_video_track(path: Path) -> _Track | None:
    """Samples (frames), seconds and sync samples (keyframes) of the first video track of an mp4/mov
    file, from its index; None for any other file or when the index does not say (fragmented).
    A damaged index is a VideoError (`_Index`)."""
    try:
        moov = _mp4_moov(path)
    except OSError as e:
        raise VideoError(f"cannot be read ({e.strerror or e})") from None
    if moov is None:
        return None
    index = _Index(moov)
    for kind, trak in index.boxes(index.children((0, len(moov)))[b"moov"]):  # the payload: after 8 or 16 bytes
        mdia = index.children(index.children(trak).get(b"mdia", (0, 0))) if kind == b"trak" else {}
        if b"hdlr" not in mdia or index.field(">4s", mdia[b"hdlr"], 8)[0] != b"vide":
            continue
        stbl = index.children(index.children(mdia.get(b"minf", (0, 0))).get(b"stbl", (0, 0)))
        sizes, mdhd = stbl.get(b"stsz") or stbl.get(b"stz2"), mdia.get(b"mdhd")
        if sizes is None or mdhd is None:
            return None
        samples = index.field(">I", sizes, 8)[0]  # after version, flags and one field
        timescale, duration = (
            index.field(">IQ", mdhd, 20)
            if index.field(">B", mdhd, 0)[0] == 1  # version 1
            else index.field(">II", mdhd, 12)
        )
        sync = stbl.get(b"stss")  # no sync sample table: every sample is one
        keyframes = index.field(">I", sync, 4)[0] if sync else samples
        return _Track(samples, duration / timescale if timescale else 0.0, keyframes) if samples else None
    return None
