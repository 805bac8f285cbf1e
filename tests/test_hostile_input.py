"""What an attacker of the real-data path would try (issue 42): crafted and damaged videos, video ids
that are paths, cut or damaged archives, NaN params, cover art, oversized batches, zip entries Python
cannot unpack, a locked MLflow store, NaN weights, servers that lie or trickle. Each gets one line
(or a skipped video), and nothing outside the project's folders is read, written or trusted."""

from __future__ import annotations

import io
import json
import lzma
import os
import random
import re
import sqlite3
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_adapters import write_csv, write_msrvtt
from test_download import BLOB, server, sha256, zip_bytes  # noqa: F401 (server: the loopback fixture)
from test_video import faststart_testsrc, make_testsrc

import dgl.frames.extract
from dgl.data.adapters import load_annotations
from dgl.data.annotations import Annotations, Caption
from dgl.data.download import download
from dgl.data.extract import extract
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe
from dgl.frames.extract import extract_frames, sample_frames
from dgl.frames.mp4_index import mp4_video_track
from dgl.frames.sampling import VideoError
from dgl.frames.store import FrameStore
from helpers import ffmpeg, group


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def frames_of(raw: Path, videos: dict[str, bytes], tmp_path: Path, backend: str = "ffmpeg") -> dict:
    """Run the frames stage's worker on `videos` (id -> file bytes) beside one good video; its skipped.json."""
    (raw / "videos").mkdir(parents=True, exist_ok=True)
    make_testsrc(raw / "videos" / "good.mp4", seconds=1)
    for name, data in videos.items():
        (raw / "videos" / f"{name}.mp4").write_bytes(data)
    ids = ["good", *videos]
    annotations = Annotations(
        videos={v: f"videos/{v}.mp4" for v in ids}, train=(), test=tuple(Caption(v, f"caption of {v}") for v in ids)
    )
    out = tmp_path / "frames"
    out.mkdir()
    cfg = group("frames", num_frames=4, size=32, backend=backend, workers=2, train_candidates=1)
    summary = extract_frames(raw, annotations, out, cfg, ffmpeg="pinned", image_size=32, progress=False)
    assert summary["sampled"] == 1 and list(FrameStore(out, "frames").videos) == ["good"]
    return {s["video_id"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())["skipped"]}


# --- 1. a damaged mp4 is one skipped video, never the end of the stage ---------------------------------

FTYP = box(b"ftyp", b"isom\0\0\0\0")
VIDE = box(b"hdlr", bytes(8) + b"vide" + bytes(12))
STSZ = box(b"stsz", bytes(8) + struct.pack(">I", 10))


def test_crafted_mp4_indexes_are_skipped_videos_and_the_stage_goes_on(tmp_path):
    crafted = {
        # an empty mdhd as the index's last bytes: read past its end (an IndexError)
        "empty_mdhd": FTYP
        + box(b"moov", box(b"trak", box(b"mdia", VIDE + box(b"minf", box(b"stbl", STSZ)) + box(b"mdhd")))),
        # an index box that says it holds 465 GB in a 17 kB file (read whole: a MemoryError)
        "huge_moov": FTYP + struct.pack(">I4sQ", 1, b"moov", 465 * 10**9) + bytes(17_000),
        # a box larger than its parent
        "box_overflow": FTYP + box(b"moov", struct.pack(">I4s", 4096, b"trak") + bytes(16)),
    }
    reasons = frames_of(tmp_path / "raw", crafted, tmp_path)
    assert set(reasons) == set(crafted)
    assert reasons["empty_mdhd"] == "videos/empty_mdhd.mp4: damaged mp4 index: a box ends before its fields"
    assert reasons["huge_moov"].startswith(
        "videos/huge_moov.mp4: truncated or damaged: its index (moov) claims 465000000000 bytes"
    )
    assert "does not fit in its parent" in reasons["box_overflow"]


