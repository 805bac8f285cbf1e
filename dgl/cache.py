"""The preprocessed cache: the frames stage's store of cropped frames, linked (not copied), each
split's rows into it, captions tokenised once. Training and evaluation read only this cache, never a
video.

Layout of a cache folder:
  frames-NNNNN.bin, index.npy, store.json
                       the frame store (dgl/frames/store.py), hard links to data/frames' files (a copy
                       where the file system cannot link): the pixels exist once on disk
  <split>_rows.npy     int64 (V, T * K): each video's frames as rows of the store's index; K candidate
                       frames per segment for train (frames.train_candidates), 1 for test
  <split>_tokens.npy   int32 (C, L) BPE token ids
  <split>.json         video ids, each caption's video index, text and category, each video's twin
  meta.json            image size, frames and candidates, context length, normalisation, what was
                       dropped, and per split how many annotated videos the frames stage skipped
Frames are decoded when a batch is read (`CachedSplit.video_pixels`, on the store's threads);
normalisation (CLIP mean/std) happens on the device that trains: uint8 moves 4x fewer bytes to a
GPU. `device_batches` reads (and decodes) the next batch in a background thread while the current
one trains.
"""
from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from dgl.data.annotations import Annotations
from dgl.errors import UserError
from dgl.frames.store import RESIZE, FrameStore, default_threads, store_files
from dgl.models.backbone import register_configs

SPLITS = ("train", "test")


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


