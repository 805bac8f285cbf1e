"""Frame sampling: N frames per video, uniformly, at a fixed short side.

Uniform sampling takes the centre frame of each of N equal segments of the video; a video with
fewer than N frames gives all its frames and then repeats the last (docs/method.md,
"Input"). Training videos also keep `train_candidates` frames per segment, the centres of K equal
parts of it (the middle one is the segment's centre), so that training can draw a random frame
within each segment, as the reference does, from a cache of K x N frames instead of the whole
video (dgl/cache.py: `CachedSplit.jitter`). Frames are sampled at short side `size`, aspect ratio
kept; the stage then crops them as the backbone takes them and stores each once, encoded
(dgl/frame_store.py). Two backends:

- `ffmpeg` (default): one ffmpeg process per video decodes the first video stream; a `select`
  filter lets through only the picked frames, which alone are resized (area averaging) and written
  to a pipe as PPM images: memory stays the same whatever the video's length. The picks need the
  frame count before decoding: it is read from the mp4 index (other containers: a demux-only
  ffmpeg run counts the packets), and only trusted once the decoding has counted every frame;
  should the two differ (e.g. with `reencode_fps`), the video is decoded again with picks from the
  exact count. A video with more keyframes than picks (a long one, few frames) is not decoded
  whole: a demux-only run lists its packets (reading the whole file, so a truncated one fails
  there), frame n is the one with the n-th smallest timestamp, and each pick is decoded from the
  last clean keyframe before it (at most 4 seeks per ffmpeg process) and let through by its exact
  timestamp. These are the single pass's frames, byte for byte (tests/test_video.py seeks to every
  frame of B-frame, variable-rate, edit-list, scene-cut and mkv videos); where a picked frame does
  not come out, ffmpeg reports an error (e.g. an open GOP's keyframe), or seeking would decode over
  3/4 of the video, the single pass decodes it instead. A non-zero exit code or any error-level
  line from ffmpeg (a truncated file, a damaged stream) skips the video with a reason in words.
- `decord`: reads the frame count from the container index, decodes only up to the picked frames
  and resizes those (PIL, bilinear with antialiasing). Pixels differ slightly from ffmpeg's. The
  lines its C++ code prints for an unreadable file are caught, not shown.

Either way a skipped video's reason is a few words (`truncated: ...`, `no video stream`), with the
decoder's own message in brackets, never a filter graph or an assertion.

`reencode_fps` mimics CLIP4Clip's preprocessing (re-encode every video to N fps) without writing
a new file: ffmpeg's `fps` filter resamples the decoded stream (and so spares resizing the dropped
frames); decord picks the frame nearest to each tick of the new rate.

The frames stage runs `workers` videos at a time from a thread pool: the decoding runs in ffmpeg
processes or in decord's native code, which releases the GIL, so threads parallelise it without
the start-up cost of Python worker processes.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import ffmpeg
import numpy as np
from PIL import Image

from dgl.cli import progress_bar
from dgl.data.annotations import Annotations, id_path
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe, toolchain
from dgl.frame_store import Codec, StoreWriter, codec_from, resize_center_crop
from dgl.settings import FramesConfig


class VideoError(Exception):
    """A video that cannot be sampled; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- which frames ------------------------------------------------------------------------------


def uniform_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """Centre frame of each of `num_frames` equal segments; a shorter video repeats its last frame."""
    if frame_count >= num_frames:
        return (2 * np.arange(num_frames) + 1) * frame_count // (2 * num_frames)
    return np.minimum(np.arange(num_frames), frame_count - 1)


def segment_candidates(frame_count: int, num_frames: int, candidates: int) -> np.ndarray:
    """(num_frames * candidates,) frame indices: for each of `num_frames` equal segments, the centres
    of `candidates` equal parts of it; with an odd count the middle one is `uniform_indices`'s
    centre. A video with fewer frames than segments repeats `uniform_indices` (no jitter)."""
    if frame_count < num_frames:
        return np.repeat(uniform_indices(frame_count, num_frames), candidates)
    parts = num_frames * candidates
    return (2 * np.arange(parts) + 1) * frame_count // (2 * parts)


