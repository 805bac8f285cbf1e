"""Frame sampling on real mp4 files made here with ffmpeg: which frames, what size, and bad videos
that are reported in skipped.json without stopping the stage."""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from pathlib import Path

import numpy as np
import pytest

from dgl.data.annotations import Annotations, Caption
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe
from dgl.frames.extract import BACKENDS, extract_frames, sample_frames
from dgl.frames.ffmpeg_decode import _decode_picked, _select_expr
from dgl.frames.ffmpeg_seek import _decode_seeks, _seek_plan, read_packets
from dgl.frames.mp4_index import _Track
from dgl.frames.sampling import VideoError, segment_candidates, uniform_indices
from dgl.frames.store import FrameStore, resize_center_crop
from helpers import ffmpeg, group

GRAY_STEP = 10  # frame i is painted gray level GRAY_STEP * i


def encode(frames: np.ndarray, path: Path, fps: int = 8, timing: list[str] = ()) -> Path:
    """(N, H, W, 3) uint8 frames → a near-lossless H.264 mp4 (`timing`: extra output options)."""
    _, height, width, _ = frames.shape
    ffmpeg(
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "pipe:",
        *timing,
        "-c:v",
        "libx264",
        "-crf",
        "4",
        "-pix_fmt",
        "yuv420p",
        str(path),
        stdin=frames.tobytes(),
    )
    return path


