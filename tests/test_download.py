"""Downloads from a loopback HTTP server (with Range support, dropped connections and a server that
ignores Range), checksums, guarded extraction, and the raw folder assembled for real datasets."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dgl.data import sources
from dgl.data.adapters import load_annotations
from dgl.data.download import download, extract
from dgl.data.sources import prepare_raw
from dgl.errors import UserError
from test_video import make_testsrc


@dataclasses.dataclass
class Server:
    url: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # path -> body
    drop_after: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> bytes sent before hanging up
    drop_always: bool = False  # hang up on every request, not only the first
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)  # (path, Range header)

    def serve(self, name: str, body: bytes) -> str:
        self.files[f"/{name}"] = body
        return f"{self.url}/{name}"

    def ranges(self, name: str) -> list[str | None]:
        return [r for path, r in self.requests if path == f"/{name}"]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: Server = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = self._start(state, body)
        if start is None:
            return
        payload = body[start:]
        drop = state.drop_after.get(self.path) if state.drop_always else state.drop_after.pop(self.path, None)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload if drop is None else payload[:drop])
        self.close_connection = drop is not None

    def _start(self, state: Server, body: bytes) -> int | None:
        """Send the status line for a full or a ranged reply; returns the first byte, or None if done."""
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if match is None or state.ignore_range:
            self.send_response(200)
            return 0
        start = int(match[1])
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        return start

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> Server:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


BLOB = bytes(range(256)) * 4096  # 1 MiB


# --- download ----------------------------------------------------------------------------------


def test_download_writes_the_file_atomically_and_returns_its_sha256(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    dest = tmp_path / "d" / "blob.bin"
    assert download(url, dest, sha256(BLOB), progress=False) == sha256(BLOB)
    assert dest.read_bytes() == BLOB and not (tmp_path / "d" / "blob.bin.part").exists()


def test_a_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = len(BLOB) // 2
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB
    assert server.ranges("blob.bin") == [None, f"bytes={len(BLOB) // 2}-"]


def test_a_truncated_part_file_is_resumed_from_where_it_stops(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:300_000])
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB
    assert server.ranges("blob.bin") == ["bytes=300000-"]


def test_a_server_that_ignores_range_restarts_the_download(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    server.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes from another version")
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_a_complete_part_file_is_finished_without_downloading_again(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    (tmp_path / "blob.bin.part").write_bytes(BLOB)  # e.g. killed while checking the hash
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_an_interruption_past_the_retries_keeps_the_part_and_says_run_again(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"], server.drop_always = 100_000, True
    with pytest.raises(UserError, match=r"blob.bin: download from .* interrupted .* run again to resume"):
        download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False, retries=1)
    assert (tmp_path / "blob.bin.part").stat().st_size == 200_000 and not (tmp_path / "blob.bin").exists()
    server.drop_always = False
    server.drop_after.clear()
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB
    assert server.ranges("blob.bin")[-1] == "bytes=200000-"


def test_an_unreachable_server_says_to_check_the_network_or_fetch_by_hand(tmp_path):
    with pytest.raises(UserError, match=f"cannot download .* put it at {re.escape(str(tmp_path / 'x.zip'))}"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", None, progress=False, retries=0)


def test_a_checksum_mismatch_names_both_hashes_and_keeps_nothing(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    wrong = "0" * 64
    with pytest.raises(UserError, match=f"blob.bin: sha256 mismatch \\(expected {wrong}, got {sha256(BLOB)}\\)"):
        download(url, tmp_path / "blob.bin", wrong, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_http_error_says_where_to_put_a_hand_fetched_copy(server, tmp_path):
    with pytest.raises(UserError, match=f"HTTP 404 .* put it at {re.escape(str(tmp_path / 'gone.zip'))}"):
        download(f"{server.url}/gone.zip", tmp_path / "gone.zip", None, progress=False)


# --- extract -----------------------------------------------------------------------------------


def test_extract_selects_and_renames_entries_and_merges_into_the_target(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"top/keep.txt": b"k", "top/skip.txt": b"s", "top/sub/": b""}))
    target = tmp_path / "target"
    (target / "x").mkdir(parents=True)
    (target / "x" / "old.txt").write_text("old")
    written = extract(archive, target, lambda name: "x/kept.txt" if name.endswith("keep.txt") else None)
    assert written == ["x/kept.txt"]
    assert sorted(p.name for p in (target / "x").iterdir()) == ["kept.txt", "old.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


@pytest.mark.parametrize("evil", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt", "C:/evil.txt"])
def test_a_zip_entry_escaping_the_target_is_refused_and_nothing_is_extracted(tmp_path, evil):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"fine.txt": b"f", evil: b"e"}))
    with pytest.raises(UserError, match=f"refused entry {re.escape(repr(evil))}: it would be written outside"):
        extract(archive, tmp_path / "out" / "target")
    assert [p.name for p in tmp_path.rglob("*")] == ["a.zip"]


def test_a_zip_with_a_symlink_is_refused(tmp_path):
    link = zipfile.ZipInfo("videos/link.mp4")
    link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    (tmp_path / "a.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="refused entry 'videos/link.mp4': a link"):
        extract(tmp_path / "a.zip", tmp_path / "target")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_a_tar_with_a_link_is_refused(tmp_path, kind):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = tarfile.TarInfo("fine.txt")
        data.size = 1
        tf.addfile(data, io.BytesIO(b"f"))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = kind, "/etc/passwd" if kind == tarfile.SYMTYPE else "fine.txt"
        tf.addfile(link)
    with pytest.raises(UserError, match="refused entry 'link': a link"):
        extract(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_a_truncated_archive_is_reported(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"f.txt": b"x" * 1000})[:200])
    with pytest.raises(UserError, match="not a zip or tar archive"):
        extract(archive, tmp_path / "target")


# --- prepare_raw -------------------------------------------------------------------------------


def msrvtt_archives(tmp_path: Path) -> dict[str, bytes]:
    """CLIP4Clip's msrvtt_data.zip and Frozen-in-Time's MSRVTT.zip, in miniature (video3 missing)."""
    ids = [f"video{i}" for i in range(4)]
    data = {"videos": [{"video_id": v} for v in ids],
            "sentences": [{"video_id": v, "caption": f"{v} caption {j}", "sen_id": 0} for v in ids for j in range(2)]}
    annotations = zip_bytes({
        "msrvtt_data/MSRVTT_data.json": json.dumps(data).encode(),
        "msrvtt_data/MSRVTT_train.9k.csv": b"video_id\nvideo0\nvideo1\n",
        "msrvtt_data/MSRVTT_JSFUSION_test.csv":
            b"key,vid_key,video_id,sentence\nret0,msr2,video2,a\nret1,msr3,video3,b\n",
        "msrvtt_data/MSRVTT_train.7k.csv": b"video_id\n",
    })  # fmt: skip
    clips = {f"MSRVTT/videos/all/{v}.mp4": make_testsrc(tmp_path / "clips" / f"{v}.mp4", seconds=1).read_bytes()
             for v in ids[:3]}
    videos = zip_bytes({**clips, "MSRVTT/annotation/MSR_VTT.json": b"{}"})
    return {"msrvtt_data.zip": annotations, "MSRVTT.zip": videos}


@pytest.fixture
def msrvtt_served(server, tmp_path, monkeypatch) -> dict[str, bytes]:
    archives = msrvtt_archives(tmp_path)
    remotes = tuple(dataclasses.replace(r, url=server.serve(r.filename, archives[r.filename]))
                    for r in sources.SOURCES["msrvtt"].remotes)
    monkeypatch.setitem(sources.SOURCES, "msrvtt", dataclasses.replace(sources.SOURCES["msrvtt"], remotes=remotes))
    return archives


def test_prepare_raw_downloads_extracts_and_records_checksums(server, msrvtt_served, tmp_path, capsys):
    raw, downloads = tmp_path / "raw", tmp_path / "downloads"
    summary = prepare_raw("msrvtt", raw, progress=False, downloads_dir=downloads, manual_dir=tmp_path / "manual")
    assert summary == {"dataset": "msrvtt", "placed_by_hand": 0, "downloaded": ["MSRVTT.zip", "msrvtt_data.zip"],
                       "videos": 4, "videos_absent": 1}
    assert "1 of 4 videos named by the annotations are absent (first: video3)" in capsys.readouterr().err
    manifest = json.loads((raw / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json", "MSRVTT_train.9k.csv",
                                         "videos/video0.mp4", "videos/video1.mp4", "videos/video2.mp4"]
    assert manifest["files"]["videos/video1.mp4"] == sha256((raw / "videos" / "video1.mp4").read_bytes())
    assert manifest["downloads"]["MSRVTT.zip"]["checked"] == "first use (now recorded)"
    assert (downloads / "MSRVTT.zip.sha256").read_text().strip() == sha256(msrvtt_served["MSRVTT.zip"])
    assert len(load_annotations("msrvtt", raw).train) == 4

    requests = len(server.requests)
    prepare_raw("msrvtt", tmp_path / "raw2", progress=False, downloads_dir=downloads, manual_dir=tmp_path / "manual")
    assert len(server.requests) == requests  # the archives were reused
    again = json.loads((tmp_path / "raw2" / "manifest.json").read_text())
    assert again["files"] == manifest["files"]
    assert again["downloads"]["MSRVTT.zip"]["checked"] == "recorded on first use"


def test_prepare_raw_with_a_pinned_checksum_mismatch_extracts_nothing(server, msrvtt_served, tmp_path, monkeypatch):
    source = sources.SOURCES["msrvtt"]
    pinned = tuple(dataclasses.replace(r, sha256="f" * 64) for r in source.remotes)
    monkeypatch.setitem(sources.SOURCES, "msrvtt", dataclasses.replace(source, remotes=pinned))
    with pytest.raises(UserError, match="msrvtt_data.zip: sha256 mismatch"):
        prepare_raw("msrvtt", tmp_path / "raw", progress=False, downloads_dir=tmp_path / "dl",
                    manual_dir=tmp_path / "manual")
    assert list((tmp_path / "raw").iterdir()) == [] and list((tmp_path / "dl").iterdir()) == []


def test_prepare_raw_checks_a_changed_archive_against_its_first_use_record(server, msrvtt_served, tmp_path):
    downloads = tmp_path / "downloads"
    prepare_raw("msrvtt", tmp_path / "raw", progress=False, downloads_dir=downloads, manual_dir=tmp_path / "m")
    (downloads / "msrvtt_data.zip").write_bytes(b"tampered")
    with pytest.raises(UserError, match="msrvtt_data.zip: sha256 .* does not match the expected"):
        prepare_raw("msrvtt", tmp_path / "raw2", progress=False, downloads_dir=downloads, manual_dir=tmp_path / "m")


def test_files_placed_by_hand_replace_the_download_that_would_supply_them(server, msrvtt_served, tmp_path):
    manual = tmp_path / "manual"
    make_testsrc(manual / "videos" / "video3.mp4", seconds=1)
    summary = prepare_raw("msrvtt", tmp_path / "raw", progress=False, downloads_dir=tmp_path / "dl", manual_dir=manual)
    assert summary["downloaded"] == ["msrvtt_data.zip"] and summary["placed_by_hand"] == 1
    assert server.ranges("MSRVTT.zip") == [] and summary["videos_absent"] == 3


def test_lsmdc_says_where_to_get_the_files_then_validates_what_was_placed(tmp_path):
    raw, manual = tmp_path / "raw", tmp_path / "manual"
    with pytest.raises(UserError, match=f"MPII agreement.*{re.escape(str(manual))}/videos/"):
        prepare_raw("lsmdc", raw, progress=False, downloads_dir=tmp_path / "dl", manual_dir=manual)
    manual.mkdir()
    (manual / "LSMDC16_annos_training.csv").write_text("clip_a\t1\t2\t3\t4\tSomeone waves.\n")
    (manual / "LSMDC16_challenge_1000_publictect.csv").write_text("clip_b\t1\t2\t3\t4\tA door opens.\n")
    make_testsrc(manual / "videos" / "movie" / "clip_a.avi", seconds=1)
    summary = prepare_raw("lsmdc", tmp_path / "raw2", progress=False, downloads_dir=tmp_path / "dl", manual_dir=manual)
    assert summary["videos"] == 2 and summary["videos_absent"] == 1
    assert "videos/movie/clip_a.avi" in json.loads((tmp_path / "raw2" / "manifest.json").read_text())["files"]


def test_vatex_split_lists_are_derived_from_the_official_caption_files(server, tmp_path, monkeypatch):
    official = {
        "vatex_training_v1.0.json": [{"videoID": "a_000001_000011", "enCap": ["a1", "a2"], "chCap": ["x"]}],
        "vatex_validation_v1.0.json": [{"videoID": "b_000002_000012", "enCap": ["b1", "b2", "b3"], "chCap": []}],
    }  # fmt: skip
    source = sources.SOURCES["vatex"]
    remotes = tuple(dataclasses.replace(r, url=server.serve(r.filename, json.dumps(official[r.filename]).encode()))
                    for r in source.remotes)
    monkeypatch.setitem(sources.SOURCES, "vatex", dataclasses.replace(source, remotes=remotes))
    prepare_raw("vatex", tmp_path / "raw", progress=False, downloads_dir=tmp_path / "dl", manual_dir=tmp_path / "m")
    ann = load_annotations("vatex", tmp_path / "raw")
    assert [c.text for c in ann.train] == ["a1", "a2"] and [c.text for c in ann.test] == ["b1", "b2", "b3"]


def test_the_synthetic_benchmark_is_not_downloaded(tmp_path):
    with pytest.raises(UserError, match="rendered locally, not downloaded"):
        prepare_raw("synthetic", tmp_path / "raw", progress=False)