def resampled_indices(frame_count: int, native_fps: float, target_fps: float) -> np.ndarray:
    """Native frame indices nearest to each tick of `target_fps` (the frames an fps re-encode keeps)."""
    if not native_fps > 0:
        raise VideoError("zero or unknown frame rate")
    count = max(1, round(frame_count * target_fps / native_fps))
    ticks = np.round(np.arange(count) * native_fps / target_fps).astype(np.int64)
    return np.minimum(ticks, frame_count - 1)


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side `size` and the aspect ratio kept (rounded to nearest)."""
    if width <= height:
        return (height * size + width // 2) // width, size
    return size, (width * size + height // 2) // height


# --- ffmpeg backend ----------------------------------------------------------------------------

_PPM_HEADER = re.compile(rb"P6\n(\d+) (\d+)\n255\n")
# level tags tell errors from the rest; verbose adds the per-stream counts printed at the end
_LOG_ARGS = ("-nostdin", "-hide_banner", "-loglevel", "level+verbose")
# what ffmpeg says → what it means, checked against every error line in this order
_FFMPEG_REASONS = (
    ("partial file", "truncated: the file ends before the frames its index lists"),
    ("File ended prematurely", "truncated: the file ends in the middle of the video"),
    ("moov atom not found", "truncated, unfinished or not an mp4: it has no index (moov atom)"),
    ("matches no streams", "no video stream"),
    ("Invalid data found when processing input", "not a video file, or a damaged one"),
)


def _ppm_frames(data: bytes) -> np.ndarray:
    """Split ffmpeg's stream of PPM images into (N, H, W, 3) uint8."""
    header = _PPM_HEADER.match(data)
    if header is None:
        raise VideoError("no video frames decoded")
    width, height = int(header[1]), int(header[2])
    frame_bytes = header.end() + width * height * 3
    if len(data) % frame_bytes:
        raise VideoError("frame size changes within the video")
    frames = np.frombuffer(data, np.uint8).reshape(-1, frame_bytes)[:, header.end():]
    return frames.reshape(-1, height, width, 3)


def _ffmpeg_errors(log: str) -> list[str]:
    """ffmpeg's error-level messages, without their `[demuxer @ 0x...] [error]` prefixes."""
    return [re.sub(r"^(\[[^]]*\]\s*)+", "", line).strip() for line in log.splitlines()
            if re.match(r"^(\[[^]]*\]\s*)*\[(error|fatal|panic)\]", line)]


def _ffmpeg_reason(errors: list[str], returncode: int) -> str:
    """What is wrong with the video, in words: the first known error, else the first one verbatim."""
    for needle, meaning in _FFMPEG_REASONS:
        if any(needle in message for message in errors):
            return f"{meaning} (ffmpeg: {needle})"
    if not errors:
        return f"ffmpeg stopped with exit code {returncode} and no message"
    first = errors[0] if not re.search(r"filter|Parsed_|\[s\d+\]", errors[0], re.IGNORECASE) else "decoding failed"
    return f"damaged video stream (ffmpeg: {first[:120]})"


def _run_ffmpeg(command: list[str]) -> tuple[bytes, str]:
    """stdout and the log of an ffmpeg run; VideoError on any error-level line or a non-zero exit."""
    result = subprocess.run(command, capture_output=True)
    log = result.stderr.decode(errors="replace")
    errors = _ffmpeg_errors(log)
    if result.returncode != 0 or errors:
        raise VideoError(_ffmpeg_reason(errors, result.returncode))
    return result.stdout, log


def _stat(log: str, pattern: str) -> int:
    """A count from ffmpeg's closing per-stream report (`... 75 packets muxed ...`)."""
    match = re.search(pattern, log)
    if match is None:
        raise VideoError("ffmpeg did not report how many frames it read")
    return int(match[1])


@dataclass(frozen=True)
class _Packets:
    """The first video stream's packets in decode order, from a demux-only run (nothing decoded)."""

    pts: np.ndarray | None  # (P,) int64 presentation times in time_base units; None if one has none
    key: np.ndarray  # (P,) bool: decoding can start here
    shown: np.ndarray  # (P,) bool: decoded and shown (not cut by an edit list)
    time_base: Fraction
    seconds: float  # the container's duration (0 if unknown)

    @property
    def frames(self) -> int:
        return int(self.shown.sum())


