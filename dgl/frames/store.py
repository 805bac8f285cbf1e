"""The frame store: every sampled frame once, as CLIP takes it (resized, centre-cropped), encoded one
by one and concatenated into a few large shard files with an index (like FFCV's `.beton` or
WebDataset's tar shards), never one file per frame.

Layout of a store folder (the frames stage writes it; the cache links it, docs/storage.md):
  frames-NNNNN.bin   encoded frames, back to back; a new shard starts after SHARD_BYTES
  index.npy          int64 (N, 4): per frame its shard, byte offset, byte length and CRC-32
  store.json         codec and its settings, the encoder's version, frame shape, the shards' sizes,
                     and per video its first row in the index and its frame count

Codecs (`frames.codec`): `raw` keeps the uint8 pixels as they are (the synthetic default: small,
and its committed numbers stay bit for bit); `jpeg` encodes with libjpeg-turbo through torchvision
(pinned in requirements.txt: the same frames give the same bytes) at `frames.jpeg_quality`. One
reader serves both: it checks each frame's CRC, then decodes on `threads` threads (torchvision's
decoder releases the GIL). A shard that is missing, has the wrong size or fails a checksum is one
line that names it and the stage that rebuilds it.
"""

from __future__ import annotations

import abc
import concurrent.futures
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from dgl.errors import UserError

SHARD_BYTES = 1 << 30  # 1 GiB: a few files per dataset, each small enough to copy or rsync alone
INDEX_COLUMNS = 4  # shard, offset, length, crc32
RESIZE = {"interpolation": "bicubic", "resize_mode": "shortest"}  # what resize_center_crop does, as open_clip names it


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) uint8: CLIP's bicubic resize of the short side + centre crop."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode=RESIZE["interpolation"], align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


# --- codecs -----------------------------------------------------------------------------------------


class Codec(abc.ABC):
    """Turns one (3, S, S) uint8 frame into bytes and back."""

    name: str

    @abc.abstractmethod
    def encode(self, frame: np.ndarray) -> bytes:
        """The bytes of `frame` (3, S, S) uint8."""

    @abc.abstractmethod
    def decode(self, data: np.ndarray, out: np.ndarray) -> None:
        """Decode `data` (1-D uint8, writable) into `out` (3, S, S) uint8."""

    def settings(self) -> dict:
        return {"codec": self.name}


class RawCodec(Codec):
    name = "raw"

    def encode(self, frame: np.ndarray) -> bytes:
        return np.ascontiguousarray(frame).tobytes()

    def decode(self, data: np.ndarray, out: np.ndarray) -> None:
        if data.size != out.size:
            raise ValueError(f"{data.size} bytes for a frame of {out.size}")
        out[...] = data.reshape(out.shape)


@dataclass(frozen=True)
class JpegCodec(Codec):
    quality: int
    name = "jpeg"

    def encode(self, frame: np.ndarray) -> bytes:
        return encode_jpeg(torch.from_numpy(np.ascontiguousarray(frame)), quality=self.quality).numpy().tobytes()

    def decode(self, data: np.ndarray, out: np.ndarray) -> None:
        image = decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
        if tuple(image.shape) != out.shape:
            raise ValueError(f"a frame of {tuple(image.shape)} where the store says {out.shape}")
        out[...] = image.numpy()

    def settings(self) -> dict:
        return {"codec": self.name, "quality": self.quality}


CODECS: dict[str, Callable[[dict], Codec]] = {
    "raw": lambda settings: RawCodec(),
    "jpeg": lambda settings: JpegCodec(settings["quality"]),
}


def codec_from(settings: dict) -> Codec:
    """The codec that `settings` ({"codec": name, ...}, as `Codec.settings` gives) names."""
    if settings["codec"] not in CODECS:
        raise UserError(f"frames.codec = {settings['codec']!r} is unknown; use one of: {', '.join(CODECS)}")
    return CODECS[settings["codec"]](settings)


def encoder_version() -> dict[str, str]:
    """What made the bytes: torchvision's bundled libjpeg-turbo (raw frames need no encoder)."""
    return {"torchvision": torchvision.__version__}


# --- writing ----------------------------------------------------------------------------------------


def shard_name(number: int) -> str:
    return f"frames-{number:05d}.bin"


class StoreWriter:
    """Appends videos' encoded frames to shards in the order given; `close` writes the index."""

    def __init__(self, folder: Path, codec: Codec, frame_shape: tuple[int, int, int], shard_bytes: int = SHARD_BYTES):
        self.folder, self.codec, self.frame_shape, self.shard_bytes = Path(folder), codec, frame_shape, shard_bytes
        self._rows: list[tuple[int, int, int, int]] = []
        self._videos: dict[str, list[int]] = {}
        self._sizes: list[int] = []
        self._file = None

    def add(self, video_id: str, encoded: list[bytes]) -> None:
        self._videos[video_id] = [len(self._rows), len(encoded)]
        for data in encoded:
            if self._file is None or self._sizes[-1] >= self.shard_bytes:
                self._next_shard()
            self._file.write(data)
            self._rows.append((len(self._sizes) - 1, self._sizes[-1], len(data), zlib.crc32(data)))
            self._sizes[-1] += len(data)

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.folder / shard_name(len(self._sizes)), "wb")
        self._sizes.append(0)

    def close(self) -> dict:
        if self._file is not None:
            self._file.close()
        index = np.array(self._rows, dtype=np.int64).reshape(-1, INDEX_COLUMNS)
        np.save(self.folder / "index.npy", index)
        meta = {
            **self.codec.settings(),
            "encoder": encoder_version(),
            "frame_shape": list(self.frame_shape),
            "shards": [{"name": shard_name(i), "bytes": size} for i, size in enumerate(self._sizes)],
            "videos": self._videos,
        }
        (self.folder / "store.json").write_text(json.dumps(meta) + "\n")
        return meta


