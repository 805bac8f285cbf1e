"""Which frames of a video are sampled: N per video, uniformly, at a fixed short side.

Uniform sampling takes the centre frame of each of N equal segments of the video; a video with
fewer than N frames gives all its frames and then repeats the last (docs/method.md,
"Input"). Training videos also keep `train_candidates` frames per segment, the centres of K equal
parts of it (the middle one is the segment's centre), so that training can draw a random frame
within each segment, as the reference does, from a cache of K x N frames instead of the whole
video (dgl/cache/read.py: `CachedSplit.jitter`). Frames are sampled at short side `size`, aspect ratio
kept; the stage then crops them as the backbone takes them and stores each once, encoded
(dgl/frames/store.py).

`reencode_fps` mimics CLIP4Clip's preprocessing (re-encode every video to N fps) without writing
a new file: ffmpeg's `fps` filter resamples the decoded stream (and so spares resizing the dropped
frames); decord picks the frame nearest to each tick of the new rate (`resampled_indices`).
"""

from __future__ import annotations

import numpy as np


class VideoError(Exception):
    """A video that cannot be sampled; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