# a line of ffmpeg's framecrc output: stream, dts, pts, duration, size, checksum[, F=flags]
_PACKET = re.compile(r"^0, *(?:-?\d+|NOPTS), *(-?\d+|NOPTS), *-?\d+, *\d+, 0x[0-9a-f]+(?:, F=0x([0-9a-f]+))?",
                     re.IGNORECASE | re.MULTILINE)
_KEY, _DISCARD = 0x1, 0x4  # AV_PKT_FLAG_KEY, AV_PKT_FLAG_DISCARD


def _read_packets(path: Path, exe: str) -> _Packets:
    """Every packet of the first video stream, from a demux-only run: the whole file is read (so a
    truncated one fails here), nothing is decoded. Timestamps as the demuxer gives them (`-copyts`)."""
    command = [exe, *_LOG_ARGS, "-copyts", "-i", str(path), "-map", "0:V:0", "-c", "copy", "-copyinkf",
               "-f", "framecrc", "-"]
    stdout, log = _run_ffmpeg(command)
    text = stdout.decode(errors="replace")
    rows = _PACKET.findall(text)
    if not rows:
        raise VideoError("no video frames")
    pts, flags = zip(*rows)
    flag = np.array([int(f, 16) if f else _KEY for f in flags])  # framecrc leaves out a lone key flag
    time_base = re.search(r"^#tb 0: (\d+)/(\d+)$", text, re.MULTILINE)
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", log)
    return _Packets(
        pts=None if "NOPTS" in pts else np.array(pts, np.int64),
        key=(flag & _KEY) > 0, shown=(flag & _DISCARD) == 0,
        time_base=Fraction(int(time_base[1]), int(time_base[2])) if time_base else Fraction(0),
        seconds=3600 * int(duration[1]) + 60 * int(duration[2]) + float(duration[3]) if duration else 0.0)


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
                    raise VideoError(f"truncated or damaged: its index (moov) claims {size} bytes, "
                                     f"{file_size - position} are left in the file")
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


def _mp4_video_track(path: Path) -> _Track | None:
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
        timescale, duration = (index.field(">IQ", mdhd, 20) if index.field(">B", mdhd, 0)[0] == 1  # version 1
                               else index.field(">II", mdhd, 12))
        sync = stbl.get(b"stss")  # no sync sample table: every sample is one
        keyframes = index.field(">I", sync, 4)[0] if sync else samples
        return _Track(samples, duration / timescale if timescale else 0.0, keyframes) if samples else None
    return None


def _select_expr(frame_count: int, num_frames: int, candidates: int) -> str:
    """An ffmpeg expression true for frame `n` iff `segment_candidates(frame_count, ...)` picks it.

    With P = num_frames * candidates parts of F frames, part j's centre is floor((2j+1)F / 2P).
    The first part whose centre is at or after n is j = ceil((2Pn - F) / 2F); n is picked iff that
    centre comes before n + 1, i.e. (2j+1)F < 2P(n+1). Exact in doubles for any real count.
    A video with fewer frames than segments gives all of them. One expression of constant length
    whatever the count, where a list of frame numbers would grow with it.
    """
    if frame_count < num_frames:
        return "1"
    two_p, f = 2 * num_frames * candidates, frame_count
    return f"lt((2*ceil(({two_p}*n-{f})/{2 * f})+1)*{f},{two_p}*(n+1))"


def _decode_picked(path: Path, exe: str, size: int, reencode_fps: float | None, frame_count: int,
                   num_frames: int, candidates: int) -> tuple[np.ndarray, int]:
    """The frames `segment_candidates(frame_count, ...)` picks, each once, in order (U, H, W, 3), and how
    many frames the video really has (after `reencode_fps`): one decoding run."""
    video = ffmpeg.input(str(path), threads=1)["V:0"]  # one decoder thread: the workers are the parallelism
    if reencode_fps is not None:
        video = video.filter("fps", fps=reencode_fps)
    every = video.split()
    picked = every[0].filter("select", _select_expr(frame_count, num_frames, candidates))
    picked = picked.filter("scale", w=f"if(lte(iw,ih),{size},-1)", h=f"if(lte(iw,ih),-1,{size})", flags="area")
    command = ffmpeg.merge_outputs(
        # passthrough: every picked frame exactly once (image2pipe would otherwise resample to a constant rate)
        picked.output("pipe:", format="image2pipe", vcodec="ppm", fps_mode="passthrough"),
        every[1].output("-", format="null", fps_mode="passthrough"),  # counts every frame, copying none
    ).global_args(*_LOG_ARGS, "-filter_complex_threads", "1")
    stdout, log = _run_ffmpeg(command.compile(cmd=exe))
    count = _stat(log, r"Output stream #1:0 \(video\): (\d+) frames encoded")
    if count == 0:
        raise VideoError("no video frames decoded")
    return _ppm_frames(stdout), count


