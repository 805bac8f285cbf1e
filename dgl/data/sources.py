"""Where each real dataset comes from, and how its raw folder is assembled (the `download` stage).

The raw folder has one layout for every dataset (and the synthetic benchmark writes the same):

    <raw>/<annotation files>   as the dataset publishes them (adapters.py names them)
    <raw>/videos/...           the videos, `<video id>.<ext>`, in any subfolders
    <raw>/manifest.json        {"files": {relative path: sha256}, "downloads": {file: where from, checked how}}

Two folders beside it (data/ in the pipeline) survive a failed or repeated stage:

    data/downloads/<dataset>/  archives as fetched: an interrupted download resumes from its .part
                               file; an archive you fetched yourself can be dropped here
    data/manual/<dataset>/     what you place by hand, in the raw layout (annotation files at the
                               top, videos under videos/); hard-linked (else copied) into the raw folder

What can be downloaded is; anything you placed by hand replaces the download that would supply it.
The stage then checks that the annotation files exist and parse, and counts the videos they name
that are absent: not fatal here (some MSR-VTT videos are gone upstream); the frames stage lists
them in skipped.json.

Addresses and checksums: the URLs below are the ones the datasets' authors and the papers'
reference code publish. They could not be checked from the machine this was written on (no
network), so a moved file gets an error that says where to put a hand-fetched copy. A sha256 is
pinned only where one is known; everywhere else the first download is trusted and its sha256
recorded next to it (`<file>.sha256` in the downloads folder), once it has been extracted and the
annotation files parse (a truncated or wrong file is never recorded), and every later run is
checked against that record (trust on first use). No hash here is made up.

Every archive is extracted under a size cap (`data.max_extract_gb`): an archive that would write
more is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dgl.checksums import file_checksums, sha256_of, write_manifest
from dgl.data.adapters import (
    VATEX_CAPTIONS,
    VATEX_SPLITS,
    VATEX_TEST,
    VATEX_TRAIN,
    VIDEO_EXTENSIONS,
    dataset_format,
    load_annotations,
)
from dgl.data.download import ChecksumMismatch, download
from dgl.data.extract import extract
from dgl.errors import UserError

Installer = Callable[[Path, Path, int | None], None]  # (downloaded file, raw folder, extraction cap in bytes)


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, dest)


def unpack(select: Callable[[str], str | None]) -> Installer:
    """Install an archive: the entries `select` maps to raw paths."""

    def install(archive: Path, raw_dir: Path, max_bytes: int | None) -> None:
        extract(archive, raw_dir, select, max_bytes)

    return install


def copy_as(name: str) -> Installer:
    """Install a plain file under `name` in the raw folder."""
    return lambda file, raw_dir, max_bytes: _link_or_copy(file, raw_dir / name)


def files_named(*names: str) -> Callable[[str], str | None]:
    """Archive entries with one of these file names (in any folder) → the top of the raw folder."""
    return lambda entry: PurePosixPath(entry).name if PurePosixPath(entry).name in names else None


def videos_in(folder: str) -> Callable[[str], str | None]:
    """Video files inside `.../<folder>/` in the archive → videos/<file name>."""

    def select(entry: str) -> str | None:
        path = PurePosixPath(entry)
        inside = ("/" + path.parent.as_posix()).endswith("/" + folder.strip("/"))
        return f"videos/{path.name}" if inside and path.suffix.lower() in VIDEO_EXTENSIONS else None

    return select


@dataclass(frozen=True)
class Remote:
    url: str
    filename: str  # name in the downloads folder
    install: Installer
    unless_present: tuple[str, ...]  # raw paths this remote supplies: if you placed any by hand, nothing is fetched
    sha256: str | None = None  # pinned checksum where known; None: trust on first use


@dataclass(frozen=True)
class Source:
    remotes: tuple[Remote, ...]
    by_hand: str  # one line: what to fetch yourself, from where, and where to put it ({manual}, {downloads})
    derive: Callable[[Path, Path, str], None] | None = None  # (raw, downloads folder, split): annotation files
    # from the fetched ones


# --- VATEX: the official caption files → the split lists and caption map the adapter reads -----

VATEX_OFFICIAL_TRAIN, VATEX_OFFICIAL_VAL = "vatex_training_v1.0.json", "vatex_validation_v1.0.json"


def _official_captions(raw_dir: Path, downloads_dir: Path, name: str) -> dict[str, list[str]]:
    """{video id: English captions} of one official caption file, in its order."""
    try:
        entries = json.loads((raw_dir / name).read_text(encoding="utf-8"))
        return {str(e["videoID"]): [str(c) for c in e["enCap"]] for e in entries}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{name}: not VATEX's official caption format ({type(e).__name__}: {e}); delete "
            f"{downloads_dir / name} (or your copy in the manual folder) and run again"
        ) from None


def _vatex_from_official(raw_dir: Path, downloads_dir: Path, split: str) -> None:
    """train_list.txt / test_list.txt / ref_captions.json from VATEX's official English captions.

    Train = the official training set; test = the videos of the official validation set that
    `split` (data.vatex_split, adapters.VATEX_SPLITS) names: HGR's 1,500 (the papers'), or all
    3,000. Placing the three files in the manual folder skips this step.
    """
    if (raw_dir / VATEX_CAPTIONS).exists():
        return
    train = _official_captions(raw_dir, downloads_dir, VATEX_OFFICIAL_TRAIN)
    validation = _official_captions(raw_dir, downloads_dir, VATEX_OFFICIAL_VAL)
    listed = VATEX_SPLITS[split].test_ids
    test_ids = listed.read_text().split() if listed else list(validation)
    absent = [v for v in test_ids if v not in validation]
    if absent:
        raise UserError(
            f"{VATEX_OFFICIAL_VAL}: lacks {len(absent)} of the {len(test_ids)} videos of the {split} test "
            f"split (first: {absent[0]}); use VATEX's v1.0 validation file, or data.vatex_split: "
            "official_val"
        )
    (raw_dir / VATEX_TRAIN).write_text("".join(f"{v}\n" for v in train))
    (raw_dir / VATEX_TEST).write_text("".join(f"{v}\n" for v in test_ids))
    captions = train | {v: validation[v] for v in test_ids}
    (raw_dir / VATEX_CAPTIONS).write_text(json.dumps(captions) + "\n")


# --- the registry ------------------------------------------------------------------------------

SOURCES: dict[str, Source] = {
    "msrvtt": Source(
        remotes=(
            Remote(
                "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip",
                "msrvtt_data.zip",
                unpack(files_named("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv")),
                unless_present=("MSRVTT_data.json",),
            ),
            Remote(
                "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip",
                "MSRVTT.zip",
                unpack(videos_in("videos/all")),
                unless_present=("videos",),
            ),
        ),
        by_hand="MSR-VTT downloads by itself; if an address fails, fetch CLIP4Clip's msrvtt_data.zip and "
        "Frozen-in-Time's MSRVTT.zip yourself into {downloads}/, or place MSRVTT_data.json, "
        "MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv and videos/<video id>.mp4 in {manual}/",
    ),
    "vatex": Source(
        remotes=tuple(
            Remote(
                f"https://eric-xw.github.io/vatex-website/data/{name}",
                name,
                copy_as(name),
                unless_present=(name, VATEX_CAPTIONS),
            )  # the official file, or the lists derived from it
            for name in (VATEX_OFFICIAL_TRAIN, VATEX_OFFICIAL_VAL)
        ),
        by_hand="VATEX videos are YouTube clips: fetch each <videoID> (= <YouTube id>_<start>_<end>, seconds) "
        "yourself (e.g. yt-dlp, then cut with ffmpeg) into {manual}/videos/<videoID>.mp4; the split lists "
        "are derived from the official caption files (data.vatex_split)",
        derive=_vatex_from_official,
    ),
    "lsmdc": Source(
        remotes=(),
        by_hand="LSMDC needs the MPII agreement: request access at "
        "https://sites.google.com/site/describingmovies/download (LSMDC 2016), then put "
        "LSMDC16_annos_training.csv and LSMDC16_challenge_1000_publictect.csv in {manual}/ and the clips "
        "(<clip id>.avi, one folder per movie is fine) under {manual}/videos/",
    ),
    "activitynet": Source(
        remotes=(
            # sha256 pinned by a public third-party project that checks this archive on every use
            # (found by code search); we could not download it ourselves to confirm.
            Remote(
                "https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip",
                "captions.zip",
                unpack(files_named("train.json", "val_1.json")),
                unless_present=("train.json",),
                sha256="7ed4f4d613d965683fbdbb9f01baad4fe2a439b99fc39cfd2f6fa6cf9201fd2b",
            ),
        ),
        by_hand="ActivityNet videos are not freely downloadable: request them with the form on "
        "http://activity-net.org/download.html and put v_<id>.mp4 (or .mkv/.webm) under {manual}/videos/",
    ),
}


def _source(dataset: str) -> Source:
    if dataset not in SOURCES:
        raise UserError(
            f"dataset {dataset!r} has no download source; use one of: {', '.join(SOURCES)} "
            "(the synthetic benchmark is rendered locally, not downloaded)"
        )
    return SOURCES[dataset]


# --- fetching with checksums -------------------------------------------------------------------


def _fetch(remote: Remote, downloads_dir: Path, progress: bool) -> tuple[Path, dict, Path | None]:
    """The checked archive in the downloads folder, how it was checked, and the record to write once
    it has proved good (None: pinned, or already recorded)."""
    path = downloads_dir / remote.filename
    record = downloads_dir / f"{remote.filename}.sha256"
    recorded = record.read_text().strip() if record.exists() else None
    expected = remote.sha256 or recorded
    if path.exists():
        digest = sha256_of(path)
        if expected is not None and digest != expected:
            forget = "" if remote.sha256 else f" (and the record {record}, if the file really changed at the source)"
            raise UserError(
                f"{path}: sha256 {digest} does not match the expected {expected}; delete it{forget} and run again"
            )
    else:
        try:
            digest = download(remote.url, path, expected, progress)
        except ChecksumMismatch as e:
            if remote.sha256:
                raise UserError(
                    f"{remote.filename}: sha256 {e.actual} from {remote.url} is not the {e.expected} "
                    "pinned in dgl/data/sources.py; the download was removed: run again, and if it happens "
                    "again the file has changed at the source: check it before changing the pin"
                ) from None
            raise UserError(
                f"{remote.filename}: sha256 {e.actual} from {remote.url} differs from the {e.expected} "
                f"recorded at its first download; the download was removed: run again, and if it happens "
                f"again the file has changed at the source: if you trust it, delete {record} and run "
                "again"
            ) from None
    checked = "pinned" if remote.sha256 else "recorded on first use" if recorded else "first use (now recorded)"
    return path, {"url": remote.url, "sha256": digest, "checked": checked}, None if expected else record


def _place_by_hand(manual_dir: Path, raw_dir: Path) -> int:
    """Link every file placed in the manual folder into the raw folder; returns how many."""
    files = [p for p in sorted(manual_dir.rglob("*")) if p.is_file()] if manual_dir.is_dir() else []
    for path in files:
        _link_or_copy(path, raw_dir / path.relative_to(manual_dir))
    return len(files)


def prepare_raw(
    dataset: str,
    raw_dir: Path,
    progress: bool = True,
    downloads_dir: Path | None = None,
    manual_dir: Path | None = None,
    max_extract_bytes: int | None = None,
    vatex_split: str = "hgr",
    keep_archives: bool = True,
) -> dict:
    """Assemble `raw_dir` for a real dataset: place, download, extract, check, write the manifest.
    Without `keep_archives`, each archive is deleted once everything is extracted and checked; its
    checksum record stays, so an archive fetched again is checked against it (docs/storage.md).

    `downloads_dir` defaults to <raw_dir's parent>/downloads/<dataset>, `manual_dir` to
    <raw_dir's parent>/manual/<dataset>; each archive may write at most `max_extract_bytes`.
    First-use checksums are recorded only once everything has been extracted and the annotation
    files parse. `vatex_split` names VATEX's test split (adapters.VATEX_SPLITS). Returns a summary (counts).
    """
    source = _source(dataset)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    downloads_dir = Path(downloads_dir or raw_dir.parent / "downloads" / dataset)
    manual_dir = Path(manual_dir or raw_dir.parent / "manual" / dataset)
    by_hand = source.by_hand.format(manual=manual_dir, downloads=downloads_dir)

    placed = _place_by_hand(manual_dir, raw_dir)
    downloads, records, archives = {}, {}, []
    for remote in source.remotes:
        if not any((raw_dir / path).exists() for path in remote.unless_present):
            path, downloads[remote.filename], record = _fetch(remote, downloads_dir, progress)
            remote.install(path, raw_dir, max_extract_bytes)
            archives.append(path)
            if record is not None:
                records[record] = downloads[remote.filename]["sha256"]
    if source.derive is not None:
        source.derive(raw_dir, downloads_dir, vatex_split)

    missing_files = [f for f in dataset_format(dataset).files if not (raw_dir / f).is_file()]
    if missing_files:
        raise UserError(f"{dataset}: annotation files missing: {', '.join(missing_files)}; {by_hand}")
    try:
        annotations = load_annotations(dataset, raw_dir)
    except UserError as e:  # its advice is about the raw folder, which this stage rebuilds from the sources
        origins = [str(downloads_dir / name) for name in downloads] + ([str(manual_dir)] if placed else [])
        if not origins:
            raise
        raise UserError(
            f"{str(e).rsplit('; ', 1)[0]}; it came from {' or '.join(origins)}: replace it there "
            "(a deleted download is fetched anew) and run again"
        ) from None
    for record, digest in records.items():  # the downloads proved good: trust them from now on
        record.write_text(digest + "\n")
    absent = [v for v, relative in annotations.videos.items() if not (raw_dir / relative).is_file()]
    if absent:
        print(
            f"{dataset}: {len(absent)} of {len(annotations.videos)} videos named by the annotations are absent "
            f"(first: {absent[0]}); the frames stage lists them in skipped.json. {by_hand}",
            file=sys.stderr,
        )
    write_manifest(raw_dir, {"files": file_checksums(raw_dir, progress), "downloads": downloads}, sort_keys=True)
    if not keep_archives:
        for path in archives:
            path.unlink()
        if archives:
            print(
                f"{dataset}: deleted the extracted archives ({', '.join(p.name for p in archives)}); their sha256 "
                f"stays recorded (`data.keep_archives: true` keeps them)",
                file=sys.stderr,
            )
    return {
        "dataset": dataset,
        "placed_by_hand": placed,
        "downloaded": sorted(downloads),
        "videos": len(annotations.videos),
        "videos_absent": len(absent),
    }
