"""Downloads from a loopback HTTP server (Range and If-Range, ETag or Last-Modified or neither, bodies
with a length, without one or chunked, dropped connections, a server that ignores Range or If-Range,
a file that changes between runs), checksums, guarded extraction under a size cap, and the raw
folder assembled for real datasets, with the advice of each error followed to see that it works."""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import hashlib
import io
import json
import re
import stat
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from test_video import make_testsrc

from dgl.data import sources
from dgl.data.adapters import HGR_LISTS, load_annotations
from dgl.data.download import download
from dgl.data.extract import extract
from dgl.data.sources import prepare_raw
from dgl.errors import UserError
from helpers import merge, tiny_params


@dataclasses.dataclass
class Request:
    path: str
    range: str | None
    if_range: str | None
    status: int = 0


@dataclasses.dataclass
class Server:
    """What the loopback server serves, how it misbehaves, and what it was asked."""

    url: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # path -> body (replace one to change it)
    drop_after: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> bytes sent before hanging up
    drop_always: bool = False  # hang up on every request, not only the first
    ignore_range: bool = False
    validator: str = "etag"  # what identifies a version: "etag", "last-modified" or "none"
    honour_if_range: bool = True  # False: sends the asked range even of a changed file
    body: str = "length"  # "length" (Content-Length), "close" (none: the end is where the connection closes), "chunked"
    validator_on_206: bool = True  # False: a ranged reply says nothing of which version it comes from
    trickle: float = 0.0  # > 0: the body goes out one byte at a time, this many seconds apart
    requests: list[Request] = dataclasses.field(default_factory=list)

    def serve(self, name: str, body: bytes) -> str:
        self.files[f"/{name}"] = body
        return f"{self.url}/{name}"

    def ranges(self, name: str) -> list[str | None]:
        return [r.range for r in self.requests if r.path == f"/{name}"]

    def statuses(self, name: str) -> list[int]:
        return [r.status for r in self.requests if r.path == f"/{name}"]


def version_headers(state: Server, body: bytes) -> dict[str, str]:
    digest = hashlib.sha256(body).hexdigest()
    if state.validator == "etag":
        return {"ETag": f'"{digest[:16]}"'}
    if state.validator == "last-modified":
        return {"Last-Modified": email.utils.formatdate(1_600_000_000 + int(digest[:6], 16), usegmt=True)}
    return {}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: Server = self.server.state
        request = Request(self.path, self.headers.get("Range"), self.headers.get("If-Range"))
        state.requests.append(request)
        body = state.files.get(self.path)
        if body is None:
            request.status = 404
            self.send_error(404)
            return
        start = self._start(state, body, request)
        if start is None:
            return
        payload = body[start:]
        drop = state.drop_after.get(self.path) if state.drop_always else state.drop_after.pop(self.path, None)
        if state.validator_on_206 or request.status != 206:
            for key, value in version_headers(state, body).items():
                self.send_header(key, value)
        sent = payload if drop is None else payload[:drop]
        if state.body == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(sent), 65536):
                piece = sent[i : i + 65536]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if drop is None:
                self.wfile.write(b"0\r\n\r\n")
        else:
            if state.body == "length":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.trickle:
                for i in range(len(sent)):
                    self.wfile.write(sent[i : i + 1])
                    self.wfile.flush()
                    time.sleep(state.trickle)
            else:
                self.wfile.write(sent)
        self.close_connection = True

    def _start(self, state: Server, body: bytes, request: Request) -> int | None:
        """Send the status line for a full or a ranged reply; returns the first byte, or None if done."""
        if state.body == "chunked":
            self.protocol_version = "HTTP/1.1"  # chunked bodies exist only in HTTP/1.1
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        stale = request.if_range is not None and request.if_range not in version_headers(state, body).values()
        if match is None or state.ignore_range or (stale and state.honour_if_range):
            request.status = 200
            self.send_response(200)
            return 0
        start = int(match[1])
        if start >= len(body):
            request.status = 416
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        request.status = 206
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        return start

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> Iterator[Server]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    try:
        httpd.state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        thread.start()
        try:
            yield httpd.state
        finally:
            httpd.shutdown()
            thread.join(timeout=5)
    finally:
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