# Seeking (see the module docstring): frame n is the shown packet with the n-th smallest pts, and
# `select` lets through only the frame with exactly that pts; whatever goes unexpectedly (a pick
# that does not come out, an error line) leaves the video to the single pass.
_SEEKS_PER_RUN = 4  # inputs one ffmpeg opens at once: each holds a decoder (about 9 MB at 720p)
_PICKS_PER_SEEK = 16  # frames one seek may give (bounds the length of its select expression)


class _Seek(NamedTuple):
    start: int | None  # the keyframe's pts (time_base units), where it seeks to; None: from the first packet
    pts: list[int]  # of the frames it gives, in order
    decoded: int  # packets it decodes


def _seek_plan(packets: _Packets, picks: np.ndarray) -> list[_Seek] | None:
    """The seeks that give the frames `picks` (sorted frame numbers), or None where seeking cannot be
    trusted (a packet without a pts, two with the same, a stream that does not start at a keyframe).

    A pick is decoded from the last clean keyframe K before it in decode order: one that no packet
    after it, up to the next keyframe or the pick, shows earlier. An open GOP's keyframe is not
    clean: its leading frames, decoded after it and shown before, need the frames before it."""
    pts = packets.pts
    if pts is None or not packets.frames or not packets.key[0] or not packets.time_base:
        return None
    shown = np.flatnonzero(packets.shown)
    by_time = shown[np.argsort(pts[shown], kind="stable")]  # frame n is packet by_time[n]
    if np.any(np.diff(pts[by_time]) == 0):
        return None
    keys = np.flatnonzero(packets.key)
    gop_ends = np.append(keys[1:], len(pts))
    clean = keys[[pts[k:end].min() >= pts[k] for k, end in zip(keys, gop_ends)]]
    seeks: list[_Seek] = []
    for packet in by_time[picks]:
        i = np.searchsorted(clean, packet, side="right") - 1
        while i >= 0 and pts[clean[i]:packet + 1].min() < pts[clean[i]]:
            i -= 1
        k = clean[i] if i >= 0 else 0  # else from the first packet, as the single pass
        start = None if k == 0 else int(pts[k])
        last = seeks[-1] if seeks else None
        if last is not None and last.start == start and len(last.pts) < _PICKS_PER_SEEK:
            seeks[-1] = _Seek(start, [*last.pts, int(pts[packet])], max(last.decoded, packet - k + 1))
        else:
            seeks.append(_Seek(start, [int(pts[packet])], packet - k + 1))
    return seeks


def _decode_seeks(path: Path, exe: str, size: int, seeks: list[_Seek], time_base: Fraction) -> np.ndarray:
    """The frames of `seeks` (one ffmpeg input each, `-copyts`: timestamps as demuxed), in order."""
    command, branches = [exe, *_LOG_ARGS, "-copyts"], []
    for i, seek in enumerate(seeks):
        if seek.start is not None:  # to the keyframe's own pts (not offset by the file's start time);
            # no accurate seek, which would drop frames by time: `select` picks by the exact pts
            micros = round(seek.start * time_base * 1_000_000)  # ffmpeg rounds it back to the same pts
            command += ["-seek_timestamp", "1", "-noaccurate_seek", "-ss", f"{micros}us"]
        command += ["-threads", "1", "-i", str(path)]
        wanted = "+".join(f"eq(pts,{p})" for p in seek.pts)
        branches.append(f"[{i}:V:0]trim=end_pts={seek.pts[-1] + 1},select='{wanted}',"
                        f"scale=w='if(lte(iw,ih),{size},-1)':h='if(lte(iw,ih),-1,{size})':flags=area[v{i}]")
    inputs = "".join(f"[v{i}]" for i in range(len(seeks)))
    graph = ";".join([*branches, f"{inputs}concat=n={len(seeks)}:v=1:a=0[out]"])
    command += ["-filter_complex", graph, "-filter_complex_threads", "1", "-map", "[out]",
                "-fps_mode", "passthrough", "-f", "image2pipe", "-vcodec", "ppm", "pipe:"]
    stdout, _ = _run_ffmpeg(command)
    return _ppm_frames(stdout)


