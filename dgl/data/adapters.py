"""Annotation adapters: each dataset's published files → the common `Annotations`.

One small parser per format, chosen from a registry; nothing after this module knows which
dataset it reads. Video files are found under `<raw>/videos/` in any subfolder, by file name
(`<video id>.<mp4|avi|mkv|webm|mov|m4v>`), so a dataset keeps its own folder layout (LSMDC's
per-movie folders, for example); a video the annotations name but that is absent keeps the
default path `videos/<video id>.<ext>` and the frames stage reports it as missing. Every video id is
checked as it is read (`annotations.video_id`): one that is not a plain file name (`../x`, `/abs`)
is one line naming the annotation file and the id.

Formats (files relative to the raw dataset folder):
- MSR-VTT (CLIP4Clip's release; the synthetic benchmark writes the same files): MSRVTT_data.json
  {"videos": [{"video_id", ...}], "sentences": [{"video_id", "caption", ...}]}; train = every
  caption of the videos in MSRVTT_train.9k.csv (column video_id); test = the rows of
  MSRVTT_JSFUSION_test.csv (columns video_id, sentence), the 1k-A split. The synthetic set adds
  "event" (caption category) and "twin" (time-reversed twin's id or null) to each video entry.
- VATEX: train_list.txt and test_list.txt (one video id a line), ref_captions.json
  {video id: [captions]}; every caption is a query. Which videos test_list.txt holds is
  `data.vatex_split` (VATEX_SPLITS; the download stage writes the lists).
- LSMDC (LSMDC16): tab-separated LSMDC16_annos_training.csv (train) and
  LSMDC16_challenge_1000_publictect.csv (test), no header: clip id first, sentence last
  (clip id, start aligned, end aligned, start extracted, end extracted, sentence).
- ActivityNet Captions: train.json (train) and val_1.json (test), {video id: {"duration",
  "timestamps", "sentences"}}; paragraph-to-video retrieval: one caption per video, its
  sentences joined with spaces.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dgl.data.annotations import Annotations, Caption, id_path, video_id
from dgl.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")  # preferred first


@contextlib.contextmanager
def _reading(path: Path, expected: str) -> Iterator[None]:
    """A missing or malformed annotation file becomes one UserError that names it."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(
            f"{path}: annotation file not found; run the download stage (`dvc repro download`), "
            "which fetches it or says where to get it"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, csv.Error) as e:
        raise UserError(
            f"{path}: not in the expected format ({expected}): {type(e).__name__}: {e}; "
            "replace it with the published file (delete it and run the download stage)"
        ) from None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_csv(path: Path, columns: Iterable[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"no column {missing[0]!r}")
    return rows


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _video_files(raw_dir: Path, video_ids: Iterable[str], default_extension: str) -> dict[str, str]:
    """Video id -> file relative to raw_dir, found anywhere under raw_dir/videos by file name."""
    videos_dir = raw_dir / "videos"
    files = videos_dir.rglob("*") if videos_dir.is_dir() else []
    candidates = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    found: dict[str, str] = {}
    for path in sorted(candidates, key=lambda p: (VIDEO_EXTENSIONS.index(p.suffix.lower()), p)):
        found.setdefault(path.stem, path.relative_to(raw_dir).as_posix())
    return {v: found.get(v) or id_path(PurePosixPath("videos"), v, default_extension).as_posix() for v in video_ids}


def _annotations(
    raw_dir: Path,
    train: tuple[Caption, ...],
    test: tuple[Caption, ...],
    default_extension: str,
    twins: dict[str, str] | None = None,
) -> Annotations:
    video_ids = dict.fromkeys(c.video_id for c in train + test)
    return Annotations(
        videos=_video_files(raw_dir, video_ids, default_extension), train=train, test=test, twins=twins or {}
    )


# --- MSR-VTT (and the synthetic benchmark) -----------------------------------------------------

MSRVTT_DATA, MSRVTT_TRAIN, MSRVTT_TEST = "MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"


def _msrvtt(raw_dir: Path) -> Annotations:
    path = raw_dir / MSRVTT_DATA
    with _reading(path, '{"videos": [{"video_id", ...}], "sentences": [{"video_id", "caption"}]}'):
        data = _read_json(path)
        sentences = [(video_id(s["video_id"], path), str(s["caption"])) for s in data["sentences"]]
        events = {video_id(v["video_id"], path): v.get("event") or "" for v in data["videos"]}
        twins = {video_id(v["video_id"], path): video_id(v["twin"], path) for v in data["videos"] if v.get("twin")}
    with _reading(raw_dir / MSRVTT_TRAIN, "CSV with a video_id column"):
        train_ids = {row["video_id"] for row in _read_csv(raw_dir / MSRVTT_TRAIN, ["video_id"])}
    with _reading(raw_dir / MSRVTT_TEST, "CSV with columns key, vid_key, video_id, sentence"):
        test_rows = [
            (video_id(r["video_id"], raw_dir / MSRVTT_TEST), r["sentence"])
            for r in _read_csv(raw_dir / MSRVTT_TEST, ["video_id", "sentence"])
        ]
    train = tuple(Caption(v, text, events.get(v, "")) for v, text in sentences if v in train_ids)
    test = tuple(Caption(v, text, events.get(v, "")) for v, text in test_rows)
    both_ways = twins | {twin: video for video, twin in twins.items()}
    return _annotations(raw_dir, train, test, ".mp4", both_ways)


# --- VATEX -------------------------------------------------------------------------------------

VATEX_TRAIN, VATEX_TEST, VATEX_CAPTIONS = "train_list.txt", "test_list.txt", "ref_captions.json"


def _vatex_split(raw_dir: Path, list_name: str, captions: dict[str, list[str]]) -> tuple[Caption, ...]:
    with _reading(raw_dir / list_name, "one video id a line"):
        video_ids = [video_id(v, raw_dir / list_name) for v in _read_lines(raw_dir / list_name)]
    uncaptioned = [v for v in video_ids if v not in captions]
    if uncaptioned:
        raise UserError(
            f"{raw_dir / VATEX_CAPTIONS}: no captions for {len(uncaptioned)} videos of {list_name} "
            f"(first: {uncaptioned[0]}); use the caption file that goes with these split lists"
        )
    return tuple(Caption(v, text) for v in video_ids for text in captions[v])


@dataclass(frozen=True)
class VatexSplit:
    """A named VATEX test split: train is always the official training set."""

    test_ids: Path | None  # the test videos' ids, shipped with the code; None: the whole official validation set
    name: str  # as metrics.json names it


HGR_LISTS = Path(__file__).with_name("vatex_hgr")  # its README names the source
VATEX_SPLITS = {
    "hgr": VatexSplit(HGR_LISTS / "test_list.txt", "vatex HGR test (1,500 videos of the official validation set)"),
    "official_val": VatexSplit(None, "vatex official validation (3,000 videos)"),
}


def _vatex(raw_dir: Path) -> Annotations:
    path = raw_dir / VATEX_CAPTIONS
    with _reading(path, "{video id: [captions]}"):
        captions = {video_id(v, path): [str(text) for text in texts] for v, texts in _read_json(path).items()}
    train, test = (_vatex_split(raw_dir, name, captions) for name in (VATEX_TRAIN, VATEX_TEST))
    return _annotations(raw_dir, train, test, ".mp4")


# --- LSMDC -------------------------------------------------------------------------------------

LSMDC_TRAIN, LSMDC_TEST = "LSMDC16_annos_training.csv", "LSMDC16_challenge_1000_publictect.csv"


def _lsmdc_split(path: Path) -> tuple[Caption, ...]:
    with _reading(path, "tab-separated, no header: clip id, start, end, start, end, sentence"):
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        short = next((i for i, row in enumerate(rows) if len(row) < 2), None)
        if short is not None:
            raise ValueError(f"line {short + 1} has no tab-separated sentence")
    return tuple(Caption(video_id(row[0].strip(), path), row[-1].strip()) for row in rows)


def _lsmdc(raw_dir: Path) -> Annotations:
    return _annotations(raw_dir, _lsmdc_split(raw_dir / LSMDC_TRAIN), _lsmdc_split(raw_dir / LSMDC_TEST), ".avi")


# --- ActivityNet Captions ----------------------------------------------------------------------

ACTIVITYNET_TRAIN, ACTIVITYNET_TEST = "train.json", "val_1.json"


def _activitynet_split(path: Path) -> tuple[Caption, ...]:
    """Paragraph retrieval: one caption per video, all its sentences joined."""
    with _reading(path, '{video id: {"duration", "timestamps", "sentences"}}'):
        return tuple(
            Caption(video_id(v, path), " ".join(s.strip() for s in item["sentences"]))
            for v, item in _read_json(path).items()
        )


def _activitynet(raw_dir: Path) -> Annotations:
    train, test = (_activitynet_split(raw_dir / name) for name in (ACTIVITYNET_TRAIN, ACTIVITYNET_TEST))
    return _annotations(raw_dir, train, test, ".mp4")


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    files: tuple[str, ...]  # annotation files the parser reads, relative to the raw dataset folder
    parse: Callable[[Path], Annotations]
    test_split: str  # what the test split is, as metrics.json names it (VATEX: the default split's)


FORMATS: dict[str, Format] = {
    "msrvtt": Format((MSRVTT_DATA, MSRVTT_TRAIN, MSRVTT_TEST), _msrvtt, f"msrvtt 1k-A ({MSRVTT_TEST})"),
    "synthetic": Format((MSRVTT_DATA, MSRVTT_TRAIN, MSRVTT_TEST), _msrvtt, f"synthetic test ({MSRVTT_TEST})"),
    "vatex": Format((VATEX_TRAIN, VATEX_TEST, VATEX_CAPTIONS), _vatex, VATEX_SPLITS["hgr"].name),
    "lsmdc": Format((LSMDC_TRAIN, LSMDC_TEST), _lsmdc, f"lsmdc {LSMDC_TEST}"),
    "activitynet": Format(
        (ACTIVITYNET_TRAIN, ACTIVITYNET_TEST), _activitynet, f"activitynet {ACTIVITYNET_TEST} (paragraphs)"
    ),
}


def dataset_format(dataset: str) -> Format:
    if dataset not in FORMATS:
        raise UserError(f"dataset {dataset!r} has no annotation adapter; use one of: {', '.join(FORMATS)}")
    return FORMATS[dataset]


def name_of_test_split(dataset: str, vatex_split: str) -> str:
    """What metrics.json calls the test split; VATEX's depends on which list `data.vatex_split` chose."""
    return VATEX_SPLITS[vatex_split].name if dataset == "vatex" else dataset_format(dataset).test_split


def load_annotations(dataset: str, raw_dir: Path) -> Annotations:
    """Parse `dataset`'s annotation files in `raw_dir` into the common form."""
    return dataset_format(dataset).parse(Path(raw_dir))