def test_any_fault_decoding_one_video_skips_it_and_only_a_setup_error_stops_the_stage(tmp_path, monkeypatch):
    def decoder(path: Path, *args) -> np.ndarray:
        if path.stem == "bad":
            raise MemoryError("cannot allocate 465 GB")
        return np.zeros((4, 32, 43, 3), np.uint8)

    monkeypatch.setitem(dgl.frames.extract.BACKENDS, "ffmpeg", decoder)
    reasons = frames_of(tmp_path / "raw", {"bad": b"x"}, tmp_path)
    assert reasons == {"bad": "videos/bad.mp4: unreadable (MemoryError: cannot allocate 465 GB)"}

    def no_ffmpeg(*args) -> np.ndarray:
        raise UserError("params: ffmpeg = system but there is no ffmpeg on PATH")

    monkeypatch.setitem(dgl.frames.extract.BACKENDS, "ffmpeg", no_ffmpeg)
    (tmp_path / "again").mkdir()
    with pytest.raises(UserError, match="no ffmpeg on PATH"):
        frames_of(tmp_path / "raw2", {}, tmp_path / "again")


# The boxes the index reader reads: a mutation of one of their sizes reaches every bound it checks.
_READ = {b"moov", b"trak", b"mdia", b"hdlr", b"minf", b"stbl", b"stsz", b"mdhd", b"stss"}
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        if size < 8 or start + size > end:
            return
        yield start, kind
        if kind in _CONTAINERS:
            yield from _boxes(data, start + 8, start + size)
        start += size


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Bit flips anywhere, a cut, or a box of the index given a wrong size (0, 1 with a 64-bit one, tiny, any)."""
    data = bytearray(data)
    kind = rng.choice(["flip", "cut", "size", "size"])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "cut":
        return bytes(data[: rng.randrange(8, len(data))])
    at = rng.choice([at for at, kind in _boxes(bytes(data)) if kind in _READ])
    size = rng.choice([0, 1, 8, 9, 12, rng.randrange(1 << 32)])
    struct.pack_into(">I", data, at, size)
    if size == 1:
        struct.pack_into(">Q", data, at + 8, rng.randrange(1 << 63))
    return bytes(data)


def _ffmpeg_rejects(path: Path) -> bool:
    """Does ffmpeg, decoding the whole video stream, exit non-zero or print an error?"""
    result = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path), "-map", "0:V:0", "-f", "null", "-"],
        capture_output=True,
        check=False,
    )
    return result.returncode != 0 or bool(result.stderr.strip())


@pytest.mark.slow
def test_fuzzed_mp4_files_never_crash_sampling_and_never_give_frames_ffmpeg_rejects(tmp_path):
    """120 seeded mutations of two real mp4 files (index at the end, and at the front): each is a
    VideoError or frames, and frames only where ffmpeg decodes the whole file without an error."""
    seeds = [make_testsrc(tmp_path / "plain.mp4", seconds=2), faststart_testsrc(tmp_path / "front.mp4", seconds=2)]
    rng = random.Random(42)
    outcomes = {"frames": 0, "skipped": 0}
    for n in range(120):
        video = tmp_path / f"mutant{n}.mp4"
        video.write_bytes(_mutate(rng.choice(seeds).read_bytes(), rng))
        try:
            sample_frames(video, num_frames=4, size=32)
        except VideoError as e:
            assert e.reason and "\n" not in e.reason and len(e.reason) < 200, (n, e.reason)
            outcomes["skipped"] += 1
            continue
        assert not _ffmpeg_rejects(video), f"mutant {n}: frames from a file ffmpeg rejects"
        outcomes["frames"] += 1
    assert min(outcomes.values()) >= 10, outcomes  # both outcomes well exercised


# --- 2. a video id is a file name, never a path ------------------------------------------------------

BAD_IDS = ["../../x/victim", "/abs/path", "..", "a\\b", "nul\x00byte", ""]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_video_id_that_is_a_path_is_one_line_naming_the_file_and_id(tmp_path, bad):
    write_msrvtt(tmp_path)
    data = json.loads((tmp_path / "MSRVTT_data.json").read_text())
    data["sentences"][0]["video_id"] = bad
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        load_annotations("msrvtt", tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'MSRVTT_data.json'}: video id {bad!r} is not a plain file name")
    assert "\n" not in str(caught.value)


def _vatex(raw: Path, bad: str) -> Path:
    (raw / "train_list.txt").write_text(f"{bad}\n")
    (raw / "test_list.txt").write_text("b\n")
    (raw / "ref_captions.json").write_text(json.dumps({bad: ["x"], "b": ["y"]}))
    return raw / "ref_captions.json"


def _lsmdc(raw: Path, bad: str) -> Path:
    (raw / "LSMDC16_annos_training.csv").write_text(f"{bad}\t1\t2\t3\t4\tHe smiles.\n")
    (raw / "LSMDC16_challenge_1000_publictect.csv").write_text("clip\t1\t2\t3\t4\tA train passes.\n")
    return raw / "LSMDC16_annos_training.csv"


def _activitynet(raw: Path, bad: str) -> Path:
    (raw / "train.json").write_text(json.dumps({bad: {"duration": 1, "timestamps": [], "sentences": ["a"]}}))
    (raw / "val_1.json").write_text(json.dumps({"v_b": {"duration": 1, "timestamps": [], "sentences": ["b"]}}))
    return raw / "train.json"


def _msrvtt_test_csv(raw: Path, bad: str) -> Path:
    write_msrvtt(raw)
    write_csv(raw / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], [["r", "m", bad, "s"]])
    return raw / "MSRVTT_JSFUSION_test.csv"


@pytest.mark.parametrize(
    "dataset,write", [("vatex", _vatex), ("lsmdc", _lsmdc), ("activitynet", _activitynet), ("msrvtt", _msrvtt_test_csv)]
)
def test_every_format_checks_its_ids_as_it_reads_them(tmp_path, dataset, write):
    source = write(tmp_path, "../../etc/victim")
    with pytest.raises(UserError, match=f"^{re.escape(str(source))}: video id '../../etc/victim' is not a plain"):
        load_annotations(dataset, tmp_path)


def test_the_path_helper_refuses_an_id_that_would_leave_its_folder(tmp_path):
    from dgl.data.annotations import id_path

    assert id_path(tmp_path, "video7", ".npy") == tmp_path / "video7.npy"
    assert id_path(tmp_path, "0001_Movie_00.00.51.926-00.00.54.129", ".avi").parent == tmp_path
    for bad in BAD_IDS:
        with pytest.raises(UserError, match="is not a plain file name"):
            id_path(tmp_path, bad, ".npy")


def test_the_frames_stage_writes_nothing_outside_its_folder_for_a_hand_made_bad_id(tmp_path):
    raw = tmp_path / "raw"
    make_testsrc(raw / "videos" / "victim.mp4", seconds=1)
    annotations = Annotations(videos={"../victim": "videos/victim.mp4"}, train=(), test=(Caption("../victim", "x"),))
    out = tmp_path / "frames"
    out.mkdir()
    with pytest.raises(UserError, match="video id '../victim' is not a plain file name"):
        extract_frames(
            raw,
            annotations,
            out,
            group("frames", num_frames=4, size=32, workers=1),
            ffmpeg="pinned",
            image_size=32,
            progress=False,
        )
    assert not (tmp_path / "victim.npy").exists()


# --- 3. an archive is trusted only when read to its end ------------------------------------------------


def _tar(entries: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FOUR = {
    f"videos/v{i}.mp4": random.Random(i).randbytes(3000) for i in range(4)
}  # incompressible: xz damage lands mid-way


def _cut_at_member(data: bytes) -> bytes:
    """The tar cut right after its second member (a block boundary: no half header to notice)."""
    return data[: 2 * (512 + 3072)]


def _damaged_header(data: bytes) -> bytes:
    third = 2 * (512 + 3072)
    return data[:third] + b"\xff" * 100 + data[third + 100 :]


def _damaged_xz(data: bytes) -> bytes:
    """64 bytes flipped in the third of the four members (the first ones read cleanly)."""
    packed = bytearray(lzma.compress(data))
    for i in range(len(packed) * 5 // 8, len(packed) * 5 // 8 + 64):
        packed[i] ^= 0x5A
    return bytes(packed)


@pytest.mark.parametrize(
    "name,damage",
    [
        ("cut.tar", _cut_at_member),
        ("header.tar", _damaged_header),
        ("flipped.tar.xz", _damaged_xz),
        ("cut.tar.gz", lambda data: __import__("gzip").compress(_cut_at_member(data))),
    ],
)
def test_a_cut_or_damaged_tar_is_refused_and_nothing_is_extracted(tmp_path, name, damage):
    archive = tmp_path / name
    archive.write_bytes(damage(_tar(FOUR)))
    with pytest.raises(UserError, match=f"^{re.escape(str(archive))}: cannot be extracted .*delete it and run again$"):
        extract(archive, tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no raw folder, no staging folder


def test_a_whole_tar_still_extracts_in_every_compression(tmp_path):
    for mode, name in (("w", "a.tar"), ("w:gz", "a.tar.gz"), ("w:xz", "a.tar.xz"), ("w:bz2", "a.tar.bz2")):
        (tmp_path / name).write_bytes(_tar(FOUR, mode))
        assert extract(tmp_path / name, tmp_path / name.replace(".", "_")) == list(FOUR)


# --- 4. NaN and inf pass no numeric check ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key,overrides",
    [
        ("train", {"lr": float("nan")}),
        ("eval", {"max_missing": float("nan")}),
        ("data", {"max_extract_gb": float("nan")}),
        ("data.synthetic", {"seconds": float("nan")}),
        ("train", {"grad_clip": float("inf")}),
        ("frames", {"reencode_fps": float("-inf")}),
    ],
)
def test_nan_and_inf_are_refused_for_every_numeric_key(key, overrides):
    ((name, value),) = overrides.items()
    with pytest.raises(UserError, match=f"^params: {re.escape(key)}.{name} = {value!r} must be a finite number$"):
        group(key, **overrides)


def test_yaml_nan_in_the_params_file_is_refused(tmp_path):
    from dgl.settings import load_params

    text = (Path(__file__).parents[1] / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(re.sub(r"(?m)^(  max_missing:) *[^ #\n]+", r"\1 .nan", text, count=1))
    with pytest.raises(UserError, match=r"^params: eval.max_missing = nan must be a finite number$"):
        load_params(tmp_path / "params.yaml")


# --- 5. decord: its count checked against the index, its memory bounded -----------------------------------


def test_decord_refuses_a_frame_count_the_mp4_index_contradicts(tmp_path, monkeypatch):
    video = make_testsrc(tmp_path / "v.mp4", seconds=2)
    real = mp4_video_track(video)
    monkeypatch.setattr("dgl.frames.decord_decode.mp4_video_track", lambda path: real._replace(frames=real.frames + 2))
    with pytest.raises(VideoError, match=f"decord counts {real.frames} frames, the mp4 index lists {real.frames + 2}"):
        sample_frames(video, 4, 32, backend="decord")


def test_decord_refuses_a_frame_above_its_pixel_budget_and_decodes_one_frame_at_a_time(tmp_path, monkeypatch):
    import decord

    video = make_testsrc(tmp_path / "v.mp4", seconds=2, size="64x48")
    batches = []
    original = decord.VideoReader.get_batch
    monkeypatch.setattr(decord.VideoReader, "get_batch", lambda self, i: batches.append(list(i)) or original(self, i))
    assert sample_frames(video, 4, 32, backend="decord", candidates=3).shape == (12, 32, 43, 3)
    assert max(map(len, batches)) == 1  # never more than one full-size frame at once
    monkeypatch.setattr("dgl.frames.decord_decode.DECORD_MAX_PIXELS", 64 * 48 - 1)
    with pytest.raises(
        VideoError, match="^64x48 pixels, more than the decord backend decodes .*frames.backend: ffmpeg"
    ):
        sample_frames(video, 4, 32, backend="decord")


# --- 6. cover art is not video ----------------------------------------------------------------------------


def _cover(tmp_path: Path) -> Path:
    cover = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=red:size=64x48", "-frames:v", "1", str(cover))
    return cover


@pytest.mark.parametrize("backend", ["ffmpeg", "decord"])
@pytest.mark.parametrize(
    "container,codecs", [("m4a", ["-c:a", "aac", "-c:v", "png"]), ("mp3", ["-c:a", "libmp3lame", "-c:v", "mjpeg"])]
)
def test_an_audio_file_with_cover_art_is_a_video_without_a_video_stream(tmp_path, backend, container, codecs):
    song = tmp_path / f"song.{container}"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=duration=2",
        "-i",
        str(_cover(tmp_path)),
        "-map",
        "0:a",
        "-map",
        "1:v",
        *codecs,
        "-disposition:v:0",
        "attached_pic",
        str(song),
    )
    with pytest.raises(VideoError, match="^no video stream|^broken metadata"):
        sample_frames(song, 4, 32, backend=backend)


# --- 7. batch size and process count ----------------------------------------------------------------------


def test_a_batch_larger_than_the_training_set_is_clamped_to_it():
    from dgl.train import batch_size_used

    cfg = group("train", batch_size=100_000_000)
    assert batch_size_used(cfg, videos=19, world=1) == 19
    assert batch_size_used(group("train", batch_size=8, accum_steps=2), videos=19, world=1) == 8
    assert batch_size_used(cfg, videos=19, world=2) == 18  # split evenly over the processes
    with pytest.raises(UserError, match="1 training videos cannot fill a batch"):
        batch_size_used(cfg, videos=1, world=1)


def test_more_processes_than_cores_or_gpus_is_one_line(monkeypatch):
    from dgl.distributed import check_nproc

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    check_nproc(2, torch.device("cpu"))
    with pytest.raises(
        UserError,
        match=r"^params: train.nproc = 1024 processes, but there are 2 CPU cores available "
        r"to this process; use train.nproc <= 2$",
    ):
        check_nproc(1024, torch.device("cpu"))
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(UserError, match="train.nproc = 2 processes, but there are 1 visible CUDA devices"):
        check_nproc(2, torch.device("cuda"))


# --- 8. the small ones ------------------------------------------------------------------------------------


def _zip_with_method(method: int, encrypted: bool = False) -> bytes:
    """A zip whose entry says it is compressed with `method` (9: Deflate64) or encrypted: as such a
    tool writes it, since Python's zipfile writes neither."""
    data = bytearray(zip_bytes({"MSRVTT_data.json": b"{}", "videos/v.mp4": b"x" * 100}))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local header, central directory
        at = data.find(signature)
        while at != -1:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + 6] == b"videos":
                (flags,) = struct.unpack_from("<H", data, at + flags_at)
                struct.pack_into("<HH", data, at + flags_at, flags | encrypted, method)
            at = data.find(signature, at + 4)
    return bytes(data)