def _sample_seeking(path: Path, exe: str, size: int, packets: _Packets, num_frames: int,
                    candidates: int) -> np.ndarray | None:
    """The sampled frames by seeking, or None where the single pass is to decode them."""
    wanted = segment_candidates(packets.frames, num_frames, candidates)
    kept = np.unique(wanted)
    seeks = _seek_plan(packets, kept)
    if seeks is None or 4 * sum(seek.decoded for seek in seeks) > 3 * len(packets.key):  # little to spare
        return None
    runs = [seeks[i:i + _SEEKS_PER_RUN] for i in range(0, len(seeks), _SEEKS_PER_RUN)]
    try:
        parts = [_decode_seeks(path, exe, size, run, packets.time_base) for run in runs]
    except VideoError:  # the single pass says what is wrong, if anything is
        return None
    if len({part.shape[1:] for part in parts}) > 1 or sum(map(len, parts)) != len(kept):  # or a pts no frame has
        return None
    return np.concatenate(parts)[np.searchsorted(kept, wanted)]


def _sample_ffmpeg(path: Path, num_frames: int, size: int, reencode_fps: float | None, binary: str,
                   candidates: int) -> np.ndarray:
    exe = ffmpeg_exe(binary)
    # the frame count, guessed from the mp4 index without running anything, else from a demux-only run;
    # only a guess: decoding counts every frame, and the picks are made again should it be wrong
    track = _mp4_video_track(path)
    # seeking may pay off where there are more keyframes than picks (known before decoding, for an mp4)
    seeking = reencode_fps is None and (track is None or track.keyframes >= len(np.unique(
        segment_candidates(track.frames, num_frames, candidates))))
    if track is None or seeking:
        packets = _read_packets(path, exe)
        frames = _sample_seeking(path, exe, size, packets, num_frames, candidates) if seeking else None
        if frames is not None:
            return frames
        frame_count, seconds = packets.frames, packets.seconds
    else:
        frame_count, seconds = track.frames, track.seconds
    if frame_count == 0:
        raise VideoError("no video frames")
    guess = frame_count if reencode_fps is None or seconds <= 0 else max(1, round(seconds * reencode_fps))
    frames, count = _decode_picked(path, exe, size, reencode_fps, guess, num_frames, candidates)
    if count != guess:
        frames, recount = _decode_picked(path, exe, size, reencode_fps, count, num_frames, candidates)
        if recount != count:
            raise VideoError(f"ffmpeg decoded {count} frames, then {recount}: the stream cannot be read reliably")
    wanted = segment_candidates(count, num_frames, candidates)
    kept = np.unique(wanted)
    if len(frames) != len(kept):
        raise VideoError(f"ffmpeg passed {len(frames)} frames of the {len(kept)} picked")
    return np.ascontiguousarray(frames[np.searchsorted(kept, wanted)])


# --- decord backend ----------------------------------------------------------------------------

# what decord says → what it means; its messages carry a time, a source line and `Check failed: ...`
_DECORD_REASONS = (
    ("cannot find video stream", "no video stream"),
    ("broken metadata", "broken metadata: the frame count cannot be read"),
    ("av_read_frame failed", "truncated or damaged: a part of the stream cannot be read"),
    ("Error sending packet", "damaged: the decoder rejects a part of the stream"),
    ("Invalid data found when processing input", "not a video file, or a damaged one"),
)
_DECORD_LOG = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+\.(cc|h):\d+: ")  # a line of decord's own (C++) logging
_FD2 = threading.Lock()


@contextlib.contextmanager
def _decord_stderr() -> Iterator[list[str]]:
    """Catch what decord's C++ code writes straight to file descriptor 2 (an `ERROR opening` line for
    every unreadable file) into the yielded list; whatever else was written meanwhile is passed on.
    One thread at a time: the descriptor belongs to the whole process."""
    caught: list[str] = []
    with _FD2, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep quiet
            yield caught
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield caught
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            caught += [line.strip() for line in lines if _DECORD_LOG.match(line)]
            passed_on = "".join(line for line in lines if not _DECORD_LOG.match(line))
            if passed_on:
                sys.stderr.write(passed_on)


