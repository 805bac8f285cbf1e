"""Frame sampling on real mp4 files made here with ffmpeg: which frames, what size, and bad videos
that are reported in skipped.json without stopping the stage."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import group
from dgl.data.annotations import Annotations, Caption
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe
from dgl.video import BACKENDS, VideoError, extract_frames, sample_frames, segment_candidates, uniform_indices

GRAY_STEP = 10  # frame i is painted gray level GRAY_STEP * i


def encode(frames: np.ndarray, path: Path, fps: int = 8, timing: list[str] = ()) -> Path:
    """(N, H, W, 3) uint8 frames → a near-lossless H.264 mp4 (`timing`: extra output options)."""
    _, height, width, _ = frames.shape
    subprocess.run([
        ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:", *timing,
        "-c:v", "libx264", "-crf", "4", "-pix_fmt", "yuv420p", str(path),
    ], input=frames.tobytes(), check=True)  # fmt: skip
    return path


def make_testsrc(path: Path, seconds: float = 2, size: str = "64x48", fps: int = 8) -> Path:
    """A small real video (ffmpeg's test pattern)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def index_video(path: Path, frame_count: int, fps: int = 8, timing: list[str] = ()) -> Path:
    """A 64x48 video whose frame i is uniformly gray at level GRAY_STEP * i."""
    levels = (np.arange(frame_count) * GRAY_STEP).astype(np.uint8)
    return encode(np.broadcast_to(levels[:, None, None, None], (frame_count, 48, 64, 3)).copy(), path, fps, timing)


def frame_indices(frames: np.ndarray) -> list[int]:
    """Which source frame each sampled frame is, read back from its gray level."""
    return [round(float(frame.mean()) / GRAY_STEP) for frame in frames]


def test_segment_candidates_split_each_segment_and_keep_its_centre_in_the_middle():
    assert segment_candidates(24, 4, 3).tolist() == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]
    for frames, segments in ((24, 4), (20, 8), (100, 12), (7, 3)):
        middle = segment_candidates(frames, segments, 3).reshape(segments, 3)[:, 1]
        assert middle.tolist() == uniform_indices(frames, segments).tolist()
    assert segment_candidates(3, 6, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    assert segment_candidates(24, 4, 1).tolist() == uniform_indices(24, 4).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_videos_keep_candidate_frames_per_segment(tmp_path, backend):
    video = index_video(tmp_path / "index.mp4", 24)
    frames = sample_frames(video, num_frames=4, size=32, backend=backend, candidates=3)
    assert frame_indices(frames) == segment_candidates(24, 4, 3).tolist()


def test_uniform_indices_are_segment_centres_and_short_videos_repeat_the_last():
    assert uniform_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert uniform_indices(8, 8).tolist() == list(range(8))
    assert uniform_indices(3, 6).tolist() == [0, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_the_centre_frame_of_each_segment(tmp_path, backend):
    video = index_video(tmp_path / "index.mp4", 24)
    frames = sample_frames(video, num_frames=6, size=32, backend=backend)
    assert frames.shape == (6, 32, 43, 3) and frames.dtype == np.uint8  # 64x48 → short side 32
    assert frame_indices(frames) == [2, 6, 10, 14, 18, 22]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_variable_frame_rate_video_is_sampled_by_frame_not_by_time(tmp_path, backend):
    fast_then_slow = ["-vf", "setpts='if(lt(N,12),N,12+6*(N-12))/30/TB'", "-fps_mode", "vfr"]  # 30 fps, then 5
    video = index_video(tmp_path / "vfr.mp4", 24, fps=30, timing=fast_then_slow)
    assert frame_indices(sample_frames(video, num_frames=6, size=32, backend=backend)) == [2, 6, 10, 14, 18, 22]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_video_with_fewer_frames_repeats_its_last(tmp_path, backend):
    video = index_video(tmp_path / "short.mp4", 5)
    frames = sample_frames(video, num_frames=8, size=48, backend=backend)
    assert frames.shape == (8, 48, 64, 3)
    assert frame_indices(frames) == [0, 1, 2, 3, 4, 4, 4, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_reencode_fps_samples_from_the_resampled_video(tmp_path, backend):
    video = index_video(tmp_path / "index.mp4", 24, fps=8)  # 3 s at 8 fps → 12 frames at 4 fps
    frames = sample_frames(video, num_frames=4, size=32, backend=backend, reencode_fps=4)
    expected = [2, 8, 14, 20]  # centres of 4 segments of the 12 frames kept, in source frames
    assert all(abs(got - want) <= 1 for got, want in zip(frame_indices(frames), expected, strict=True))


def test_portrait_videos_keep_their_aspect_ratio(tmp_path):
    video = make_testsrc(tmp_path / "portrait.mp4", seconds=1, size="48x64")
    assert sample_frames(video, num_frames=2, size=24).shape == (2, 32, 24, 3)


@pytest.fixture
def raw_with_bad_videos(tmp_path) -> tuple[Path, Annotations]:
    raw = tmp_path / "raw"
    good = [make_testsrc(raw / "videos" / f"good{i}.mp4") for i in range(3)]
    whole = good[0].read_bytes()
    (raw / "videos" / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (raw / "videos" / "empty.mp4").write_bytes(b"")
    (raw / "videos" / "text.mp4").write_text("this is not a video\n")
    ids = ["good0", "truncated", "good1", "empty", "text", "absent", "good2"]
    annotations = Annotations(videos={v: f"videos/{v}.mp4" for v in ids},
                              train=tuple(Caption(v, f"caption of {v}") for v in ids[:4]),
                              test=tuple(Caption(v, f"caption of {v}") for v in ids[4:]))
    return raw, annotations


@pytest.mark.parametrize("backend", BACKENDS)
def test_extract_frames_skips_bad_videos_and_samples_the_rest(tmp_path, raw_with_bad_videos, backend):
    raw, annotations = raw_with_bad_videos
    out = tmp_path / "frames"
    out.mkdir()
    cfg = group("frames", num_frames=4, size=32, backend=backend, workers=2, train_candidates=1)
    summary = extract_frames(raw, annotations, out, cfg, ffmpeg="pinned", progress=False)
    assert summary == {"videos": 7, "sampled": 3, "skipped": 4, "num_frames": 4, "size": 32, "backend": backend}
    for name in ("good0", "good1", "good2"):
        assert np.load(out / f"{name}.npy").shape == (4, 32, 43, 3)
    skipped = json.loads((out / "skipped.json").read_text())
    reasons = {s["video_id"]: s["reason"] for s in skipped["skipped"]}
    assert skipped["count"] == 4 and set(reasons) == {"truncated", "empty", "text", "absent"}
    assert reasons["absent"] == "videos/absent.mp4: file not found"
    assert reasons["empty"] == "videos/empty.mp4: empty file (0 bytes)"
    assert all(reasons[v].startswith(f"videos/{v}.mp4: ") and len(reasons[v]) < 200 for v in ("truncated", "text"))
    assert sorted(p.name for p in out.iterdir()) == ["good0.npy", "good1.npy", "good2.npy", "sampling.json",
                                                      "skipped.json"]
    sampling = json.loads((out / "sampling.json").read_text())
    assert sampling["num_frames"] == 4 and sampling["train_candidates"] == 1
    toolchain = sampling["decoder"]
    assert toolchain["backend"] == backend
    if backend == "ffmpeg":  # which binary decoded, by version and content, never by machine path
        assert toolchain["ffmpeg"] == "pinned" and toolchain["version"].startswith("ffmpeg version")
        assert len(toolchain["sha256"]) == 64 and ffmpeg_exe() not in json.dumps(toolchain)


def test_sample_frames_raises_video_error_for_a_non_video(tmp_path):
    (tmp_path / "x.mp4").write_text("hello")
    with pytest.raises(VideoError, match="ffmpeg exit"):
        sample_frames(tmp_path / "x.mp4", 4, 32)


@pytest.mark.parametrize("raw,needle", [
    ({"num_frames": 0}, "frames.num_frames = 0 is out of range"),
    ({"backend": "opencv"}, "frames.backend = 'opencv' is not allowed; use one of: ffmpeg, decord"),
    ({"reencode_fps": 0}, "frames.reencode_fps = 0.0 is out of range"),
])
def test_frames_params_are_checked(raw, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        group("frames", **raw)