@pytest.mark.parametrize(
    "method,encrypted,needle",
    [
        (9, False, "it is compressed with method 9 (e.g. 9 = Deflate64), which Python cannot unpack"),
        (0, True, "it is encrypted (password protected)"),
    ],
)
def test_a_zip_entry_python_cannot_unpack_is_one_line_before_anything_is_written(tmp_path, method, encrypted, needle):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_with_method(method, encrypted))
    with pytest.raises(
        UserError,
        match=f"^{re.escape(str(archive))}: cannot unpack entry 'videos/v.mp4': "
        f"{re.escape(needle)}; unpack the archive with a tool",
    ):
        extract(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert extract(archive, tmp_path / "raw", lambda name: name if name.endswith(".json") else None) == [
        "MSRVTT_data.json"
    ]  # an entry that is not selected is never read


def test_two_entries_flattened_to_one_name_are_refused(tmp_path):
    from dgl.data.sources import videos_in

    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"MSRVTT/videos/all/a/v.mp4": b"1", "MSRVTT/videos/all/v.mp4": b"2"}))

    def select(name: str) -> str | None:
        return "videos/v.mp4" if name.endswith("v.mp4") else None

    with pytest.raises(
        UserError,
        match="entries 'MSRVTT/videos/all/a/v.mp4' and 'MSRVTT/videos/all/v.mp4' would both "
        "be written to 'videos/v.mp4'",
    ):
        extract(archive, tmp_path / "raw", select)
    assert not (tmp_path / "raw").exists()
    assert videos_in("videos/all")("MSRVTT/videos/all/v.mp4") == "videos/v.mp4"


