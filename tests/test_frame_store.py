"""The frame store (dgl/frames/store.py): what is read is what the codec's decoder makes of the bytes
written, the bytes are the same on every write, a damaged shard is one line naming it, and after a
real `dvc repro` the pixels exist once on disk (frames stage, cache and DVC's cache are one inode)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from dgl.cache.read import CachedSplit
from dgl.data.adapters import load_annotations
from dgl.errors import UserError
from dgl.frames.extract import sample_frames
from dgl.frames.store import FrameStore, JpegCodec, RawCodec, resize_center_crop, shard_name, write_arrays
from helpers import run, tiny_params

SIZE = 48


def smooth_frames(videos: int = 3, frames: int = 4) -> np.ndarray:
    """(V, N, 3, S, S) uint8 gradients with a little noise: content JPEG neither breaks nor stores losslessly."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:SIZE, :SIZE]
    base = np.stack([x * 5, y * 5, (x + y) * 2]) % 256
    out = base[None, None] + rng.integers(0, 16, (videos, frames, 3, SIZE, SIZE))
    return np.clip(out, 0, 255).astype(np.uint8)


def test_jpeg_frames_read_back_are_the_decoders_output_of_the_bytes_written(tmp_path):
    frames = smooth_frames()
    store, rows = write_arrays(tmp_path, frames, JpegCodec(90))
    store.threads = 2  # decoded on two threads: the same frames as on one
    got = store.read(rows)
    flat = frames.reshape(-1, 3, SIZE, SIZE)
    expected = np.stack([decode_jpeg(encode_jpeg(torch.from_numpy(f), quality=90)).numpy() for f in flat])
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, flat)  # lossy: the check above is not the raw round trip
    again = tmp_path / "again"
    again.mkdir()
    write_arrays(again, frames, JpegCodec(90))  # the same frames give the same bytes
    assert (again / shard_name(0)).read_bytes() == (tmp_path / shard_name(0)).read_bytes()


def test_raw_frames_read_back_bit_for_bit_in_any_order(tmp_path):
    frames = smooth_frames()
    store, rows = write_arrays(tmp_path, frames, RawCodec())
    order = np.array([7, 0, 11, 3, 3])
    assert np.array_equal(store.read(rows.ravel()[order]), frames.reshape(-1, 3, SIZE, SIZE)[order])


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_damaged_shard_is_one_line_naming_it_and_the_stage_that_rebuilds_it(tmp_path, damage):
    write_arrays(tmp_path, smooth_frames(), JpegCodec(90))
    shard = tmp_path / shard_name(0)
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(data)
    elif damage == "truncate":
        shard.write_bytes(data[:-100])
    else:
        shard.unlink()
    with pytest.raises(UserError) as error:
        FrameStore(tmp_path, "preprocess").read(np.arange(12))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{shard}: damaged (")
    assert message.endswith("dvc repro preprocess`")
    assert (f"`find data .dvc/cache -samefile {shard} -delete && " in message) == (damage != "remove")


def inode(path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def test_a_repro_keeps_the_frames_once_on_disk_with_the_old_paths_pixels(tiny_repro):
    """The frames stage's shard, the cache's and DVC's cached object are one file (hard links); no
    other copy of those bytes exists in the project. The raw store holds what the pipeline computed
    before it: the sampled frames, resized and centre-cropped."""
    shard = tiny_repro / "data/frames" / shard_name(0)
    linked = tiny_repro / "data/cache" / shard_name(0)
    assert inode(shard) == inode(linked)
    size, content = shard.stat().st_size, shard.read_bytes()
    copies = {inode(p) for p in tiny_repro.rglob("*.bin") if p.stat().st_size == size} | {
        inode(p)
        for p in (tiny_repro / ".dvc/cache").rglob("*")
        if p.is_file() and p.stat().st_size == size and p.read_bytes() == content
    }
    assert copies == {inode(shard)} and os.stat(shard).st_nlink == 3  # frames, cache, DVC's cache

    params = tiny_params()
    split = CachedSplit.load(tiny_repro / "data/cache", "train")
    annotations = load_annotations("synthetic", tiny_repro / "data/raw")
    video = split.video_ids[0]
    sampled = sample_frames(
        tiny_repro / "data/raw" / annotations.videos[video],
        params["frames"]["num_frames"],
        params["frames"]["size"],
        candidates=params["frames"]["train_candidates"],
    )
    all_candidates = split.store.read(split.rows[0])
    assert np.array_equal(all_candidates, resize_center_crop(sampled, 64))  # tiny-synthetic takes 64 px
    assert "changed" not in run(["dvc", "status"], tiny_repro).stdout