def build_cache(annotations: Annotations, frames_dir: Path, out_dir: Path, *, backbone: str,
                context_length: int) -> dict:
    """Write the cache into `out_dir`: the frame store linked from `frames_dir`, rows and tokens per split."""
    for name in ("skipped.json", "sampling.json"):
        if not (frames_dir / name).is_file():
            raise UserError(f"{frames_dir}: no sampled frames here ({name} is missing); run `dvc repro frames` first")
    skipped = {s["video_id"]: s["reason"] for s in json.loads((frames_dir / "skipped.json").read_text())["skipped"]}
    sampling = json.loads((frames_dir / "sampling.json").read_text())
    store = FrameStore(frames_dir, "frames")
    size = image_size_of(backbone)
    if store.frame_shape != (3, size, size):
        raise UserError(f"{frames_dir}: frames of {store.frame_shape} where {backbone} takes (3, {size}, {size}); "
                        "run `dvc repro frames`")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in store_files(frames_dir):
        _link_or_copy(path, out_dir / path.name)
    tokenizer = open_clip.get_tokenizer(backbone)

    summary = {"image_size": size, "context_length": context_length, "mean": list(OPENAI_DATASET_MEAN),
               "std": list(OPENAI_DATASET_STD), "dropped_videos": sorted(skipped), "splits": {}}
    for split in SPLITS:
        captions = [c for c in annotations.split(split) if c.video_id not in skipped]
        video_ids = list(dict.fromkeys(c.video_id for c in captions))
        if not video_ids:
            raise UserError(f"{frames_dir}: no usable {split} video (see skipped.json); check the raw data")
        index = {v: i for i, v in enumerate(video_ids)}
        num_frames = sampling["num_frames"]
        candidates = sampling["train_candidates"] if split == "train" else 1
        rows = np.stack([_segment_rows(store.rows_of(v), num_frames, candidates) for v in video_ids])
        np.save(out_dir / f"{split}_rows.npy", rows)
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
        annotated = set(annotations.split_videos(split))
        summary["splits"][split] = {"videos": len(video_ids), "captions": len(captions), "frames": num_frames,
                                    "candidates": candidates, "annotated_videos": len(annotated),
                                    "skipped_videos": len(annotated & set(skipped))}
    (out_dir / "meta.json").write_text(json.dumps(summary, indent=2))
    return summary


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (the bytes once on disk; DVC's cache, linked too, keeps them once more for none),
    a copy where the file system has none (another device, no link support)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _segment_rows(rows: np.ndarray, num_frames: int, candidates: int) -> np.ndarray:
    """A video's store rows (T * K',) as (T * candidates,): all K' or, for 1, each segment's centre."""
    stored = len(rows) // num_frames
    if stored == candidates:
        return rows
    return rows.reshape(num_frames, stored)[:, stored // 2]


def gallery_counts(cache_dir: Path, split: str, max_missing: float) -> dict[str, int]:
    """How many videos and captions `split` holds and how many annotated videos were skipped; refuses
    (UserError) when more than `max_missing` of the annotated videos are missing: retrieval on a
    smaller gallery reports inflated recall."""
    counts = _read_json(cache_dir / "meta.json")["splits"][split]
    annotated, skipped = counts["annotated_videos"], counts["skipped_videos"]
    if skipped > max_missing * annotated:
        raise UserError(f"{cache_dir}: {skipped} of the {annotated} annotated {split} videos "
                        f"({100 * skipped / annotated:.1f} %) could not be sampled (see data/frames/skipped.json); "
                        "recall on the rest would be inflated. Add the missing videos, or accept a smaller "
                        f"gallery with eval.max_missing >= {skipped / annotated:.4f}")
    return {"videos": counts["videos"], "captions": counts["captions"], "skipped_videos": skipped}


def _missing(path: Path) -> UserError:
    return UserError(f"{path.parent}: no preprocessed cache here ({path.name} is missing); "
                     "run `dvc repro preprocess` first")


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
        raise UserError(f"{path}: damaged ({type(e).__name__}); rebuild the cache with `dvc repro preprocess`") from None


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
    def load(cls, cache_dir: Path, split: str, decode_threads: int | None = None) -> "CachedSplit":
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
        if count and (indices.min() < 0 or indices.max() >= self.num_videos or frame.min() < 0
                      or frame.max() >= per_video):
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


J, T = TypeVar("J"), TypeVar("T")
_END = object()


class Prefetcher(Generic[J, T]):
    """`make(job)` for every job in order, computed up to `depth` jobs ahead of the consumer by one
    background thread (depth 0: in the consumer's thread, when it asks: the synchronous path).

    Use it in a `with` block (or call `close`): closing stops and joins the thread, whether the loop
    ended, broke off or raised; a Prefetcher dropped unclosed stops its thread too. An exception in
    `make` is raised in the consumer at the job that raised it. `finish(item)`, if given, runs in the
    consumer's thread on every item before it is handed out. `waited`: seconds the consumer spent
    blocked on the next item. Jobs are taken from `jobs` in the background thread: give a list (or
    anything that draws no random numbers)."""

    def __init__(self, make: Callable[[J], T], jobs: Iterable[J], depth: int = 1,
                 finish: Callable[[T], T] | None = None):
        self.depth, self.waited = depth, 0.0
        self._make, self._finish, self._jobs = make, finish, iter(jobs)
        self._done = False
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue: queue.Queue = queue.Queue()
            self._slots = threading.Semaphore(depth)  # items made and not yet handed out
            self._stop = threading.Event()
            # The thread holds the queue, the slots and the stop flag, never `self`: an unclosed
            # Prefetcher is still garbage, and __del__ stops the thread.
            self._thread = threading.Thread(target=_produce, name="dgl-prefetch", daemon=True,
                                            args=(make, self._jobs, self._queue, self._slots, self._stop))
            self._thread.start()

    def __iter__(self) -> "Prefetcher[J, T]":
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        if self._thread is None:
            job = next(self._jobs, _END)
            ok, item = (True, self._make(job)) if job is not _END else (False, None)
        else:
            ok, item = self._queue.get()
            self._slots.release()
        self.waited += time.perf_counter() - start
        if not ok:
            self.close()
            if item is None:
                raise StopIteration
            raise item
        return self._finish(item) if self._finish else item

    def close(self) -> None:
        """Stop the background thread and drop what it prepared; safe to call more than once."""
        self._done = True
        if self._thread is not None:
            self._stop.set()
            self._slots.release()  # wakes a thread waiting for a free slot
            self._thread.join()
            self._thread = None
            while not self._queue.empty():
                self._queue.get_nowait()

    def __enter__(self) -> "Prefetcher[J, T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is not None:
            self.close()


def _produce(make, jobs, out: queue.Queue, slots: threading.Semaphore, stop: threading.Event) -> None:
    """Prefetcher's thread: (True, make(job)) per job while slots allow, then (False, None) at the
    end or (False, exception)."""
    try:
        for job in jobs:
            slots.acquire()
            if stop.is_set():
                return
            out.put((True, make(job)))
        out.put((False, None))
    except BaseException as e:  # handed to the consumer, raised there
        out.put((False, e))


# One batch to read: video indices (B,), candidate picks (B, T) or None for the centres, caption indices or None.
Job = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]


def device_batches(split: CachedSplit, jobs: Iterable[Job], device: torch.device,
                   prefetch: int = 1) -> Prefetcher[Job, tuple[torch.Tensor, "torch.Tensor | None"]]:
    """The batches `jobs` name, read from a cached split and ready on `device`: frames (B, T, 3, S, S)
    float32, normalised there, and tokens (b, L) (None for a job without captions), `prefetch`
    batches ahead of the one in use (0 = each read when asked, in the caller's thread).

    CPU: `split.video_batch` (normalised where it is read). CUDA: uint8 frames decoded into pinned
    memory, copied to the GPU (non_blocking) on a side stream and normalised
    there; the consumer's stream waits for that stream's event before it uses them, so the copy of
    batch k + 1 overlaps the step on batch k."""
    device = torch.device(device)
    if device.type != "cuda":
        return Prefetcher(functools.partial(_read_batch, split, device), jobs, prefetch)
    stream = torch.cuda.Stream(device)
    mean, std = split.mean.to(device), split.std.to(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # mean and std are there first
    return Prefetcher(functools.partial(_read_batch_cuda, split, device, stream, mean, std), jobs, prefetch,
                      finish=functools.partial(_on_current_stream, device))


def _read_batch(split: CachedSplit, device: torch.device, job: Job) -> tuple[torch.Tensor, torch.Tensor | None]:
    videos, picks, captions = job
    frames = split.video_batch(videos, picks).to(device)
    return frames, None if captions is None else split.tokens[captions].to(device)


def _read_batch_cuda(split: CachedSplit, device: torch.device, stream, mean: torch.Tensor, std: torch.Tensor,
                     job: Job) -> tuple[torch.Tensor, torch.Tensor | None, "torch.cuda.Event"]:
    videos, picks, captions = job
    with torch.cuda.stream(stream):
        pixels = torch.empty((len(videos), split.num_frames, *split.frame_shape), dtype=torch.uint8,
                             pin_memory=True)
        split.video_pixels(videos, picks, out=pixels.numpy())
        # `pixels` may be freed when this returns: the caching host allocator keeps a pinned block
        # until the copies that read it have run
        frames = normalise(pixels.to(device, non_blocking=True), mean, std)
        tokens = None if captions is None else split.tokens[captions].pin_memory().to(device, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(stream)
    return frames, tokens, ready


def _on_current_stream(device: torch.device, item) -> tuple[torch.Tensor, torch.Tensor | None]:
    """In the consumer's thread: its stream waits for the side stream's copy and normalisation; the
    tensors, made on the side stream, are marked as used on this one (for the allocator)."""
    frames, tokens, ready = item
    stream = torch.cuda.current_stream(device)
    stream.wait_event(ready)
    for t in (frames, tokens):
        if t is not None:
            t.record_stream(stream)
    return frames, tokens
