"""Each published annotation format, written here in miniature, parsed into the common form."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from dgl.data.adapters import FORMATS, HGR_LISTS, VATEX_SPLITS, load_annotations, name_of_test_split
from dgl.errors import UserError
from dgl.settings import VATEX_SPLITS as VATEX_SPLIT_PARAMS


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def write_msrvtt(raw: Path, synthetic: bool = False) -> None:
    """Four videos, three captions each; video0/1 train, video2/3 test (one JSFusion row each)."""
    raw.mkdir(parents=True, exist_ok=True)
    extra = {
        "video0": {"event": "static", "twin": None}, "video1": {"event": "change", "twin": None},
        "video2": {"event": "motion", "twin": "video3"}, "video3": {"event": "motion"},
    }  # fmt: skip
    videos = [{"video_id": v, "category": 3, "split": "x", **(extra[v] if synthetic else {})} for v in extra]
    sentences = [
        {"video_id": v, "caption": f"{v}, caption {i}", "sen_id": 3 * n + i}
        for n, v in enumerate(extra)
        for i in range(3)
    ]
    (raw / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    write_csv(raw / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"]])
    write_csv(
        raw / "MSRVTT_JSFUSION_test.csv",
        ["key", "vid_key", "video_id", "sentence"],
        [["ret0", "msr2", "video2", "a man, in a car"], ["ret1", "msr3", "video3", 'a "quoted" word']],
    )


def test_msrvtt_train_takes_every_caption_and_test_the_jsfusion_rows(tmp_path):
    write_msrvtt(tmp_path)
    (tmp_path / "videos" / "all").mkdir(parents=True)
    (tmp_path / "videos" / "all" / "video1.mp4").write_bytes(b"")
    ann = load_annotations("msrvtt", tmp_path)
    assert [c.video_id for c in ann.train] == ["video0"] * 3 + ["video1"] * 3
    assert [c.text for c in ann.test] == ["a man, in a car", 'a "quoted" word']
    assert all(c.category == "" for c in ann.train + ann.test) and ann.twins == {}
    assert ann.videos == {
        "video0": "videos/video0.mp4",
        "video1": "videos/all/video1.mp4",
        "video2": "videos/video2.mp4",
        "video3": "videos/video3.mp4",
    }


def test_synthetic_reads_msrvtt_files_with_event_categories_and_twins_both_ways(tmp_path):
    write_msrvtt(tmp_path, synthetic=True)
    ann = load_annotations("synthetic", tmp_path)
    assert {c.video_id: c.category for c in ann.train + ann.test} == {
        "video0": "static",
        "video1": "change",
        "video2": "motion",
        "video3": "motion",
    }
    assert ann.twins == {"video2": "video3", "video3": "video2"}


def test_vatex_every_caption_is_a_query(tmp_path):
    (tmp_path / "train_list.txt").write_text("a_000001_000011\nb_000002_000012\n")
    (tmp_path / "test_list.txt").write_text("c_000003_000013\n\n")
    ids = ("a_000001_000011", "b_000002_000012", "c_000003_000013")
    captions = {v: [f"{v} caption {i}" for i in range(10)] for v in ids}
    (tmp_path / "ref_captions.json").write_text(json.dumps(captions))
    ann = load_annotations("vatex", tmp_path)
    assert len(ann.train) == 20 and len(ann.test) == 10
    assert ann.split_videos("test") == ["c_000003_000013"]
    assert ann.test[9].text == "c_000003_000013 caption 9"


def test_vatex_names_a_listed_video_without_captions(tmp_path):
    (tmp_path / "train_list.txt").write_text("a\n")
    (tmp_path / "test_list.txt").write_text("b\n")
    (tmp_path / "ref_captions.json").write_text(json.dumps({"a": ["x"]}))
    with pytest.raises(UserError, match="no captions for 1 videos of test_list.txt \\(first: b\\)"):
        load_annotations("vatex", tmp_path)


def test_vatex_hgr_lists_are_two_disjoint_halves_of_1500_videos_and_metrics_name_the_split():
    test, val = ((HGR_LISTS / name).read_text().split() for name in ("test_list.txt", "val_list.txt"))
    assert len(set(test)) == len(test) == 1500 and len(set(val)) == len(val) == 1500 and not set(test) & set(val)
    assert all(re.fullmatch(r"[\w-]{11}_\d{6}_\d{6}", v) for v in test + val)  # <YouTube id>_<start>_<end>
    assert tuple(VATEX_SPLITS) == VATEX_SPLIT_PARAMS
    assert name_of_test_split("vatex", "hgr") == "vatex HGR test (1,500 videos of the official validation set)"
    assert name_of_test_split("vatex", "official_val") == "vatex official validation (3,000 videos)"
    assert name_of_test_split("msrvtt", "hgr") == FORMATS["msrvtt"].test_split


def test_lsmdc_tab_separated_clip_first_sentence_last(tmp_path):
    clip = "0001_American_Beauty_00.00.51.926-00.00.54.129"
    (tmp_path / "LSMDC16_annos_training.csv").write_text(
        f"{clip}\t00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.55.000\tSOMEONE looks, then leaves.\n"
        "0001_American_Beauty_00.01.00.000-00.01.02.000\t1\t2\t3\t4\tHe smiles.\n"
    )
    (tmp_path / "LSMDC16_challenge_1000_publictect.csv").write_text(
        "1012_Unbreakable_00.00.10.000-00.00.12.000\t1\t2\t3\t4\tA train passes.\n"
    )
    movie = tmp_path / "videos" / "0001_American_Beauty"
    movie.mkdir(parents=True)
    (movie / f"{clip}.avi").write_bytes(b"")
    ann = load_annotations("lsmdc", tmp_path)
    assert [(c.video_id, c.text) for c in ann.train][0] == (clip, "SOMEONE looks, then leaves.")
    assert len(ann.train) == 2 and ann.test[0].text == "A train passes."
    assert ann.videos[clip] == f"videos/0001_American_Beauty/{clip}.avi"
    assert ann.videos["1012_Unbreakable_00.00.10.000-00.00.12.000"].endswith(".avi")


def test_activitynet_joins_each_videos_sentences_into_one_paragraph(tmp_path):
    sentences = [" A man runs.", "He jumps over a bar. "]
    item = {"duration": 30.5, "timestamps": [[0, 10], [10, 30.5]], "sentences": sentences}
    (tmp_path / "train.json").write_text(json.dumps({"v_abc": item, "v_def": item}))
    (tmp_path / "val_1.json").write_text(json.dumps({"v_ghi": {**item, "sentences": ["One sentence."]}}))
    ann = load_annotations("activitynet", tmp_path)
    assert [c.text for c in ann.train] == ["A man runs. He jumps over a bar."] * 2
    assert [(c.video_id, c.text) for c in ann.test] == [("v_ghi", "One sentence.")]
    assert ann.videos["v_abc"] == "videos/v_abc.mp4"


@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_a_missing_annotation_file_is_named_with_what_to_do(tmp_path, dataset):
    with pytest.raises(UserError, match="annotation file not found; run the download stage") as error:
        load_annotations(dataset, tmp_path)
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize(
    "name,content",
    [
        ("MSRVTT_data.json", "{not json"),
        ("MSRVTT_data.json", json.dumps({"videos": []})),
        ("MSRVTT_train.9k.csv", "vid\nvideo0\n"),
    ],
)
def test_a_corrupt_annotation_file_is_named(tmp_path, name, content):
    write_msrvtt(tmp_path)
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=f"{name}: not in the expected format"):
        load_annotations("msrvtt", tmp_path)


def test_an_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="use one of: msrvtt, synthetic, vatex, lsmdc, activitynet"):
        load_annotations("kinetics", tmp_path)
