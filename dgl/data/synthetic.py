"""The synthetic text-video benchmark: coloured shapes that stay, move, change, appear and pass.

An image-text model knows colours and shapes but not time. Every order-sensitive video of the
test split, and of the training split, has a time-reversed twin (the same frames backwards) whose
captions say the opposite ("ends on the right" / "ends on the left"), so a model that ignores
frame order cannot tell the pair apart, and training can use each twin as the other's hard
negative (train.sampler=twins). Videos are drawn with PIL, encoded to H.264 mp4 by ffmpeg and annotated in
MSR-VTT's own format, so every later stage reads them exactly as it reads real data.

Words, caption templates and layout numbers live in synthetic_vocab.yaml. The plan (which videos
exist and what they show) is dgl/data/synthetic_scenes.py, their frames dgl/data/synthetic_render.py;
this module encodes and writes them. Everything is seeded: the same config gives the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import json
import multiprocessing
import subprocess
from pathlib import Path

import numpy as np

from dgl.checksums import file_checksums, write_manifest
from dgl.cli import progress_bar
from dgl.data.synthetic_render import render_frames
from dgl.data.synthetic_scenes import KEY, Scene, plan_scenes
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe, toolchain
from dgl.settings import SyntheticConfig
from dgl.typed_yaml import build


def encode_mp4(frames: np.ndarray, fps: int, path: Path, ffmpeg: str = "pinned") -> None:
    """Encode (T, H, W, 3) uint8 RGB frames to an H.264 mp4, byte-identical run to run for one ffmpeg
    build: one encoder thread (x264's output depends on its thread count) and no timestamps.
    Lossless (-qp 0, on the 4:2:0 frames): a time-reversed twin then decodes to exactly its video's
    frames backwards, so a method blind to frame order gives the twins one feature, not two that
    differ by codec noise (lossy x264 frames of a twin pair differ by up to 45 levels)."""
    _, height, width, _ = frames.shape
    command = [
        ffmpeg_exe(ffmpeg), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-an", "-c:v", "libx264", "-preset", "veryfast", "-qp", "0", "-pix_fmt", "yuv420p", "-threads", "1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        str(path),
    ]  # fmt: skip
    result = subprocess.run(command, input=frames.tobytes(), capture_output=True)
    stderr = result.stderr.decode(errors="replace").strip()
    if result.returncode != 0 or stderr or not path.is_file():
        reason = stderr.splitlines()[-1] if stderr else "no output file"
        raise UserError(
            f"{path}: ffmpeg failed to encode (exit {result.returncode}: {reason}); "
            f"check that {command[0]} runs and has libx264"
        )


def _write_video(job: tuple[Scene, SyntheticConfig, Path, str]) -> str:
    scene, cfg, videos_dir, ffmpeg = job
    encode_mp4(render_frames(scene, cfg), cfg.fps, videos_dir / f"{scene.video_id}.mp4", ffmpeg)
    return scene.video_id


def _render_all(
    scenes: list[Scene], cfg: SyntheticConfig, videos_dir: Path, workers: int, progress: bool, ffmpeg: str
) -> None:
    jobs = [(scene, cfg, videos_dir, ffmpeg) for scene in scenes]
    bar = functools.partial(progress_bar, progress, total=len(jobs), desc="synthetic videos", unit="video")
    if workers <= 1:
        for _ in bar(map(_write_video, jobs)):
            pass
        return
    context = multiprocessing.get_context("spawn")  # safe whatever threads the caller has started
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for _ in bar(pool.map(_write_video, jobs, chunksize=max(1, len(jobs) // (8 * workers)))):
            pass


def _write_annotations(scenes: list[Scene], out_dir: Path) -> None:
    """MSRVTT_data.json (+ event and twin per video) and MSR-VTT's train and JSFusion test lists."""
    videos = [{"video_id": s.video_id, "split": s.split, "event": s.category, "twin": s.twin} for s in scenes]
    captions = [(s.video_id, caption) for s in scenes for caption in s.captions()]
    sentences = [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(captions)]
    (out_dir / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}, indent=1) + "\n")
    with open(out_dir / "MSRVTT_train.9k.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_id"])
        writer.writerows([s.video_id] for s in scenes if s.split == "train")
    with open(out_dir / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        test_captions = [(s.video_id, c) for s in scenes if s.split == "test" for c in s.captions()]
        for i, (video_id, caption) in enumerate(test_captions):
            writer.writerow([f"ret{i}", video_id.replace("video", "msr"), video_id, caption])


def generate(out_dir: Path, cfg: SyntheticConfig, *, ffmpeg: str, workers: int = 2, progress: bool = True) -> None:
    """Render the benchmark into the empty folder `out_dir`: videos/, annotations, manifest.json
    (every file's sha256 and the ffmpeg that encoded the videos)."""
    cfg = build(SyntheticConfig, dataclasses.asdict(cfg), KEY)  # bounds and validate(), also for hand-built configs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: not empty; the synthetic dataset is written into an empty folder")
    scenes = plan_scenes(cfg)
    (out_dir / "videos").mkdir()
    _render_all(scenes, cfg, out_dir / "videos", workers, progress, ffmpeg)
    _write_annotations(scenes, out_dir)
    write_manifest(out_dir, {"toolchain": toolchain(ffmpeg), "files": file_checksums(out_dir)})