def test_a_206_without_a_validator_is_not_spliced_onto_the_part(server, tmp_path):  # noqa: F811
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = len(BLOB) // 2
    server.validator_on_206 = False
    assert download(url, tmp_path / "blob.bin", None, progress=False) == sha256(BLOB)
    assert server.statuses("blob.bin") == [200, 206, 200]  # cut; a 206 that does not say what it is; whole again


def test_a_part_without_a_validator_starts_over_instead_of_asking_for_a_range(server, tmp_path):  # noqa: F811
    server.validator = "none"  # a Content-Length, but nothing that tells this file from another of its size
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = len(BLOB) // 2
    assert download(url, tmp_path / "blob.bin", None, progress=False) == sha256(BLOB)
    assert server.ranges("blob.bin") == [None, None]


def test_a_server_that_trickles_bytes_is_given_up_on_at_the_deadline(server, tmp_path):  # noqa: F811
    server.trickle = 0.02
    url = server.serve("slow.bin", bytes(1000))
    with pytest.raises(UserError) as caught:
        download(url, tmp_path / "slow.bin", None, progress=False, timeout=5, deadline=0.5)
    message = str(caught.value)
    assert re.match(
        r"slow\.bin: download from .* took more than its 0.5 s \(still unfinished after \d+ bytes when its "
        r"time ran out; the server sends too slowly\); \d+ bytes kept in .*slow\.bin\.part: run again to "
        r"resume",
        message,
    ), message
    assert len(server.requests) == 1  # past its deadline, a download is not retried


