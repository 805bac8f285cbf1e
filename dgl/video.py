"""Frame sampling: N frames per video, uniformly, at a fixed short side.

Uniform sampling takes the centre frame of each of N equal segments of the video; a video with
fewer than N frames gives all its frames and then repeats the last (DGL_SPEC.md, "Backbone and
input"). Training videos also keep `train_candidates` frames per segment, the centres of K equal
parts of it (the middle one is the segment's centre), so that training can draw a random frame
within each segment, as the reference does, from a cache of K x N frames instead of the whole
video (dgl/cache.py: `CachedSplit.jitter`). Frames are stored at short side `size`, aspect ratio
kept. Two backends:

- `ffmpeg` (default): one ffmpeg process per video decodes the first video stream, resizes every
  frame (area averaging) and writes PPM images to a pipe; the N frames are picked in numpy.
  There is no ffprobe to count frames first; the pipe gives the exact count, and the PPM headers
  the frame size, from one process. Its exit code is checked.
- `decord`: reads the frame count from the container index, decodes only up to the picked frames
  and resizes those (PIL, bilinear with antialiasing). Pixels differ slightly from ffmpeg's.

`reencode_fps` mimics CLIP4Clip's preprocessing (re-encode every video to N fps) without writing
a new file: ffmpeg's `fps` filter resamples the decoded stream (and so spares resizing the dropped
frames); decord picks the frame nearest to each tick of the new rate.

The frames stage runs `workers` videos at a time from a thread pool: the decoding runs in ffmpeg
processes or in decord's native code, which releases the GIL, so threads parallelise it without
the start-up cost of Python worker processes.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ffmpeg
import numpy as np
from PIL import Image
from tqdm import tqdm

from dgl.data.annotations import Annotations
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe, toolchain
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


def _ffmpeg_reason(stderr: bytes, returncode: int) -> str:
    """ffmpeg's first error line without its `[demuxer @ 0x...]` prefix."""
    lines = [re.sub(r"^(\[[^]]*\]\s*)+", "", line).strip() for line in stderr.decode(errors="replace").splitlines()]
    first = next((line for line in lines if line), "no message")
    return f"ffmpeg exit {returncode}: {first}"


def _sample_ffmpeg(path: Path, num_frames: int, size: int, reencode_fps: float | None, binary: str,
                   candidates: int) -> np.ndarray:
    video = ffmpeg.input(str(path), threads=1)["v:0"]  # one decoder thread: the workers are the parallelism
    if reencode_fps is not None:
        video = video.filter("fps", fps=reencode_fps)
    video = video.filter("scale", w=f"if(lte(iw,ih),{size},-1)", h=f"if(lte(iw,ih),-1,{size})", flags="area")
    # passthrough: every decoded frame exactly once (image2pipe would otherwise resample to a constant rate)
    command = video.output("pipe:", format="image2pipe", vcodec="ppm", fps_mode="passthrough")
    command = command.global_args("-nostdin", "-v", "error", "-filter_complex_threads", "1")
    result = subprocess.run(command.compile(cmd=ffmpeg_exe(binary)), capture_output=True)
    if result.returncode != 0:
        raise VideoError(_ffmpeg_reason(result.stderr, result.returncode))
    frames = _ppm_frames(result.stdout)
    return np.ascontiguousarray(frames[segment_candidates(len(frames), num_frames, candidates)])


# --- decord backend ----------------------------------------------------------------------------


def _resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
    height, width = short_side_shape(frames.shape[1], frames.shape[2], size)
    resized = [Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR) for f in frames]
    return np.stack([np.asarray(image) for image in resized])


def _sample_decord(path: Path, num_frames: int, size: int, reencode_fps: float | None, binary: str,
                   candidates: int) -> np.ndarray:
    del binary  # decord decodes with the FFmpeg libraries it ships, not with an ffmpeg binary
    import decord  # imported here: it loads its own FFmpeg libraries, which only this backend needs

    decord.logging.set_level(decord.logging.QUIET)
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        frame_count = len(reader)
        if frame_count == 0:
            raise VideoError("no video frames")
        timeline = np.arange(frame_count)
        if reencode_fps is not None:
            timeline = resampled_indices(frame_count, reader.get_avg_fps(), reencode_fps)
        picked = timeline[segment_candidates(len(timeline), num_frames, candidates)]
        frames = reader.get_batch(picked.tolist()).asnumpy()
    except (RuntimeError, decord.DECORDError) as e:
        raise VideoError(f"decord: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return _resize_short_side(frames, size)


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
    out_dir: Path
    cfg: FramesConfig
    ffmpeg: str
    candidates: int


def _extract_one(job: _Job) -> tuple[str, str | None]:
    """Sample one video into out_dir/<id>.npy; returns (video id, reason it was skipped or None)."""
    cfg = job.cfg
    try:
        frames = sample_frames(job.raw_dir / job.relative_path, cfg.num_frames, cfg.size, cfg.backend,
                               cfg.reencode_fps, job.ffmpeg, job.candidates)
    except VideoError as e:
        return job.video_id, f"{job.relative_path}: {e.reason}"
    np.save(job.out_dir / f"{job.video_id}.npy", frames)
    return job.video_id, None


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list[tuple[str, str | None]]:
    bar = functools.partial(tqdm, total=len(jobs), desc="frames", unit="video", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        return list(bar(map(_extract_one, jobs)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(bar(pool.map(_extract_one, jobs)))


def decoder_toolchain(backend: str, ffmpeg: str) -> dict[str, str]:
    """Which decoder made the frames."""
    if backend == "decord":
        import decord

        return {"backend": "decord", "decord": decord.__version__}
    return {"backend": "ffmpeg", **toolchain(ffmpeg)}


def extract_frames(raw_dir: Path, annotations: Annotations, out_dir: Path, cfg: FramesConfig, *, ffmpeg: str,
                   progress: bool = True) -> dict:
    """Sample every video the annotations name (train and test) into out_dir/<video id>.npy.

    Training videos get `cfg.train_candidates` frames per segment ((T * K, H, W, 3)), test videos
    the segment centres. out_dir/sampling.json says so, and which decoder made the frames.
    A missing, empty or corrupt video never stops the stage: it is listed with its reason in
    out_dir/skipped.json ({"count": n, "skipped": [{"video_id", "reason"}]}). Returns counts.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    train = set(annotations.split_videos("train"))
    video_ids = list(dict.fromkeys(annotations.split_videos("train") + annotations.split_videos("test")))
    sampling = {"num_frames": cfg.num_frames, "train_candidates": cfg.train_candidates,
                "decoder": decoder_toolchain(cfg.backend, ffmpeg)}
    (out_dir / "sampling.json").write_text(json.dumps(sampling, indent=1) + "\n")
    jobs = [_Job(v, raw_dir, annotations.videos[v], out_dir, cfg, ffmpeg, cfg.train_candidates if v in train else 1)
            for v in video_ids]
    results = _run_jobs(jobs, cfg.workers, progress)
    skipped = [{"video_id": video_id, "reason": reason} for video_id, reason in results if reason is not None]
    (out_dir / "skipped.json").write_text(json.dumps({"count": len(skipped), "skipped": skipped}, indent=1) + "\n")
    return {"videos": len(jobs), "sampled": len(jobs) - len(skipped), "skipped": len(skipped),
            "num_frames": cfg.num_frames, "size": cfg.size, "backend": cfg.backend}