def _decord_reason(error: Exception, logged: list[str]) -> str:
    """What is wrong with the video, in words, from decord's exception and the lines it logged."""
    messages = [_DECORD_LOG.sub("", line) for line in [*logged, str(error)] if line.strip()]
    for needle, meaning in _DECORD_REASONS:
        if any(needle in message for message in messages):
            return f"{meaning} (decord: {needle})"
    first = messages[-1].splitlines()[0] if messages else type(error).__name__
    first = re.sub(r"^Check failed: .*?\(-?\d+ vs\. -?\d+\)\s*", "", first)  # keep only the words after the check
    return f"unreadable video (decord: {first[:120]})"


def _resize_short_side(frame: np.ndarray, size: int) -> np.ndarray:
    height, width = short_side_shape(frame.shape[0], frame.shape[1], size)
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


# decord decodes at full size before resizing: above this a frame is refused instead of taking GBs
DECORD_MAX_PIXELS = 4096 * 2304  # 4K (DCI and UHD) passes; ffmpeg resizes inside its filter graph whatever the size


def _sample_decord(path: Path, num_frames: int, size: int, reencode_fps: float | None, binary: str,
                   candidates: int) -> np.ndarray:
    del binary  # decord decodes with the FFmpeg libraries it ships, not with an ffmpeg binary
    import decord  # imported here: it loads its own FFmpeg libraries, which only this backend needs

    track = _mp4_video_track(path)  # what the index says, to check decord's count against
    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's own messages; decord's are caught below
    logged: list[str] = []
    try:
        with _decord_stderr() as logged:
            reader = decord.VideoReader(str(path), num_threads=1)
        frame_count = len(reader)
        if frame_count == 0:
            raise VideoError("no video frames")
        if track is not None and track.frames != frame_count:
            raise VideoError(f"damaged index: decord counts {frame_count} frames, the mp4 index lists {track.frames}")
        timeline = np.arange(frame_count)
        if reencode_fps is not None:
            timeline = resampled_indices(frame_count, reader.get_avg_fps(), reencode_fps)
        picked = timeline[segment_candidates(len(timeline), num_frames, candidates)]
        kept = np.unique(picked)
        frames = []
        for i in kept.tolist():  # one full-size frame at a time, resized at once: memory stays bounded
            frame = reader.get_batch([i]).asnumpy()[0]
            if frame.shape[0] * frame.shape[1] > DECORD_MAX_PIXELS:
                raise VideoError(f"{frame.shape[1]}x{frame.shape[0]} pixels, more than the decord backend decodes "
                                 "(4K); use frames.backend: ffmpeg")
            frames.append(_resize_short_side(frame, size))
    except (RuntimeError, decord.DECORDError) as e:
        raise VideoError(_decord_reason(e, logged)) from None
    return np.stack(frames)[np.searchsorted(kept, picked)]


BACKENDS: dict[str, Callable[..., np.ndarray]] = {"ffmpeg": _sample_ffmpeg, "decord": _sample_decord}


def sample_frames(path: Path, num_frames: int, size: int, backend: str = "ffmpeg",
                  reencode_fps: float | None = None, ffmpeg: str = "pinned", candidates: int = 1) -> np.ndarray:
    """`num_frames` uniformly sampled frames (T, H, W, 3) uint8 with short side `size`; with
    `candidates` K > 1, K per segment: (T * K, H, W, 3), segment by segment.

    Raises VideoError for a missing, empty, corrupt or frameless file.
    """
    if backend not in BACKENDS:
        raise UserError(f"frames backend {backend!r} is unknown; use one of: {', '.join(BACKENDS)}")
    path = Path(path)
    if not path.is_file():
        raise VideoError("file not found")
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    return BACKENDS[backend](path, num_frames, size, reencode_fps, ffmpeg, candidates)


# --- the frames stage --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    video_id: str
    raw_dir: Path
    relative_path: str
    cfg: FramesConfig
    ffmpeg: str
    candidates: int
    image_size: int
    codec: Codec


