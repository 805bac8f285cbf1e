"""One ffmpeg run of the ffmpeg backend: the flags that make its log tell errors apart, the error
lines turned into a reason in a few words (`truncated: ...`, `no video stream`, with ffmpeg's own
message in brackets, never a filter graph), and its PPM output split into frames. Which ffmpeg
binary runs: dgl/ffmpeg.py.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np

from dgl.frames.sampling import VideoError

_PPM_HEADER = re.compile(rb"P6\n(\d+) (\d+)\n255\n")
# level tags tell errors from the rest; verbose adds the per-stream counts printed at the end
LOG_ARGS = ("-nostdin", "-hide_banner", "-loglevel", "level+verbose")
# what ffmpeg says → what it means, checked against every error line in this order
_FFMPEG_REASONS = (
    ("partial file", "truncated: the file ends before the frames its index lists"),
    ("File ended prematurely", "truncated: the file ends in the middle of the video"),
    ("moov atom not found", "truncated, unfinished or not an mp4: it has no index (moov atom)"),
    ("matches no streams", "no video stream"),
    ("Invalid data found when processing input", "not a video file, or a damaged one"),
)


def ppm_frames(data: bytes) -> np.ndarray:
    """Split ffmpeg's stream of PPM images into (N, H, W, 3) uint8."""
    header = _PPM_HEADER.match(data)
    if header is None:
        raise VideoError("no video frames decoded")
    width, height = int(header[1]), int(header[2])
    frame_bytes = header.end() + width * height * 3
    if len(data) % frame_bytes:
        raise VideoError("frame size changes within the video")
    frames = np.frombuffer(data, np.uint8).reshape(-1, frame_bytes)[:, header.end() :]
    return frames.reshape(-1, height, width, 3)


def _ffmpeg_errors(log: str) -> list[str]:
    """ffmpeg's error-level messages, without their `[demuxer @ 0x...] [error]` prefixes."""
    return [
        re.sub(r"^(\[[^]]*\]\s*)+", "", line).strip()
        for line in log.splitlines()
        if re.match(r"^(\[[^]]*\]\s*)*\[(error|fatal|panic)\]", line)
    ]


def _ffmpeg_reason(errors: list[str], returncode: int) -> str:
    """What is wrong with the video, in words: the first known error, else the first one verbatim."""
    for needle, meaning in _FFMPEG_REASONS:
        if any(needle in message for message in errors):
            return f"{meaning} (ffmpeg: {needle})"
    if not errors:
        return f"ffmpeg stopped with exit code {returncode} and no message"
    first = errors[0] if not re.search(r"filter|Parsed_|\[s\d+\]", errors[0], re.IGNORECASE) else "decoding failed"
    return f"damaged video stream (ffmpeg: {first[:120]})"


def run_ffmpeg(command: list[str]) -> tuple[bytes, str]:
    """stdout and the log of an ffmpeg run; VideoError on any error-level line or a non-zero exit."""
    result = subprocess.run(command, capture_output=True)
    log = result.stderr.decode(errors="replace")
    errors = _ffmpeg_errors(log)
    if result.returncode != 0 or errors:
        raise VideoError(_ffmpeg_reason(errors, result.returncode))
    return result.stdout, log