def test_nan_weights_are_one_line_wherever_they_are_loaded(tmp_path, capsys):
    from dgl.checkpoint import Checkpoint
    from dgl.models.backbone import load_checkpoint

    model = torch.nn.Linear(2, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "clip.pt")
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path / 'clip.pt'))}: tensor weight holds NaN or inf; "):
        load_checkpoint(model, tmp_path / "clip.pt")

    checkpoint = Checkpoint(tmp_path / "train.pt", "fp")
    checkpoint.save({"epoch": 1, "weights": state, "mlflow_run_id": "r1"})
    assert checkpoint.load() is None and checkpoint.abandoned and checkpoint.abandoned_run_id == "r1"
    assert (
        "train.pt: its weights hold NaN or inf (e.g. weight); ignored, training starts afresh"
        in capsys.readouterr().err
    )


def test_nan_in_trained_weights_is_one_line_at_evaluation(tmp_path, monkeypatch):
    from dgl import artifacts
    from dgl.settings import load_params

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    method = torch.nn.Linear(2, 2)
    info = {"method": "m", "backbone_sha256": "b", "parameters": {}, "validation": {}}
    (tmp_path / "model.json").write_text(json.dumps(info))
    torch.save({"weight": torch.full((2, 2), float("nan")), "bias": torch.zeros(2)}, tmp_path / "weights.pt")
    monkeypatch.setattr(artifacts, "load_backbone", lambda d: (None, {"sha256": "b"}))
    monkeypatch.setattr(artifacts, "build_method", lambda *args: method)
    monkeypatch.setattr(artifacts, "trained_config", lambda *args: params.model)
    with pytest.raises(UserError, match=r"weights.pt: the weights hold NaN or inf \(e.g. weight\); rebuild it with"):
        artifacts.load_trained(tmp_path, tmp_path, params.model, num_frames=4)