def test_a_part_file_of_unknown_origin_is_downloaded_anew_never_continued(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:300_000])  # no blob.bin.part.json: a part of what?
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB
    assert server.ranges("blob.bin") == [None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]


def test_a_server_that_ignores_range_restarts_the_download(server, tmp_path):
    url = server.serve("blob.bin", BLOB)
    server.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes from another version")
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_a_complete_part_file_is_finished_without_downloading_again(server, tmp_path, monkeypatch):
    url = server.serve("blob.bin", BLOB)

    def killed(path):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("dgl.data.download.sha256_of", killed)  # killed while checking the hash
        with pytest.raises(KeyboardInterrupt):
            download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin.part").read_bytes() == BLOB
    download(url, tmp_path / "blob.bin", sha256(BLOB), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == BLOB
    assert server.statuses("blob.bin") == [200, 416] and server.ranges("blob.bin")[-1] == f"bytes={len(BLOB)}-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]


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
    assert server.requests[-1].if_range == version_headers(server, BLOB)["ETag"]  # only if it is still that file


CHANGED = bytes(reversed(BLOB))  # another version of the file, of the same length


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_file_changed_on_the_server_between_runs_is_downloaded_anew_not_spliced(server, tmp_path, validator):
    server.validator = validator
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = len(BLOB) // 2
    with pytest.raises(UserError, match="run again to resume"):
        download(url, tmp_path / "blob.bin", None, progress=False, retries=0)
    server.files["/blob.bin"] = CHANGED
    assert download(url, tmp_path / "blob.bin", None, progress=False) == sha256(CHANGED)
    assert (tmp_path / "blob.bin").read_bytes() == CHANGED
    assert server.requests[-1].if_range is not None and server.statuses("blob.bin") == [200, 200]


def test_a_206_of_another_version_from_a_server_that_ignores_if_range_restarts(server, tmp_path):
    server.honour_if_range = False
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = len(BLOB) // 2
    with pytest.raises(UserError, match="run again to resume"):
        download(url, tmp_path / "blob.bin", None, progress=False, retries=0)
    server.files["/blob.bin"] = CHANGED
    download(url, tmp_path / "blob.bin", None, progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == CHANGED  # its ETag told the 206 apart
    assert server.statuses("blob.bin") == [200, 206, 200]


def test_a_body_without_length_cut_short_is_resumed_not_taken_for_the_whole_file(server, tmp_path):
    server.body = "close"  # no Content-Length: the cut reads like an end
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = len(BLOB) // 2
    assert download(url, tmp_path / "blob.bin", None, progress=False) == sha256(BLOB)
    assert server.ranges("blob.bin") == [None, f"bytes={len(BLOB) // 2}-", f"bytes={len(BLOB) // 2}-"]
    assert server.statuses("blob.bin") == [200, 206, 206]  # the check for more, then the rest


def test_a_chunked_body_cut_short_is_detected_and_resumed(server, tmp_path):
    server.body = "chunked"
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = 300_000
    assert download(url, tmp_path / "blob.bin", None, progress=False) == sha256(BLOB)
    assert server.ranges("blob.bin") == [None, "bytes=300000-"] and server.statuses("blob.bin") == [200, 206]


def test_a_cut_part_with_neither_length_nor_validator_starts_over(server, tmp_path):
    server.body, server.validator = "close", "none"
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"] = len(BLOB) // 2
    assert download(url, tmp_path / "blob.bin", None, progress=False) == sha256(BLOB)
    assert server.ranges("blob.bin") == [None, f"bytes={len(BLOB) // 2}-", None, f"bytes={len(BLOB)}-"]
    assert server.statuses("blob.bin") == [200, 206, 200, 416]  # cut; more there; start over; the end


def test_past_the_retries_a_part_that_cannot_be_resumed_is_removed_and_the_advice_says_start_over(server, tmp_path):
    server.body, server.validator = "close", "none"
    url = server.serve("blob.bin", BLOB)
    server.drop_after["/blob.bin"], server.drop_always = len(BLOB) // 2, True
    with pytest.raises(UserError, match="gives no way to resume it: run again to start over"):
        download(url, tmp_path / "blob.bin", None, progress=False, retries=1)
    assert list(tmp_path.iterdir()) == []
    server.drop_always = False
    server.drop_after.clear()
    assert download(url, tmp_path / "blob.bin", None, progress=False) == sha256(BLOB)


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


def deflated_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_an_archive_over_the_size_cap_is_refused_before_anything_is_written(tmp_path, kind):
    archive = tmp_path / f"bomb.{kind}"
    if kind == "zip":
        archive.write_bytes(deflated_zip({"a.bin": bytes(3_000_000), "b.bin": bytes(3_000_000)}))
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for name in ("a.bin", "b.bin"):
                info = tarfile.TarInfo(name)
                info.size = 3_000_000
                tf.addfile(info, io.BytesIO(bytes(3_000_000)))
    assert archive.stat().st_size < 50_000  # a small archive that unpacks 6 MB
    with pytest.raises(UserError) as caught:
        extract(archive, tmp_path / "target", max_bytes=5_000_000)
    message = str(caught.value)
    assert message == (
        f"{archive}: extracting it would write 6 MB, more than the cap of 5 MB "
        "(data.max_extract_gb in params.yaml); if the archive is the one expected, raise the cap and "
        "run again"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # nothing written, the archive kept
    assert extract(archive, tmp_path / "target", max_bytes=6_000_000) == ["a.bin", "b.bin"]  # as advised
    assert extract(archive, tmp_path / "other", lambda name: name if name == "a.bin" else None, 5_000_000) == ["a.bin"]


# --- prepare_raw -------------------------------------------------------------------------------


def msrvtt_archives(tmp_path: Path) -> dict[str, bytes]:
    """CLIP4Clip's msrvtt_data.zip and Frozen-in-Time's MSRVTT.zip, in miniature (video3 missing)."""
    ids = [f"video{i}" for i in range(4)]
    data = {
        "videos": [{"video_id": v} for v in ids],
        "sentences": [{"video_id": v, "caption": f"{v} caption {j}", "sen_id": 0} for v in ids for j in range(2)],
    }
    annotations = zip_bytes({
        "msrvtt_data/MSRVTT_data.json": json.dumps(data).encode(),
        "msrvtt_data/MSRVTT_train.9k.csv": b"video_id\nvideo0\nvideo1\n",
        "msrvtt_data/MSRVTT_JSFUSION_test.csv":
            b"key,vid_key,video_id,sentence\nret0,msr2,video2,a\nret1,msr3,video3,b\n",
        "msrvtt_data/MSRVTT_train.7k.csv": b"video_id\n",
    })  # fmt: skip
    clips = {
        f"MSRVTT/videos/all/{v}.mp4": make_testsrc(tmp_path / "clips" / f"{v}.mp4", seconds=1).read_bytes()
        for v in ids[:3]
    }
    videos = zip_bytes({**clips, "MSRVTT/annotation/MSR_VTT.json": b"{}"})
    return {"msrvtt_data.zip": annotations, "MSRVTT.zip": videos}


@pytest.fixture
def msrvtt_served(server, tmp_path, monkeypatch) -> dict[str, bytes]:
    archives = msrvtt_archives(tmp_path)
    remotes = tuple(
        dataclasses.replace(r, url=server.serve(r.filename, archives[r.filename]))
        for r in sources.SOURCES["msrvtt"].remotes
    )
    monkeypatch.setitem(sources.SOURCES, "msrvtt", dataclasses.replace(sources.SOURCES["msrvtt"], remotes=remotes))
    return archives


def test_prepare_raw_downloads_extracts_and_records_checksums(server, msrvtt_served, tmp_path, capsys):
    raw, downloads = tmp_path / "raw", tmp_path / "downloads"
    summary = prepare_raw("msrvtt", raw, progress=False, downloads_dir=downloads, manual_dir=tmp_path / "manual")
    assert summary == {
        "dataset": "msrvtt",
        "placed_by_hand": 0,
        "downloaded": ["MSRVTT.zip", "msrvtt_data.zip"],
        "videos": 4,
        "videos_absent": 1,
    }
    assert "1 of 4 videos named by the annotations are absent (first: video3)" in capsys.readouterr().err
    manifest = json.loads((raw / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [
        "MSRVTT_JSFUSION_test.csv",
        "MSRVTT_data.json",
        "MSRVTT_train.9k.csv",
        "videos/video0.mp4",
        "videos/video1.mp4",
        "videos/video2.mp4",
    ]
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


def test_without_keep_archives_the_archives_go_once_checked_and_a_refetch_is_checked_against_the_record(
    server, msrvtt_served, tmp_path, capsys
):
    downloads = tmp_path / "downloads"
    fetch = functools.partial(
        prepare_raw,
        "msrvtt",
        progress=False,
        downloads_dir=downloads,
        manual_dir=tmp_path / "manual",
        keep_archives=False,
    )
    fetch(tmp_path / "raw")
    assert sorted(p.name for p in downloads.iterdir()) == ["MSRVTT.zip.sha256", "msrvtt_data.zip.sha256"]
    assert "deleted the extracted archives (msrvtt_data.zip, MSRVTT.zip)" in capsys.readouterr().err
    assert len(load_annotations("msrvtt", tmp_path / "raw").train) == 4

    requests = len(server.requests)
    again = fetch(tmp_path / "raw2")
    assert len(server.requests) > requests and again["downloaded"] == ["MSRVTT.zip", "msrvtt_data.zip"]
    manifest = json.loads((tmp_path / "raw2" / "manifest.json").read_text())
    assert manifest["downloads"]["MSRVTT.zip"]["checked"] == "recorded on first use"


def test_prepare_raw_with_a_pinned_checksum_mismatch_extracts_nothing(server, msrvtt_served, tmp_path, monkeypatch):
    source = sources.SOURCES["msrvtt"]
    pinned = tuple(dataclasses.replace(r, sha256="f" * 64) for r in source.remotes)
    monkeypatch.setitem(sources.SOURCES, "msrvtt", dataclasses.replace(source, remotes=pinned))
    with pytest.raises(UserError, match=r"msrvtt_data.zip: sha256 \w+ from .* is not the f{64} pinned in dgl/data/"):
        prepare_raw(
            "msrvtt", tmp_path / "raw", progress=False, downloads_dir=tmp_path / "dl", manual_dir=tmp_path / "manual"
        )
    assert list((tmp_path / "raw").iterdir()) == [] and list((tmp_path / "dl").iterdir()) == []


def test_prepare_raw_checks_a_changed_archive_against_its_first_use_record(server, msrvtt_served, tmp_path):
    downloads = tmp_path / "downloads"
    prepare_raw("msrvtt", tmp_path / "raw", progress=False, downloads_dir=downloads, manual_dir=tmp_path / "m")
    (downloads / "msrvtt_data.zip").write_bytes(b"tampered")
    with pytest.raises(UserError, match="msrvtt_data.zip: sha256 .* does not match the expected .*; delete it "):
        prepare_raw("msrvtt", tmp_path / "raw2", progress=False, downloads_dir=downloads, manual_dir=tmp_path / "m")
    (downloads / "msrvtt_data.zip").unlink()  # as advised
    prepare_raw("msrvtt", tmp_path / "raw2", progress=False, downloads_dir=downloads, manual_dir=tmp_path / "m")


def prepare(tmp_path: Path, raw: str = "raw", **kwargs) -> dict:
    return prepare_raw(
        "msrvtt",
        tmp_path / raw,
        progress=False,
        downloads_dir=tmp_path / "downloads",
        manual_dir=tmp_path / "manual",
        **kwargs,
    )


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_an_archive_cut_short_without_length_is_not_trusted_and_the_advice_fixes_it(server, msrvtt_served, tmp_path):
    # no Content-Length and no Range: the cut cannot be told from the end (the broken server)
    server.body, server.ignore_range = "close", True
    server.drop_after["/msrvtt_data.zip"] = len(msrvtt_served["msrvtt_data.zip"]) // 2
    with pytest.raises(UserError) as caught:
        prepare(tmp_path)
    archive = tmp_path / "downloads" / "msrvtt_data.zip"
    assert one_line(caught) == (f"{archive}: not a zip or tar archive (truncated or corrupt?); delete it and run again")
    assert not (tmp_path / "downloads" / "msrvtt_data.zip.sha256").exists()  # nothing recorded as trusted
    archive.unlink()  # as advised
    prepare(tmp_path)
    assert (tmp_path / "downloads" / "msrvtt_data.zip.sha256").read_text().strip() == sha256(
        msrvtt_served["msrvtt_data.zip"]
    )


def test_a_first_use_archive_whose_annotations_do_not_parse_is_not_recorded(server, msrvtt_served, tmp_path):
    good = msrvtt_served["msrvtt_data.zip"]
    server.files["/msrvtt_data.zip"] = zip_bytes(
        {
            "msrvtt_data/MSRVTT_data.json": b"{not json",
            "msrvtt_data/MSRVTT_train.9k.csv": b"video_id\nvideo0\n",
            "msrvtt_data/MSRVTT_JSFUSION_test.csv": b"key,vid_key,video_id\n",
        }
    )
    with pytest.raises(UserError) as caught:
        prepare(tmp_path)
    archive = tmp_path / "downloads" / "msrvtt_data.zip"
    assert re.fullmatch(
        rf".*MSRVTT_data.json: not in the expected format .*; it came from {re.escape(str(archive))} "
        rf"or {re.escape(str(tmp_path / 'downloads' / 'MSRVTT.zip'))}: replace it there \(a deleted "
        r"download is fetched anew\) and run again",
        one_line(caught),
    )
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["MSRVTT.zip", "msrvtt_data.zip"]
    server.files["/msrvtt_data.zip"] = good  # fixed at the source
    archive.unlink()  # as advised
    prepare(tmp_path, "raw2")
    assert (tmp_path / "downloads" / "msrvtt_data.zip.sha256").read_text().strip() == sha256(good)


def test_the_extraction_cap_refuses_an_archive_and_raising_it_as_advised_works(server, msrvtt_served, tmp_path):
    with pytest.raises(UserError) as caught:
        prepare(tmp_path, max_extract_bytes=1000)
    assert "more than the cap of 1 kB (data.max_extract_gb in params.yaml)" in one_line(caught)
    assert not any(p.suffix == ".sha256" for p in (tmp_path / "downloads").iterdir())
    requests = len(server.requests)
    prepare(tmp_path, "raw2", max_extract_bytes=10_000_000)
    assert len(server.requests) == requests  # the downloads were kept and reused


def test_a_file_changed_at_the_source_after_its_first_use_says_how_to_trust_the_new_one(
    server, msrvtt_served, tmp_path
):
    prepare(tmp_path)
    record = tmp_path / "downloads" / "msrvtt_data.zip.sha256"
    first = record.read_text()
    (tmp_path / "downloads" / "msrvtt_data.zip").unlink()
    changed = zip_bytes(
        {
            **{
                name: zipfile.ZipFile(io.BytesIO(msrvtt_served["msrvtt_data.zip"])).read(name)
                for name in zipfile.ZipFile(io.BytesIO(msrvtt_served["msrvtt_data.zip"])).namelist()
            },
            "msrvtt_data/README": b"a new file in a new release",
        }
    )
    server.files["/msrvtt_data.zip"] = changed
    with pytest.raises(UserError) as caught:
        prepare(tmp_path, "raw2")
    assert one_line(caught).endswith(f"if you trust it, delete {record} and run again")
    assert record.read_text() == first and not (tmp_path / "downloads" / "msrvtt_data.zip").exists()
    record.unlink()  # as advised
    prepare(tmp_path, "raw2")
    assert record.read_text().strip() == sha256(changed)


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


def serve_vatex(server, monkeypatch, official: dict[str, list]) -> None:
    source = sources.SOURCES["vatex"]
    remotes = tuple(
        dataclasses.replace(r, url=server.serve(r.filename, json.dumps(official[r.filename]).encode()))
        for r in source.remotes
    )
    monkeypatch.setitem(sources.SOURCES, "vatex", dataclasses.replace(source, remotes=remotes))


def hgr_ids(name: str) -> list[str]:
    return (HGR_LISTS / name).read_text().split()


@pytest.mark.parametrize("split", ["hgr", "official_val"])
def test_vatex_test_split_is_hgrs_1500_videos_or_the_official_validation_set(server, tmp_path, monkeypatch, split):
    validation = hgr_ids("val_list.txt")[:2] + hgr_ids("test_list.txt")  # the official validation set, in part
    serve_vatex(
        server,
        monkeypatch,
        {
            "vatex_training_v1.0.json": [{"videoID": "a_000001_000011", "enCap": ["a1", "a2"], "chCap": ["x"]}],
            "vatex_validation_v1.0.json": [
                {"videoID": v, "enCap": [f"{v} 1", f"{v} 2"], "chCap": []} for v in validation
            ],
        },
    )
    prepare_raw(
        "vatex",
        tmp_path / "raw",
        progress=False,
        downloads_dir=tmp_path / "dl",
        manual_dir=tmp_path / "m",
        vatex_split=split,
    )
    ann = load_annotations("vatex", tmp_path / "raw")
    assert [c.text for c in ann.train] == ["a1", "a2"]
    want = hgr_ids("test_list.txt") if split == "hgr" else validation
    assert ann.split_videos("test") == want and len(ann.test) == 2 * len(want)
    assert len(ann.split_videos("test")) == (1500 if split == "hgr" else 1502)


def test_vatex_validation_file_without_the_papers_test_videos_is_refused(server, tmp_path, monkeypatch):
    serve_vatex(
        server,
        monkeypatch,
        {
            "vatex_training_v1.0.json": [{"videoID": "a_000001_000011", "enCap": ["a1"], "chCap": []}],
            "vatex_validation_v1.0.json": [{"videoID": "b_000002_000012", "enCap": ["b1"], "chCap": []}],
        },
    )
    with pytest.raises(
        UserError, match="lacks 1500 of the 1500 videos of the hgr test split .*data.vatex_split: official_val"
    ):
        prepare_raw("vatex", tmp_path / "raw", progress=False, downloads_dir=tmp_path / "dl", manual_dir=tmp_path / "m")


def test_the_synthetic_benchmark_is_not_downloaded(tmp_path):
    with pytest.raises(UserError, match="rendered locally, not downloaded"):
        prepare_raw("synthetic", tmp_path / "raw", progress=False)


def test_the_download_stage_applies_the_cap_from_params_in_one_line(
    server, msrvtt_served, tmp_path, monkeypatch, capsys
):
    from pipelines import download as stage

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(merge(tiny_params(), {"data": {"dataset": "msrvtt", "max_extract_gb": 0.001}})))
    big = zip_bytes({"MSRVTT/videos/all/video3.mp4": bytes(2_000_000)})  # 2 MB, over the 1 MB cap
    server.files["/MSRVTT.zip"] = big
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["download", "--params", str(params), "--out", "data/raw"])
    with pytest.raises(SystemExit) as caught:
        stage.main()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert caught.value.code == 2
    assert line == (
        "error: data/downloads/msrvtt/MSRVTT.zip: extracting it would write 2 MB, more "
        "than the cap of 1 MB (data.max_extract_gb in params.yaml); if the archive is the one expected, "
        "raise the cap and run again"
    )
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]  # no raw folder, half or whole
    assert (tmp_path / "data/downloads/msrvtt/MSRVTT.zip").read_bytes() == big  # kept for the next run
