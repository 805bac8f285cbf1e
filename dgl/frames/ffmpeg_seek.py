"""Seeking, for the ffmpeg backend (dgl/frames/ffmpeg_decode.py): a video with more keyframes than
picks (a long one, few frames) is not decoded whole. A demux-only run lists its packets (reading the
whole file, so a truncated one fails there), frame n is the one with the n-th smallest timestamp,
and each pick is decoded from the last clean keyframe before it (at most 4 seeks per ffmpeg process)
and let through by its exact timestamp. These are the single pass's frames, byte for byte
(tests/test_video.py seeks to every frame of B-frame, variable-rate, edit-list, scene-cut and mkv
videos); where a picked frame does not come out, ffmpeg reports an error (e.g. an open GOP's
keyframe), or seeking would decode over 3/4 of the video, the single pass decodes it instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dgl.frames.ffmpeg_run import LOG_ARGS, ppm_frames, run_ffmpeg
from dgl.frames.sampling import VideoError, segment_candidates


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
_PACKET = re.compile(
    r"^0, *(?:-?\d+|NOPTS), *(-?\d+|NOPTS), *-?\d+, *\d+, 0x[0-9a-f]+(?:, F=0x([0-9a-f]+))?",
    re.IGNORECASE | re.MULTILINE,
)
_KEY, _DISCARD = 0x1, 0x4  # AV_PKT_FLAG_KEY, AV_PKT_FLAG_DISCARD


def read_packets(path: Path, exe: str) -> _Packets:
    """Every packet of the first video stream, from a demux-only run: the whole file is read (so a
    truncated one fails here), nothing is decoded. Timestamps as the demuxer gives them (`-copyts`)."""
    command = [
        exe,
        *LOG_ARGS,
        "-copyts",
        "-i",
        str(path),
        "-map",
        "0:V:0",
        "-c",
        "copy",
        "-copyinkf",
        "-f",
        "framecrc",
        "-",
    ]
    stdout, log = run_ffmpeg(command)
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
        key=(flag & _KEY) > 0,
        shown=(flag & _DISCARD) == 0,
        time_base=Fraction(int(time_base[1]), int(time_base[2])) if time_base else Fraction(0),
        seconds=3600 * int(duration[1]) + 60 * int(duration[2]) + float(duration[3]) if duration else 0.0,
    )


# Seeking (see the module docstring): frame n is the shown packet with the n-th smallest pts, and
# `select` lets through only the frame with exactly that pts; whatever goes unexpectedly (a pick
# that does not come out, an error line) leaves the video to the single pass.
_SEEKS_PER_RUN = 4  # inputs one ffmpeg opens at once: each holds a decoder and its frame buffers
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
        while i >= 0 and pts[clean[i] : packet + 1].min() < pts[clean[i]]:
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
    command, branches = [exe, *LOG_ARGS, "-copyts"], []
    for i, seek in enumerate(seeks):
        if seek.start is not None:  # to the keyframe's own pts (not offset by the file's start time);
            # no accurate seek, which would drop frames by time: `select` picks by the exact pts
            micros = round(seek.start * time_base * 1_000_000)  # ffmpeg rounds it back to the same pts
            command += ["-seek_timestamp", "1", "-noaccurate_seek", "-ss", f"{micros}us"]
        command += ["-threads", "1", "-i", str(path)]
        wanted = "+".join(f"eq(pts,{p})" for p in seek.pts)
        branches.append(
            f"[{i}:V:0]trim=end_pts={seek.pts[-1] + 1},select='{wanted}',"
            f"scale=w='if(lte(iw,ih),{size},-1)':h='if(lte(iw,ih),-1,{size})':flags=area[v{i}]"
        )
    inputs = "".join(f"[v{i}]" for i in range(len(seeks)))
    graph = ";".join([*branches, f"{inputs}concat=n={len(seeks)}:v=1:a=0[out]"])
    command += [
        "-filter_complex",
        graph,
        "-filter_complex_threads",
        "1",
        "-map",
        "[out]",
        "-fps_mode",
        "passthrough",
        "-f",
        "image2pipe",
        "-vcodec",
        "ppm",
        "pipe:",
    ]
    stdout, _ = run_ffmpeg(command)
    return ppm_frames(stdout)


def sample_seeking(
    path: Path, exe: str, size: int, packets: _Packets, num_frames: int, candidates: int
) -> np.ndarray | None:
    """The sampled frames by seeking, or None where the single pass is to decode them."""
    wanted = segment_candidates(packets.frames, num_frames, candidates)
    kept = np.unique(wanted)
    seeks = _seek_plan(packets, kept)
    if seeks is None or 4 * sum(seek.decoded for seek in seeks) > 3 * len(packets.key):  # little to spare
        return None
    runs = [seeks[i : i + _SEEKS_PER_RUN] for i in range(0, len(seeks), _SEEKS_PER_RUN)]
    try:
        parts = [_decode_seeks(path, exe, size, run, packets.time_base) for run in runs]
    except VideoError:  # the single pass says what is wrong, if anything is
        return None
    if len({part.shape[1:] for part in parts}) > 1 or sum(map(len, parts)) != len(kept):  # or a pts no frame has
        return None
    return np.concatenate(parts)[np.searchsorted(kept, wanted)]