def test_a_locked_or_read_only_sqlite_store_is_our_line_only_with_sqlite_advice(tmp_path, capsys):
    import sqlalchemy.exc

    from dgl.tracking.store import reported

    db = tmp_path / "mlflow.db"
    for words, advice in (
        ("database is locked", "another process holds it locked"),
        ("attempt to write a readonly database", "check that the file and its folder are writable"),
    ):
        error = sqlalchemy.exc.OperationalError("INSERT INTO runs ...", {}, sqlite3.OperationalError(words))
        with pytest.raises(UserError) as caught, reported(f"sqlite:///{db}"):
            raise error
        assert str(caught.value).startswith(f"MLflow store {db}: {words}; {advice}")
        assert "start the server" not in str(caught.value) and "\n" not in str(caught.value)
    with (
        pytest.raises(UserError, match=r"^MLflow at http://127.0.0.1:9: .*; start the server"),
        reported("http://127.0.0.1:9"),
    ):
        raise __import__("mlflow.exceptions").exceptions.MlflowException("API request failed\nmore")


_TRAIN_RUN = """
from dgl.cli import entry_point
from dgl.settings import TrackingConfig
from dgl.tracking.runs import mlflow_run

@entry_point
def main():
    cfg = TrackingConfig(uri="", experiment="x", ui="http://127.0.0.1:5000", max_weights_mb=0)
    with mlflow_run(cfg, stage="train") as mlflow:
        mlflow.log_param("a", 1)

main()
"""


