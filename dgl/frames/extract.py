"""The frames stage: every annotated video sampled (`sample_frames`, with the backend that
`frames.backend` names in BACKENDS), its frames cropped as the backbone takes them, encoded and
written to the frame store (dgl/frames/store.py); a video that cannot be sampled is listed in
skipped.json with its reason. Which frames: dgl/frames/sampling.py. Two backends:

- `ffmpeg` (default, dgl/frames/ffmpeg_decode.py): one ffmpeg process per video lets through only
  the picked frames, resized inside its filter graph; a long video's few picks are decoded by
  seeking to the keyframe before each (dgl/frames/ffmpeg_seek.py).
- `decord` (dgl/frames/decord_decode.py): decodes up to the picked frames with the FFmpeg libraries
  it ships and resizes them with PIL; pixels differ slightly from ffmpeg's.

Either way a skipped video's reason is a few words (`truncated: ...`, `no video stream`), with the
decoder's own message in brackets, never a filter graph or an assertion.

The frames stage runs `workers` videos at a time from a thread pool: the decoding runs in ffmpeg
processes or in decord's native code, which releases the GIL, so threads parallelise it without
the start-up cost of Python worker processes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgl.cli import progress_bar
from dgl.data.annotations import Annotations, id_path
from dgl.errors import UserError
from dgl.ffmpeg import toolchain
from dgl.frames.decord_decode import sample_decord
from dgl.frames.ffmpeg_decode import sample_ffmpeg
from dgl.frames.sampling import VideoError
from dgl.frames.store import Codec, StoreWriter, codec_from, resize_center_crop
from dgl.settings import FramesConfig

# frames.backend -> its sampler: (path, num_frames, size, reencode_fps, ffmpeg binary, candidates) -> frames
BACKENDS: dict[str, Callable[..., np.ndarray]] = {"ffmpeg": sample_ffmpeg, "decord": sample_decord}


def sample_frames(
    path: Path,
    num_frames: int,
    size: int,
    backend: str = "ffmpeg",
    reencode_fps: float | None = None,
    ffmpeg: str = "pinned",
    candidates: int = 1,
) -> np.ndarray:
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
        frames = sample_frames(
            job.raw_dir / job.relative_path,
            cfg.num_frames,
            cfg.size,
            cfg.backend,
            cfg.reencode_fps,
            job.ffmpeg,
            job.candidates,
        )
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


def extract_frames(
    raw_dir: Path,
    annotations: Annotations,
    out_dir: Path,
    cfg: FramesConfig,
    *,
    ffmpeg: str,
    image_size: int,
    progress: bool = True,
) -> dict:
    """Sample every video the annotations name (train and test) into a frame store in out_dir
    (dgl/frames/store.py): each frame resized and centre-cropped to `image_size` (the backbone's
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
    sampling = {
        "num_frames": cfg.num_frames,
        "train_candidates": cfg.train_candidates,
        "decoder": decoder_toolchain(cfg.backend, ffmpeg),
    }
    (out_dir / "sampling.json").write_text(json.dumps(sampling, indent=1) + "\n")
    jobs = [
        _Job(
            v, raw_dir, annotations.videos[v], cfg, ffmpeg, cfg.train_candidates if v in train else 1, image_size, codec
        )
        for v in video_ids
    ]
    store = StoreWriter(out_dir, codec, (3, image_size, image_size))
    skipped = []
    for video_id, encoded, reason in _run_jobs(jobs, cfg.workers, progress):
        if reason is None:
            store.add(video_id, encoded)
        else:
            skipped.append({"video_id": video_id, "reason": reason})
    meta = store.close()
    (out_dir / "skipped.json").write_text(json.dumps({"count": len(skipped), "skipped": skipped}, indent=1) + "\n")
    return {
        "videos": len(jobs),
        "sampled": len(jobs) - len(skipped),
        "skipped": len(skipped),
        "num_frames": cfg.num_frames,
        "size": cfg.size,
        "backend": cfg.backend,
        "image_size": image_size,
        "codec": cfg.codec,
        "bytes": sum(shard["bytes"] for shard in meta["shards"]),
    }