def store_files(folder: Path) -> list[Path]:
    """Every file of the store in `folder` (shards, index, store.json)."""
    meta = json.loads((Path(folder) / "store.json").read_text())
    return [Path(folder) / name for name in ("store.json", "index.npy", *(s["name"] for s in meta["shards"]))]


# --- reading ----------------------------------------------------------------------------------------


class FrameStore:
    """A store opened for reading: shards memory-mapped (copy-on-write, so decoders get writable
    arrays without a copy; nothing is ever written back), frames decoded on `threads` threads."""

    def __init__(self, folder: Path, stage: str, threads: int = 1):
        self.folder, self.stage, self.threads = Path(folder), stage, max(1, threads)
        meta = self._read_meta()
        self.codec = codec_from(meta)
        self.frame_shape: tuple[int, int, int] = tuple(meta["frame_shape"])
        self.videos: dict[str, tuple[int, int]] = {v: tuple(span) for v, span in meta["videos"].items()}
        self.index = self._read_index()
        self._shards = [self._map_shard(s["name"], s["bytes"]) for s in meta["shards"]]
        if len(self.index) and (
            self.index[:, 0].max() >= len(self._shards)
            or (self.index[:, 1] + self.index[:, 2] > self._shard_sizes()).any()
        ):
            raise self._damaged(self.folder / "index.npy", "it points past the end of a shard")
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _damaged(self, path: Path, why: str) -> UserError:
        """The line for a damaged file of the store. DVC's cache holds the same inode (hard links), so
        `dvc repro` alone would link the damaged bytes back: every link goes first (docs/storage.md)."""
        if not path.exists():
            return UserError(f"{path}: damaged ({why}); rebuild it with `dvc repro {self.stage}`")
        return UserError(
            f"{path}: damaged ({why}); DVC's cache links the same bytes: remove every link, then "
            f"rebuild: `find data .dvc/cache -samefile {path} -delete && dvc repro {self.stage}`"
        )

    def _read_meta(self) -> dict:
        path = self.folder / "store.json"
        if not path.is_file():
            raise UserError(f"{self.folder}: no frame store here (store.json is missing); run `dvc repro {self.stage}`")
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise self._damaged(path, "not JSON") from None

    def _read_index(self) -> np.ndarray:
        path = self.folder / "index.npy"
        try:
            index = np.load(path)
        except FileNotFoundError:
            raise self._damaged(path, "missing") from None
        except (ValueError, OSError, EOFError) as e:
            raise self._damaged(path, type(e).__name__) from None
        if index.ndim != 2 or index.shape[1] != INDEX_COLUMNS:
            raise self._damaged(path, f"shape {index.shape}")
        return index

    def _map_shard(self, name: str, size: int) -> np.ndarray:
        path = self.folder / name
        if not path.is_file():
            raise self._damaged(path, "missing")
        if path.stat().st_size != size:
            raise self._damaged(path, f"{path.stat().st_size} bytes where the store wrote {size}")
        return np.memmap(path, dtype=np.uint8, mode="c") if size else np.zeros(0, np.uint8)

    def _shard_sizes(self) -> np.ndarray:
        return np.array([len(s) for s in self._shards])[self.index[:, 0]]

    def rows_of(self, video_id: str) -> np.ndarray:
        first, count = self.videos[video_id]
        return np.arange(first, first + count)

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Frames `rows` (N,) of the index, decoded into `out` (N, 3, S, S) uint8 (a new array if None)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if out is None:
            out = np.empty((len(rows), *self.frame_shape), dtype=np.uint8)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.index)):
            raise IndexError(f"frame row out of range for a store of {len(self.index)} frames")
        chunks = np.array_split(np.arange(len(rows)), min(self.threads, max(1, len(rows))))
        if len(chunks) == 1:
            self._decode(rows, out, chunks[0])
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="dgl-decode")
            list(self._pool.map(lambda chunk: self._decode(rows, out, chunk), chunks))
        return out

    def _decode(self, rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        for i in positions:
            shard, offset, length, crc = self.index[rows[i]]
            data, path = self._shards[shard][offset : offset + length], self.folder / shard_name(int(shard))
            if zlib.crc32(data) != crc:
                raise self._damaged(path, f"the frame at byte {offset} fails its checksum")
            try:
                self.codec.decode(data, out[i])
            except (RuntimeError, ValueError) as e:
                why = str(e).splitlines()[0][:80]
                raise self._damaged(path, f"the frame at byte {offset} does not decode: {why}") from None


def default_threads() -> int:
    """Decoding threads: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_arrays(
    folder: Path, frames: np.ndarray, codec: Codec, stage: str = "preprocess"
) -> tuple[FrameStore, np.ndarray]:
    """A store in `folder` of `frames` uint8 (V, N, 3, S, S), opened, and each video's rows (V, N)."""
    writer = StoreWriter(folder, codec, frames.shape[2:])
    for v, video in enumerate(frames):
        writer.add(str(v), [codec.encode(frame) for frame in video])
    writer.close()
    return FrameStore(folder, stage), np.arange(frames.shape[0] * frames.shape[1]).reshape(frames.shape[:2])
