"""The decord backend: reads the frame count from the container index, decodes only up to the picked
frames and resizes those (PIL, bilinear with antialiasing). Pixels differ slightly from ffmpeg's.
The lines its C++ code prints for an unreadable file are caught, not shown, and turned into a
reason in a few words (`no video stream`, ...), with decord's own message in brackets.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dgl.frames.mp4_index import mp4_video_track
from dgl.frames.sampling import VideoError, resampled_indices, segment_candidates, short_side_shape

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


def sample_decord(
    path: Path, num_frames: int, size: int, reencode_fps: float | None, binary: str, candidates: int
) -> np.ndarray:
    del binary  # decord decodes with the FFmpeg libraries it ships, not with an ffmpeg binary
    import decord  # imported here: it loads its own FFmpeg libraries, which only this backend needs

    track = mp4_video_track(path)  # what the index says, to check decord's count against
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
                raise VideoError(
                    f"{frame.shape[1]}x{frame.shape[0]} pixels, more than the decord backend decodes "
                    "(4K); use frames.backend: ffmpeg"
                )
            frames.append(_resize_short_side(frame, size))
    except (RuntimeError, decord.DECORDError) as e:
        raise VideoError(_decord_reason(e, logged)) from None
    return np.stack(frames)[np.searchsorted(kept, picked)]
