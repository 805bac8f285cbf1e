"""The synthetic benchmark: real mp4 files, consistent annotations, exact twins, held-out combos, determinism."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dgl.data.synthetic import encode_mp4, generate
from dgl.data.synthetic_render import render_frames
from dgl.data.synthetic_scenes import check_vocabulary, held_out_combos, order_sensitive, plan_scenes, vocab
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe
from helpers import group

# 10 test videos: one unit (a twin pair or two static videos) for each of the 5 categories.
TINY = group(
    "data.synthetic", seed=3, train_videos=8, test_videos=10, resolution=32, fps=8, seconds=1.5, captions_per_video=2
)
DEFAULT = group("data.synthetic")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, TINY, ffmpeg="pinned", workers=2, progress=False)
    return out


def decode(path: Path, size: int) -> np.ndarray:
    """All frames of an mp4, (T, S, S, 3) uint8, decoded by the ffmpeg binary."""
    command = [ffmpeg_exe(), "-v", "error", "-i", str(path)]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-"]
    result = subprocess.run(command, capture_output=True, check=True)
    assert result.stderr == b""
    return np.frombuffer(result.stdout, dtype=np.uint8).reshape(-1, size, size, 3)


def annotations(dataset: Path) -> dict:
    return json.loads((dataset / "MSRVTT_data.json").read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_videos_are_decodable_h264_mp4(dataset):
    videos = sorted((dataset / "videos").iterdir())
    assert len(videos) == TINY.train_videos + TINY.test_videos
    for path in videos:
        assert path.read_bytes()[4:8] == b"ftyp"
        frames = decode(path, TINY.resolution)
        assert frames.shape == (TINY.frames, TINY.resolution, TINY.resolution, 3)
        assert frames.std() > 0  # something is drawn


def test_encoded_frames_are_close_to_rendered(dataset):
    for scene in plan_scenes(TINY):
        decoded = decode(dataset / "videos" / f"{scene.video_id}.mp4", TINY.resolution).astype(int)
        assert np.abs(decoded - render_frames(scene, TINY)).mean() < 4  # H.264 4:2:0 at crf 18 on sharp edges


def test_annotation_files_parse_and_agree(dataset):
    data = annotations(dataset)
    videos = {v["video_id"]: v for v in data["videos"]}
    files = {p.relative_to(dataset).as_posix() for p in (dataset / "videos").iterdir()}
    assert {f"videos/{v}.mp4" for v in videos} == files
    assert {v["split"] for v in videos.values()} == {"train", "test"}
    assert {v["event"] for v in videos.values()} <= set(vocab()["categories"])

    sentences = data["sentences"]
    assert [s["sen_id"] for s in sentences] == list(range(len(sentences)))
    per_video = {v: [s["caption"] for s in sentences if s["video_id"] == v] for v in videos}
    assert all(len(captions) == TINY.captions_per_video for captions in per_video.values())
    assert all(len(set(captions)) == len(captions) for captions in per_video.values())  # paraphrases, not copies

    train_rows = read_csv(dataset / "MSRVTT_train.9k.csv")
    assert [r["video_id"] for r in train_rows] == [v for v, info in videos.items() if info["split"] == "train"]

    test_rows = read_csv(dataset / "MSRVTT_JSFUSION_test.csv")
    expected = [(s["video_id"], s["caption"]) for s in sentences if videos[s["video_id"]]["split"] == "test"]
    assert [(r["video_id"], r["sentence"]) for r in test_rows] == expected
    assert len({r["key"] for r in test_rows}) == len(test_rows)
    assert all(r["vid_key"] == r["video_id"].replace("video", "msr") for r in test_rows)


def test_annotations_follow_the_plan(dataset):
    data = annotations(dataset)
    scenes = plan_scenes(TINY)
    assert [(v["video_id"], v["split"], v["event"], v["twin"]) for v in data["videos"]] == [
        (s.video_id, s.split, s.category, s.twin) for s in scenes
    ]
    planned_captions = [(s.video_id, c) for s in scenes for c in s.captions()]
    assert [(s["video_id"], s["caption"]) for s in data["sentences"]] == planned_captions
    assert {s.category for s in scenes if s.split == "test"} == set(vocab()["categories"])


def test_manifest_lists_every_file_with_its_sha256(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())["files"]
    files = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest) == files
    for name, digest in manifest.items():
        assert hashlib.sha256((dataset / name).read_bytes()).hexdigest() == digest


def test_every_order_sensitive_video_has_a_reversed_twin_in_its_split(dataset):
    videos = {v["video_id"]: v for v in annotations(dataset)["videos"]}
    scenes = {s.video_id: s for s in plan_scenes(TINY)}
    lone = []  # a category's odd last training video has no twin
    for video_id, info in videos.items():
        scene = scenes[video_id]
        if not order_sensitive(scene.kind) or info["twin"] is None:
            assert info["twin"] is None
            if order_sensitive(scene.kind):
                assert info["split"] == "train"
                lone.append(scene.category)
            continue
        twin = scenes[info["twin"]]
        assert videos[twin.video_id]["twin"] == video_id and videos[twin.video_id]["split"] == info["split"]
        assert (twin.kind, twin.look, twin.category) == (scene.kind, scene.look, scene.category)
        assert twin.reversed != scene.reversed
        assert set(twin.captions()).isdisjoint(scene.captions())  # the twin says the opposite

        raw, twin_raw = render_frames(scene, TINY), render_frames(twin, TINY)
        assert np.array_equal(raw, twin_raw[::-1])
        assert not np.array_equal(raw, twin_raw)  # something changes over time
        assert np.array_equal(raw.mean(axis=0), twin_raw.mean(axis=0))  # order-blind pooling: identical

        decoded = decode(dataset / "videos" / f"{video_id}.mp4", TINY.resolution).astype(int)
        decoded_twin = decode(dataset / "videos" / f"{twin.video_id}.mp4", TINY.resolution).astype(int)
        assert np.array_equal(decoded, decoded_twin[::-1])  # lossless: exactly the frames backwards
    assert len(lone) == len(set(lone))
    train = [s for s in plan_scenes(DEFAULT) if s.split == "train" and order_sensitive(s.kind)]
    assert sum(s.twin is not None for s in train) >= len(train) - len(vocab()["categories"])  # hundreds of pairs


def test_held_out_combos_only_in_test():
    cfg = DEFAULT
    held_out = held_out_combos(cfg)
    per_event = round(cfg.held_out_fraction * len(vocab()["colours"]) * len(vocab()["shapes"]))
    assert len(held_out) == per_event * len(vocab()["categories"])
    scenes = plan_scenes(cfg)
    assert not any(s.combos() & held_out for s in scenes if s.split == "train")
    assert any(s.combos() & held_out for s in scenes if s.split == "test")
    assert held_out_combos(cfg) == held_out_combos(dataclasses.replace(cfg, train_videos=7))


def test_test_captions_are_distinguishable():
    """No two test videos share a description or a caption, so R@1 has one right answer."""
    test = [s for s in plan_scenes(DEFAULT) if s.split == "test"]
    assert len(test) == DEFAULT.test_videos
    assert len({s.description() for s in test}) == len(test)
    captions = [c for s in test for c in s.captions()]
    assert len(set(captions)) == len(captions)


def test_same_config_gives_the_same_bytes(dataset, tmp_path):
    again = tmp_path / "again"
    generate(again, TINY, ffmpeg="pinned", workers=1, progress=False)

    def digests(root: Path) -> dict[str, str]:
        files = [p for p in root.rglob("*") if p.is_file()]
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert len(digests(dataset)) == TINY.train_videos + TINY.test_videos + 4
    assert digests(dataset) == digests(again)


def test_another_seed_gives_another_dataset():
    captions = [[c for s in plan_scenes(dataclasses.replace(TINY, seed=seed)) for c in s.captions()] for seed in (0, 1)]
    assert captions[0] != captions[1]


def test_captions_fit_the_tiny_clip_context():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    longest = dict(colour="purple", colour2="yellow", shape="triangle", shape2="diamond", background="checkered")
    kinds = vocab()["kinds"].values()
    templates = [t for spec in kinds for t in spec["templates"] + spec.get("reversed_templates", [])]
    assert max(len(tokenizer.encode(t.format(**longest))) + 2 for t in templates) <= 32  # + start and end tokens


def test_every_kind_has_a_renderer_and_matching_templates():
    from dgl.data.synthetic_render import RENDERERS

    kinds = vocab()["kinds"]
    assert {k for c in vocab()["categories"].values() for k in c["kinds"]} == set(kinds) == set(RENDERERS)
    for spec in kinds.values():
        assert len(spec["templates"]) >= 5  # captions_per_video may go up to 5
        if "reversed_templates" in spec:
            assert len(spec["reversed_templates"]) == len(spec["templates"])


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"test_videos": 7}, "data.synthetic.test_videos"),
        ({"test_videos": 20_000}, "data.synthetic.test_videos"),
        ({"resolution": 33}, "data.synthetic.resolution"),
        ({"resolution": 8}, "data.synthetic.resolution"),
        ({"captions_per_video": 6}, "data.synthetic.captions_per_video"),
        ({"held_out_fraction": 0.9}, "data.synthetic.held_out_fraction"),
        ({"seconds": 1.0, "fps": 2}, "data.synthetic.seconds"),
        ({"colors": 3}, "data.synthetic.colors"),
    ],
)
def test_invalid_config_names_the_key(raw, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_vocabulary(group("data.synthetic", **raw))


def test_generate_checks_a_hand_built_config_before_writing(tmp_path):
    with pytest.raises(UserError, match=r"data\.synthetic\.test_videos"):
        generate(tmp_path, dataclasses.replace(TINY, test_videos=9), ffmpeg="pinned", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        generate(tmp_path, TINY, ffmpeg="pinned", progress=False)
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_ffmpeg_failure_raises(tmp_path):
    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(UserError, match="ffmpeg failed"):
        encode_mp4(frames, fps=8, path=tmp_path / "missing-folder" / "x.mp4")


GOLDEN = Path(__file__).parent / "golden" / "synthetic_tiny.json"


def test_render_matches_the_committed_golden_digests(dataset):
    """The same params give the same bytes on any machine of this kind: the pinned ffmpeg's
    H.264 output is compared with digests committed from the reference machine. Regenerate
    tests/golden/synthetic_tiny.json only on purpose, when the pinned ffmpeg or the renderer changes."""
    golden = json.loads(GOLDEN.read_text())
    made = json.loads((dataset / "manifest.json").read_text())
    differ = sorted(name for name, digest in golden["files"].items() if made["files"].get(name) != digest)
    assert not differ and set(made["files"]) == set(golden["files"]), (
        f"{len(differ)} of {len(golden['files'])} rendered files differ from {GOLDEN.name} (e.g. {differ[:3]}); "
        f"encoded by {ffmpeg_exe()} ({made['toolchain']['version']}, sha256 {made['toolchain']['sha256'][:12]}), "
        f"golden made by {golden['toolchain']['version']} (sha256 {golden['toolchain']['sha256'][:12]})"
    )
    assert made["toolchain"] == golden["toolchain"]
