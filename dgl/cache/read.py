"""Reading the preprocessed cache (the layout: dgl/cache/__init__.py): a split's frames decoded
from the frame store when a batch is read, its captions' tokens, and normalisation; a cache that is
absent or damaged is one line that names the stage that rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from dgl.errors import UserError
from dgl.frames.store import RESIZE, FrameStore, default_threads
from dgl.models.backbone import register_configs


def image_size_of(backbone: str) -> int:
    register_configs()
    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        raise UserError(f"params: backbone.name = {backbone!r} is not an open_clip model; use e.g. ViT-B-32")
    size = cfg["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def normalise(pixels: np.ndarray | torch.Tensor, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> float32 (..., 3, S, S): x / 255, then CLIP's per-channel mean and std.

    A tensor is normalised on its device (give `mean` and `std` there too); a NumPy array, memory-
    mapped or not, on the CPU, read where it lies. The same float operations in the same order on
    every path (uint8 -> float32 is exact), so on one device the same pixels give the same bits."""
    if isinstance(pixels, torch.Tensor):
        x = pixels.float()
    else:  # a read-only array (a memory map) is converted by NumPy: torch.from_numpy wants it writable
        x = torch.from_numpy(pixels).float() if pixels.flags.writeable else torch.from_numpy(pixels.astype(np.float32))
    mean, std = torch.as_tensor(mean, device=x.device), torch.as_tensor(std, device=x.device)
    return x.div_(255).sub_(mean[:, None, None]).div_(std[:, None, None])  # in place: one float array, not three


def gallery_counts(cache_dir: Path, split: str, max_missing: float) -> dict[str, int]:
    """How many videos and captions `split` holds and how many annotated videos were skipped; refuses
    (UserError) when more than `max_missing` of the annotated videos are missing: retrieval on a
    smaller gallery reports inflated recall."""
    counts = _read_json(cache_dir / "meta.json")["splits"][split]
    annotated, skipped = counts["annotated_videos"], counts["skipped_videos"]
    if skipped > max_missing * annotated:
        raise UserError(
            f"{cache_dir}: {skipped} of the {annotated} annotated {split} videos "
            f"({100 * skipped / annotated:.1f} %) could not be sampled (see data/frames/skipped.json); "
            "recall on the rest would be inflated. Add the missing videos, or accept a smaller "
            f"gallery with eval.max_missing >= {skipped / annotated:.4f}"
        )
    return {"videos": counts["videos"], "captions": counts["captions"], "skipped_videos": skipped}


def _missing(path: Path) -> UserError:
    return UserError(
        f"{path.parent}: no preprocessed cache here ({path.name} is missing); run `dvc repro preprocess` first"
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise _missing(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):  # truncated: the cache was damaged after preprocess wrote it
        raise UserError(f"{path}: damaged; rebuild the cache with `dvc repro preprocess`") from None


def _read_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    if not path.is_file():
        raise _missing(path)
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as e:  # truncated or not an .npy file
        raise UserError(
            f"{path}: damaged ({type(e).__name__}); rebuild the cache with `dvc repro preprocess`"
        ) from None


@dataclass
class CachedSplit:
    """One split of the cache: its videos' frames are rows of the frame store, decoded when read."""

    store: FrameStore
    rows: np.ndarray  # int64 (V, T * K): K candidate frames per segment (1 = the centres)
    tokens: torch.Tensor  # (C, L)
    caption_video: torch.Tensor  # (C,)
    texts: list[str]
    categories: list[str]
    twins: torch.Tensor  # (V,) twin video index or -1
    video_ids: list[str]
    mean: torch.Tensor  # (3,)
    std: torch.Tensor
    candidates: int = 1  # K

    @classmethod
    def load(cls, cache_dir: Path, split: str, decode_threads: int | None = None) -> CachedSplit:
        """One split; a cache that is absent (preprocess has not run) or damaged is one line.
        `decode_threads`: threads that decode a batch's frames (None: one per core)."""
        meta, info = _read_json(cache_dir / "meta.json"), _read_json(cache_dir / f"{split}.json")
        return cls(
            store=FrameStore(cache_dir, "preprocess", decode_threads or default_threads()),
            rows=_read_npy(cache_dir / f"{split}_rows.npy"),
            tokens=torch.from_numpy(_read_npy(cache_dir / f"{split}_tokens.npy")).long(),
            caption_video=torch.tensor(info["caption_video"]),
            texts=info["texts"],
            categories=info["categories"],
            twins=torch.tensor(info["twins"]),
            video_ids=info["video_ids"],
            mean=torch.tensor(meta["mean"]),
            std=torch.tensor(meta["std"]),
            candidates=meta["splits"][split]["candidates"],
        )

    @property
    def num_videos(self) -> int:
        return self.rows.shape[0]

    @property
    def num_frames(self) -> int:
        return self.rows.shape[1] // self.candidates

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.store.frame_shape

    def preprocessing(self) -> dict:
        """How the frames were prepared, in open_clip's terms (dgl.models.backbone.check_preprocessing)."""
        return {"size": self.frame_shape[-1], "mean": self.mean.tolist(), "std": self.std.tolist(), **RESIZE}

    def jitter(self, count: int, rng: np.random.Generator) -> np.ndarray | None:
        """For `count` videos, which candidate frame of each segment to show (B, T); None = centres."""
        if self.candidates == 1:
            return None
        return rng.integers(self.candidates, size=(count, self.num_frames))

    def video_pixels(self, indices, picks: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 frames (B, T, 3, S, S) of the given videos, decoded from the store: the candidates
        `picks` names (from `jitter`, training), else each segment's centre (evaluation); into `out`
        if given (e.g. pinned memory for an asynchronous copy to a GPU)."""
        indices = np.asarray(indices, dtype=np.int64)
        count, per_video = len(indices), self.rows.shape[1]
        if picks is None:
            picks = np.full((count, self.num_frames), self.candidates // 2)
        frame = np.arange(self.num_frames) * self.candidates + picks  # (B, T) positions in a video's rows
        if count and (
            indices.min() < 0 or indices.max() >= self.num_videos or frame.min() < 0 or frame.max() >= per_video
        ):
            raise IndexError(f"video or frame index out of range for {self.num_videos} videos x {per_video} frames")
        if out is None:
            out = np.empty((count, self.num_frames, *self.frame_shape), dtype=np.uint8)
        self.store.read(self.rows[indices[:, None], frame], out.reshape(-1, *self.frame_shape))
        return out

    def video_batch(self, indices, picks: np.ndarray | None = None) -> torch.Tensor:
        """Normalised float frames (B, T, 3, S, S) on the CPU: `video_pixels`, then `normalise`."""
        return normalise(self.video_pixels(indices, picks), self.mean, self.std)

    def captions_of(self) -> list[list[int]]:
        """For every video, the indices of its captions."""
        groups: list[list[int]] = [[] for _ in range(self.num_videos)]
        for caption, video in enumerate(self.caption_video.tolist()):
            groups[video].append(caption)
        return groups
