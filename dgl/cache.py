"""The preprocessed cache: CLIP's resize/crop done once into memory-mapped arrays, captions
tokenised once. Training and evaluation read only this cache, never a video.

Layout of a cache folder, per split (`train`, `test`):
  <split>_frames.npy   uint8 (V, T, 3, S, S), resized (short side S, bicubic) and centre-cropped
  <split>_tokens.npy   int32 (C, L) BPE token ids
  <split>.json         video ids, each caption's video index, text and category, each video's twin
  meta.json            image size, frames, context length, normalisation, what was dropped
Normalisation (CLIP mean/std) happens when a batch is read: uint8 keeps the cache 4x smaller.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from tqdm import tqdm

from dgl.data.annotations import Annotations
from dgl.errors import UserError
from dgl.models.backbone import register_configs

SPLITS = ("train", "test")


def image_size_of(backbone: str) -> int:
    register_configs()
    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        raise UserError(f"params: backbone.name = {backbone!r} is not an open_clip model; use e.g. ViT-B-32")
    size = cfg["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) uint8: CLIP's bicubic resize of the short side + centre crop."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def _fingerprint(**inputs) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build_cache(annotations: Annotations, frames_dir: Path, out_dir: Path, *, backbone: str,
                context_length: int, progress: bool = True) -> dict:
    """Write the cache into `out_dir`, resuming a previous interrupted run with the same inputs."""
    skipped = {s["video_id"]: s["reason"] for s in json.loads((frames_dir / "skipped.json").read_text())["skipped"]}
    size = image_size_of(backbone)
    tokenizer = open_clip.get_tokenizer(backbone)
    fingerprint = _fingerprint(backbone=backbone, size=size, context_length=context_length,
                               frames=sorted((p.name, p.stat().st_size) for p in frames_dir.glob("*.npy")),
                               skipped=sorted(skipped))
    marker = out_dir / "fingerprint.txt"
    if marker.exists() and marker.read_text() != fingerprint:  # inputs changed: nothing to resume
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)

    summary = {"image_size": size, "context_length": context_length, "mean": list(OPENAI_DATASET_MEAN),
               "std": list(OPENAI_DATASET_STD), "dropped_videos": sorted(skipped), "splits": {}}
    for split in SPLITS:
        captions = [c for c in annotations.split(split) if c.video_id not in skipped]
        video_ids = list(dict.fromkeys(c.video_id for c in captions))
        if not video_ids:
            raise UserError(f"{frames_dir}: no usable {split} video (see skipped.json); check the raw data")
        index = {v: i for i, v in enumerate(video_ids)}
        num_frames = np.load(frames_dir / f"{video_ids[0]}.npy", mmap_mode="r").shape[0]
        _write_frames(frames_dir, video_ids, out_dir, split, size, num_frames, progress)
        tokens = tokenizer([c.text for c in captions], context_length=context_length).numpy().astype(np.int32)
        np.save(out_dir / f"{split}_tokens.npy", tokens)
        twins = [index.get(annotations.twins.get(v, ""), -1) for v in video_ids]
        (out_dir / f"{split}.json").write_text(json.dumps({
            "video_ids": video_ids,
            "caption_video": [index[c.video_id] for c in captions],
            "texts": [c.text for c in captions],
            "categories": [c.category for c in captions],
            "twins": twins,
        }))
        summary["splits"][split] = {"videos": len(video_ids), "captions": len(captions), "frames": num_frames}
    (out_dir / "meta.json").write_text(json.dumps(summary, indent=2))
    marker.unlink()
    for done in out_dir.glob("*_done.npy"):
        done.unlink()
    return summary


def _write_frames(frames_dir: Path, video_ids: list[str], out_dir: Path, split: str, size: int,
                  num_frames: int, progress: bool) -> None:
    """Fill the memory-mapped frame array video by video; `<split>_done.npy` records progress."""
    path, done_path = out_dir / f"{split}_frames.npy", out_dir / f"{split}_done.npy"
    shape = (len(video_ids), num_frames, 3, size, size)
    if path.exists() and done_path.exists():
        frames = np.load(path, mmap_mode="r+")
        done = np.load(done_path)
    else:
        frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        done = np.zeros(len(video_ids), dtype=bool)
    todo = np.flatnonzero(~done)
    for n, i in enumerate(tqdm(todo, desc=f"preprocess {split}", disable=not progress, unit="video")):
        frames[i] = resize_center_crop(np.load(frames_dir / f"{video_ids[i]}.npy"), size)
        done[i] = True
        if n % 256 == 255:  # checkpoint progress so an interrupted run resumes here
            frames.flush()
            np.save(done_path, done)
    frames.flush()
    np.save(done_path, done)


@dataclass
class CachedSplit:
    """One split of the cache, frames memory-mapped."""

    frames: np.ndarray  # uint8 (V, T, 3, S, S)
    tokens: torch.Tensor  # (C, L)
    caption_video: torch.Tensor  # (C,)
    texts: list[str]
    categories: list[str]
    twins: torch.Tensor  # (V,) twin video index or -1
    video_ids: list[str]
    mean: torch.Tensor  # (3,)
    std: torch.Tensor

    @classmethod
    def load(cls, cache_dir: Path, split: str) -> "CachedSplit":
        meta = json.loads((cache_dir / "meta.json").read_text())
        info = json.loads((cache_dir / f"{split}.json").read_text())
        return cls(
            frames=np.load(cache_dir / f"{split}_frames.npy", mmap_mode="r"),
            tokens=torch.from_numpy(np.load(cache_dir / f"{split}_tokens.npy")).long(),
            caption_video=torch.tensor(info["caption_video"]),
            texts=info["texts"],
            categories=info["categories"],
            twins=torch.tensor(info["twins"]),
            video_ids=info["video_ids"],
            mean=torch.tensor(meta["mean"]),
            std=torch.tensor(meta["std"]),
        )

    @property
    def num_videos(self) -> int:
        return self.frames.shape[0]

    def video_batch(self, indices) -> torch.Tensor:
        """Normalised float frames (B, T, 3, S, S) of the given videos."""
        x = torch.from_numpy(np.ascontiguousarray(self.frames[np.asarray(indices)])).float().div_(255)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def captions_of(self) -> list[list[int]]:
        """For every video, the indices of its captions."""
        groups: list[list[int]] = [[] for _ in range(self.num_videos)]
        for caption, video in enumerate(self.caption_video.tolist()):
            groups[video].append(caption)
        return groups
