"""The ffmpeg backend (the default): one ffmpeg process per video decodes the first video stream; a
`select` filter lets through only the picked frames, which alone are resized (area averaging) and
written to a pipe as PPM images: memory stays the same whatever the video's length. The picks need
the frame count before decoding: it is read from the mp4 index (dgl/frames/mp4_index.py; other
containers: a demux-only ffmpeg run counts the packets), and only trusted once the decoding has
counted every frame; should the two differ (e.g. with `reencode_fps`), the video is decoded again
with picks from the exact count. A video with more keyframes than picks (a long one, few frames)
is not decoded whole but sought (dgl/frames/ffmpeg_seek.py). A non-zero exit code or any
error-level line from ffmpeg (a truncated file, a damaged stream) skips the video with a reason in
words (dgl/frames/ffmpeg_run.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import ffmpeg
import numpy as np

from dgl.ffmpeg import ffmpeg_exe
from dgl.frames.ffmpeg_run import LOG_ARGS, ppm_frames, run_ffmpeg
from dgl.frames.ffmpeg_seek import read_packets, sample_seeking
from dgl.frames.mp4_index import mp4_video_track
from dgl.frames.sampling import VideoError, segment_candidates


def _stat(log: str, pattern: str) -> int:
    """A count from ffmpeg's closing per-stream report (`... 75 packets muxed ...`)."""
    match = re.search(pattern, log)
    if match is None:
        raise VideoError("ffmpeg did not report how many frames it read")
    return int(match[1])


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


def _decode_picked(
    path: Path, exe: str, size: int, reencode_fps: float | None, frame_count: int, num_frames: int, candidates: int
) -> tuple[np.ndarray, int]:
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
    ).global_args(*LOG_ARGS, "-filter_complex_threads", "1")
    stdout, log = run_ffmpeg(command.compile(cmd=exe))
    count = _stat(log, r"Output stream #1:0 \(video\): (\d+) frames encoded")
    if count == 0:
        raise VideoError("no video frames decoded")
    return ppm_frames(stdout), count


def sample_ffmpeg(
    path: Path, num_frames: int, size: int, reencode_fps: float | None, binary: str, candidates: int
) -> np.ndarray:
    exe = ffmpeg_exe(binary)
    # the frame count, guessed from the mp4 index without running anything, else from a demux-only run;
    # only a guess: decoding counts every frame, and the picks are made again should it be wrong
    track = mp4_video_track(path)
    # seeking may pay off where there are more keyframes than picks (known before decoding, for an mp4)
    seeking = reencode_fps is None and (
        track is None or track.keyframes >= len(np.unique(segment_candidates(track.frames, num_frames, candidates)))
    )
    if track is None or seeking:
        packets = read_packets(path, exe)
        frames = sample_seeking(path, exe, size, packets, num_frames, candidates) if seeking else None
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