def make_testsrc(path: Path, seconds: float = 2, size: str = "64x48", fps: int = 8) -> Path:
    """A small real video (ffmpeg's test pattern)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size={size}:rate={fps}:duration={seconds}",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(path),
    )
    return path


def index_video(path: Path, frame_count: int, fps: int = 8, timing: list[str] = ()) -> Path:
    """A 64x48 video whose frame i is uniformly gray at level GRAY_STEP * i."""
    levels = (np.arange(frame_count) * GRAY_STEP).astype(np.uint8)
    return encode(np.broadcast_to(levels[:, None, None, None], (frame_count, 48, 64, 3)).copy(), path, fps, timing)


def frame_indices(frames: np.ndarray) -> list[int]:
    """Which source frame each sampled frame is, read back from its gray level."""
    return [round(float(frame.mean()) / GRAY_STEP) for frame in frames]


def counter_video(path: Path, frame_count: int, fps: int = 25, gop: int = 250) -> Path:
    """A 64x48 video of up to 625 frames whose frame i is one colour: red 10 * (i % 25), green 10 * (i // 25);
    a keyframe every `gop` frames."""
    i = np.arange(frame_count)
    colours = np.stack([i % 25, i // 25, np.zeros_like(i)], axis=1).astype(np.uint8) * GRAY_STEP
    return encode(
        np.broadcast_to(colours[:, None, None, :], (frame_count, 48, 64, 3)).copy(), path, fps, ["-g", str(gop)]
    )


def counter_indices(frames: np.ndarray) -> list[int]:
    """Which source frame each frame of a `counter_video` is."""
    red, green = frames[..., 0].mean(axis=(1, 2)), frames[..., 1].mean(axis=(1, 2))
    return [round(r / GRAY_STEP) + 25 * round(g / GRAY_STEP) for r, g in zip(red, green, strict=True)]


def faststart_testsrc(path: Path, seconds: float = 3, fps: int = 25) -> Path:
    """A test pattern mp4 with its index (moov) at the front, as streaming sites serve them."""
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size=64x48:rate={fps}:duration={seconds}",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        str(path),
    )
    return path


def cut(source: Path, dest: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


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
    annotations = Annotations(
        videos={v: f"videos/{v}.mp4" for v in ids},
        train=tuple(Caption(v, f"caption of {v}") for v in ids[:4]),
        test=tuple(Caption(v, f"caption of {v}") for v in ids[4:]),
    )
    return raw, annotations


@pytest.mark.parametrize("backend", BACKENDS)
def test_extract_frames_skips_bad_videos_and_samples_the_rest(tmp_path, raw_with_bad_videos, backend):
    raw, annotations = raw_with_bad_videos
    out = tmp_path / "frames"
    out.mkdir()
    cfg = group("frames", num_frames=4, size=32, backend=backend, workers=2, train_candidates=1)
    summary = extract_frames(raw, annotations, out, cfg, ffmpeg="pinned", image_size=32, progress=False)
    assert summary == {
        "videos": 7,
        "sampled": 3,
        "skipped": 4,
        "num_frames": 4,
        "size": 32,
        "backend": backend,
        "image_size": 32,
        "codec": "raw",
        "bytes": 3 * 4 * 3 * 32 * 32,
    }
    store = FrameStore(out, "frames")
    assert list(store.videos) == ["good0", "good1", "good2"]
    for name in ("good0", "good1", "good2"):  # short side 32 (32x43), centre-cropped to 32x32
        assert np.array_equal(
            store.read(store.rows_of(name)),
            resize_center_crop(sample_frames(raw / f"videos/{name}.mp4", 4, 32, backend), 32),
        )
    skipped = json.loads((out / "skipped.json").read_text())
    reasons = {s["video_id"]: s["reason"] for s in skipped["skipped"]}
    assert skipped["count"] == 4 and set(reasons) == {"truncated", "empty", "text", "absent"}
    assert reasons["absent"] == "videos/absent.mp4: file not found"
    assert reasons["empty"] == "videos/empty.mp4: empty file (0 bytes)"
    assert all(reasons[v].startswith(f"videos/{v}.mp4: ") and len(reasons[v]) < 200 for v in ("truncated", "text"))
    assert sorted(p.name for p in out.iterdir()) == [
        "frames-00000.bin",
        "index.npy",
        "sampling.json",
        "skipped.json",
        "store.json",
    ]
    sampling = json.loads((out / "sampling.json").read_text())
    assert sampling["num_frames"] == 4 and sampling["train_candidates"] == 1
    toolchain = sampling["decoder"]
    assert toolchain["backend"] == backend
    if backend == "ffmpeg":  # which binary decoded, by version and content, never by machine path
        assert toolchain["ffmpeg"] == "pinned" and toolchain["version"].startswith("ffmpeg version")
        assert len(toolchain["sha256"]) == 64 and ffmpeg_exe() not in json.dumps(toolchain)


def test_the_select_expression_picks_exactly_the_segment_candidates():
    # ffmpeg's expression language is Python's here (doubles, `/` is true division)
    names = {"lt": operator.lt, "ceil": math.ceil}
    for frame_count in [*range(1, 80), 99, 100, 101, 250, 1001, 7500]:
        for num_frames, candidates in ((1, 1), (4, 3), (8, 1), (8, 3), (12, 1), (64, 1), (12, 15)):
            code = compile(_select_expr(frame_count, num_frames, candidates), "select", "eval")
            picked = [n for n in range(frame_count) if eval(code, names | {"n": n})]  # noqa: S307 (our own text)
            assert picked == sorted(set(segment_candidates(frame_count, num_frames, candidates).tolist()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", ["mp4", "mkv"])  # the frame count from the mp4 index / from a demux run
def test_a_long_video_gives_the_candidates_of_each_segment(tmp_path, backend, container):
    video = counter_video(tmp_path / f"counter.{container}", 400)
    frames = sample_frames(video, num_frames=12, size=32, backend=backend, candidates=3)
    assert counter_indices(frames) == segment_candidates(400, 12, 3).tolist()


def test_the_ffmpeg_backend_passes_only_the_picked_frames_out_of_ffmpeg(tmp_path):
    video = counter_video(tmp_path / "counter.mp4", 400)
    frames, count = _decode_picked(video, ffmpeg_exe(), 32, None, 400, num_frames=4, candidates=1)
    assert count == 400 and frames.shape == (4, 32, 43, 3)  # memory does not grow with the video's length
    assert counter_indices(frames) == uniform_indices(400, 4).tolist()


def test_a_wrong_frame_count_guess_is_corrected_by_decoding_again(tmp_path, monkeypatch):
    video = counter_video(tmp_path / "counter.mp4", 100)
    # an index that lies
    monkeypatch.setattr("dgl.frames.ffmpeg_decode.mp4_video_track", lambda path: _Track(60, 2.4, 1))
    assert counter_indices(sample_frames(video, 4, 32)) == uniform_indices(100, 4).tolist()


# ---- seeking: a long video's few picks are decoded from the keyframe before each ----------------------


def pattern_video(path: Path, frame_count: int, *options: str, vf: str | None = None) -> Path:
    """A moving test pattern (each frame differs from the last), 64x48 at 25 fps, H.264 with `options`."""
    filters = ["-vf", vf] if vf else []
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=64x48:rate=25:duration={frame_count / 25}",
        *filters,
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        *options,
        str(path),
    )
    return path


def remux(source: Path, dest: Path, *input_options: str) -> Path:
    ffmpeg(*input_options, "-i", str(source), "-c", "copy", str(dest))
    return dest


SEEK_CASES = {
    "B-frames, 8 references": lambda d: pattern_video(d / "b.mp4", 120, "-g", "12", "-bf", "3", "-refs", "8"),
    "variable frame rate": lambda d: pattern_video(
        d / "vfr.mp4", 120, "-g", "12", "-fps_mode", "vfr", vf="setpts='if(lt(N,60),N,60+3*(N-60))/25/TB'"
    ),
    # a hard cut every 17 frames: x264 puts an I frame there, a keyframe (IDR) only 30 frames after the last
    "I frames that are not keyframes": lambda d: pattern_video(
        d / "cuts.mp4", 120, "-g", "60", "-x264-params", "min-keyint=30", vf="negate=enable='lt(mod(n,34),17)'"
    ),
    "an edit list that hides the first frames": lambda d: remux(
        pattern_video(d / "b.mp4", 120, "-g", "12"), d / "cut.mp4", "-ss", "1.3"
    ),
    "mkv": lambda d: remux(pattern_video(d / "b.mp4", 120, "-g", "12"), d / "b.mkv"),
}


@pytest.mark.parametrize("case", SEEK_CASES)
def test_seeking_to_any_frame_gives_the_single_pass_frame_byte_for_byte(tmp_path, case):
    """Frame n by its timestamp, decoded from the keyframe before it, is frame n of decoding every frame."""
    video, exe = SEEK_CASES[case](tmp_path), ffmpeg_exe()
    packets = read_packets(video, exe)
    every, count = _decode_picked(video, exe, 32, None, packets.frames, packets.frames, 1)
    assert count == packets.frames and len(every) == count
    if case.startswith("an edit list"):
        assert count < len(packets.key)  # packets decoded but not shown
    seeks = [seek for n in range(count) for seek in _seek_plan(packets, np.array([n]))]
    assert len(seeks) == count and len({seek.start for seek in seeks}) > 3  # one seek per frame, from several keyframes
    seeked = np.concatenate(
        [_decode_seeks(video, exe, 32, seeks[i : i + 8], packets.time_base) for i in range(0, count, 8)]
    )
    assert seeked.shape == every.shape and np.array_equal(seeked, every)


def single_pass(video: Path, monkeypatch, **kwargs) -> np.ndarray:
    """sample_frames without seeking."""
    with monkeypatch.context() as patch:
        patch.setattr("dgl.frames.ffmpeg_decode.sample_seeking", lambda *args: None)
        return sample_frames(video, **kwargs)


def forbid_the_single_pass(monkeypatch) -> None:
    def forbidden(*args):
        raise AssertionError("the single pass ran")

    monkeypatch.setattr("dgl.frames.ffmpeg_decode._decode_picked", forbidden)


def test_a_long_video_is_sampled_by_seeking_with_the_single_pass_frames(tmp_path, monkeypatch):
    pattern = pattern_video(tmp_path / "pattern.mp4", 400, "-g", "10")  # 40 keyframes for 36 picks
    counter = counter_video(tmp_path / "counter.mp4", 400, gop=10)
    expected = single_pass(pattern, monkeypatch, num_frames=12, size=32, candidates=3)
    forbid_the_single_pass(monkeypatch)
    assert np.array_equal(sample_frames(pattern, num_frames=12, size=32, candidates=3), expected)
    frames = sample_frames(counter, num_frames=12, size=32, candidates=3)
    assert counter_indices(frames) == segment_candidates(400, 12, 3).tolist()


@pytest.mark.parametrize("fault", ["an open GOP (keyframes with leading frames)", "timestamps no frame has"])
def test_where_seeking_fails_the_single_pass_gives_the_frames(tmp_path, monkeypatch, fault):
    if fault.startswith("an open GOP"):
        video = pattern_video(tmp_path / "open.mp4", 400, "-g", "10", "-x264-params", "open-gop=1")
    else:
        video = pattern_video(tmp_path / "long.mp4", 400, "-g", "10")

        def shifted(path: Path, exe: str):
            packets = read_packets(path, exe)
            return dataclasses.replace(packets, pts=packets.pts + 1)

        monkeypatch.setattr("dgl.frames.ffmpeg_decode.read_packets", shifted)
    expected = single_pass(video, monkeypatch, num_frames=4, size=32)
    passes = []
    monkeypatch.setattr(
        "dgl.frames.ffmpeg_decode._decode_picked", lambda *args: passes.append(args) or _decode_picked(*args)
    )
    assert np.array_equal(sample_frames(video, num_frames=4, size=32), expected)
    assert len(passes) == 1  # seeking was tried, and left it to the single pass


def test_a_truncated_long_video_is_skipped_where_it_would_be_seeked(tmp_path):
    whole = pattern_video(tmp_path / "whole.mp4", 500, "-g", "25", "-movflags", "+faststart")
    assert sample_frames(whole, num_frames=4, size=32).shape == (4, 32, 43, 3)
    with pytest.raises(VideoError, match="^truncated: the file ends before the frames its index lists"):
        sample_frames(cut(whole, tmp_path / "cut.mp4"), num_frames=4, size=32)


def _bad_videos(folder: Path) -> dict[str, Path]:
    """Hand-made broken files, by what is wrong with them."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = faststart_testsrc(folder / "whole.mp4")
    (folder / "text.mp4").write_text("this is not a video\n")
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", str(folder / "audio.mp4"))
    return {
        "not a video": folder / "text.mp4",
        "truncated, index at the end": cut(make_testsrc(folder / "plain.mp4", seconds=3), folder / "cut_plain.mp4"),
        "truncated, index at the front": cut(whole, folder / "cut_faststart.mp4"),
        "no video stream": folder / "audio.mp4",
    }


# what each backend says, in words (decord does not tell a cut file without its index from a non-video)
REASONS = {
    "ffmpeg": {
        "not a video": "not an mp4",
        "truncated, index at the end": "truncated",
        "truncated, index at the front": "truncated",
        "no video stream": "no video stream",
    },
    "decord": {
        "not a video": "not a video file",
        "truncated, index at the end": "not a video file, or a damaged",
        "truncated, index at the front": "truncated or damaged",
        "no video stream": "no video stream",
    },
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_videos_raise_a_reason_in_words_and_decord_stays_quiet(tmp_path, backend, capfd):
    for what, path in _bad_videos(tmp_path).items():
        with pytest.raises(VideoError) as caught:
            sample_frames(path, 4, 32, backend=backend)
        reason = caught.value.reason
        assert REASONS[backend][what] in reason, (what, reason)
        assert len(reason) < 160 and "\n" not in reason
        assert not re.search(r"Check failed|0x[0-9a-f]{6}|\.cc:\d|filter|\[s\d\]|Parsed_", reason), (what, reason)
    assert capfd.readouterr().err == ""  # decord's own `ERROR opening ...` lines are caught


def test_a_truncated_video_with_its_index_at_the_front_is_skipped_not_sampled_from_what_is_left(tmp_path):
    raw = tmp_path / "raw"
    (raw / "videos").mkdir(parents=True)
    cut(faststart_testsrc(tmp_path / "whole.mp4"), raw / "videos" / "cut.mp4")
    annotations = Annotations(videos={"cut": "videos/cut.mp4"}, train=(Caption("cut", "a test pattern"),), test=())
    out = tmp_path / "frames"
    out.mkdir()
    cfg = group("frames", num_frames=4, size=32, backend="ffmpeg", workers=1, train_candidates=1)
    assert extract_frames(raw, annotations, out, cfg, ffmpeg="pinned", image_size=32, progress=False)["skipped"] == 1
    (skip,) = json.loads((out / "skipped.json").read_text())["skipped"]
    assert skip["reason"].startswith("videos/cut.mp4: truncated: the file ends before the frames its index lists")
    assert FrameStore(out, "frames").videos == {}


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"num_frames": 0}, "frames.num_frames = 0 is out of range"),
        ({"backend": "opencv"}, "frames.backend = 'opencv' is not allowed; use one of: ffmpeg, decord"),
        ({"reencode_fps": 0}, "frames.reencode_fps = 0.0 is out of range"),
    ],
)
def test_frames_params_are_checked(raw, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        group("frames", **raw)