def _extract_one(job: _Job) -> tuple[str, list[bytes] | None, str | None]:
    """Sample one video, crop its frames as CLIP takes them and encode each: (video id, the encoded
    frames or None, the reason it was skipped or None). Runs in a worker thread. Whatever goes wrong
    with one video skips that video; only a UserError (the setup, e.g. a missing ffmpeg, is wrong for
    every video) stops the stage."""
    cfg = job.cfg
    try:
        frames = sample_frames(job.raw_dir / job.relative_path, cfg.num_frames, cfg.size, cfg.backend,
                               cfg.reencode_fps, job.ffmpeg, job.candidates)
        encoded = [job.codec.encode(frame) for frame in resize_center_crop(frames, job.image_size)]
    except UserError:
        raise
    except VideoError as e:
        return job.video_id, None, f"{job.relative_path}: {e.reason}"
    except Exception as e:  # noqa: BLE001 (a fault no check foresaw, e.g. MemoryError: the video's, not the stage's)
        message = " ".join(str(e).split())[:120]
        reason = f"unreadable ({type(e).__name__}{': ' + message if message else ''})"
        return job.video_id, None, f"{job.relative_path}: {reason}"
    return job.video_id, encoded, None


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> Iterator[tuple[str, list[bytes] | None, str | None]]:
    """The jobs' results in the jobs' order (so the store's bytes do not depend on the workers)."""
    bar = functools.partial(progress_bar, progress, total=len(jobs), desc="frames", unit="video")
    if workers <= 1 or len(jobs) <= 1:
        yield from bar(map(_extract_one, jobs))
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        yield from bar(pool.map(_extract_one, jobs))


def decoder_toolchain(backend: str, ffmpeg: str) -> dict[str, str]:
    """Which decoder made the frames."""
    if backend == "decord":
        import decord

        return {"backend": "decord", "decord": decord.__version__}
    return {"backend": "ffmpeg", **toolchain(ffmpeg)}


def extract_frames(raw_dir: Path, annotations: Annotations, out_dir: Path, cfg: FramesConfig, *, ffmpeg: str,
                   image_size: int, progress: bool = True) -> dict:
    """Sample every video the annotations name (train and test) into a frame store in out_dir
    (dgl/frame_store.py): each frame resized and centre-cropped to `image_size` (the backbone's
    input), encoded with `cfg.codec`, video after video in the annotations' order.

    Training videos get `cfg.train_candidates` frames per segment (T * K frames), test videos the
    segment centres. out_dir/sampling.json says so, and which decoder made the frames.
    A missing, empty or corrupt video never stops the stage: it is listed with its reason in
    out_dir/skipped.json ({"count": n, "skipped": [{"video_id", "reason"}]}). Returns counts.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    train = set(annotations.split_videos("train"))
    video_ids = list(dict.fromkeys(annotations.split_videos("train") + annotations.split_videos("test")))
    for v in video_ids:  # the store keys frames by id, yet an id is a plain file name in every stage
        id_path(out_dir, v, "")
    codec = codec_from({"codec": cfg.codec, "quality": cfg.jpeg_quality})
    sampling = {"num_frames": cfg.num_frames, "train_candidates": cfg.train_candidates,
                "decoder": decoder_toolchain(cfg.backend, ffmpeg)}
    (out_dir / "sampling.json").write_text(json.dumps(sampling, indent=1) + "\n")
    jobs = [_Job(v, raw_dir, annotations.videos[v], cfg, ffmpeg, cfg.train_candidates if v in train else 1,
                 image_size, codec) for v in video_ids]
    store = StoreWriter(out_dir, codec, (3, image_size, image_size))
    skipped = []
    for video_id, encoded, reason in _run_jobs(jobs, cfg.workers, progress):
        if reason is None:
            store.add(video_id, encoded)
        else:
            skipped.append({"video_id": video_id, "reason": reason})
    meta = store.close()
    (out_dir / "skipped.json").write_text(json.dumps({"count": len(skipped), "skipped": skipped}, indent=1) + "\n")
    return {"videos": len(jobs), "sampled": len(jobs) - len(skipped), "skipped": len(skipped),
            "num_frames": cfg.num_frames, "size": cfg.size, "backend": cfg.backend, "image_size": image_size,
            "codec": cfg.codec, "bytes": sum(shard["bytes"] for shard in meta["shards"])}