@pytest.mark.slow  # an MLflow store, and a process in a mount namespace
def test_a_read_only_sqlite_store_is_one_line_and_no_mlflow_log(tmp_path):
    from test_faults import namespaces_work, with_mounts

    if not namespaces_work():
        pytest.skip("no unprivileged mount namespaces (unshare -rm)")
    store = tmp_path / "store"
    store.mkdir()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "PYTHONPATH": str(Path(__file__).parents[1])}
    first = subprocess.run(
        [sys.executable, "-c", _TRAIN_RUN], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    target = store / "mlflow.db"
    bind = f'mount --bind "{target}" "{target}" && mount -o remount,bind,ro "{target}"'
    out = subprocess.run(
        with_mounts(bind, [sys.executable, "-c", _TRAIN_RUN]),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2 and out.stdout == "", (out.stdout, out.stderr)
    (line,) = out.stderr.splitlines()
    assert line.startswith(
        f"error: MLflow store {target}: attempt to write a readonly database; check that the "
        "file and its folder are writable"
    ), line


def test_a_store_whose_lock_file_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    from filelock import FileLock

    from dgl.tracking.store import store_lock

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(FileLock, "acquire", read_only)
    with pytest.raises(
        UserError,
        match=rf"^MLflow store {re.escape(str(tmp_path))}/mlflow.db: cannot create its lock "
        r"file .*mlflow.db.lock \(Read-only file system\); make the folder writable",
    ):
        with store_lock(f"sqlite:///{tmp_path / 'mlflow.db'}"):
            pass


def test_mlflows_own_logging_of_a_store_error_is_silenced(capsys):
    import logging

    from dgl.tracking.store import fail_fast

    fail_fast()
    logger = logging.getLogger("mlflow.store.db.utils")
    assert not logger.filter(
        logger.makeRecord(logger.name, logging.ERROR, "f", 1, "SQLAlchemy database error", (), None)
    )
    assert logger.filter(logger.makeRecord(logger.name, logging.INFO, "f", 1, "Creating tables", (), None))


@pytest.mark.slow  # an MLflow store is made
def test_a_run_killed_before_its_first_checkpoint_is_ended_by_the_params_stage(tmp_path, monkeypatch, capsys):
    import mlflow

    from dgl.checkpoint import Checkpoint
    from pipelines import params as params_stage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("x"))  # RUNNING, as a killed process leaves it
    checkpoint = tmp_path / "models/checkpoints/train.pt"
    Checkpoint(checkpoint, "fp").claim(run.info.run_id)  # what train notes as its run starts
    assert Checkpoint(checkpoint, "fp").load() is None
    monkeypatch.setattr(
        "sys.argv",
        [
            "params",
            "--params",
            str(Path(__file__).parents[1] / "params.yaml"),
            "--out",
            str(tmp_path / "params.ok"),
            "--checkpoint",
            str(checkpoint),
        ],
    )
    params_stage.main()
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert f"run {run.info.run_id} of that checkpoint ended as KILLED" in capsys.readouterr().err
    assert list(checkpoint.parent.iterdir()) == []
