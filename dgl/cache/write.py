"""Writing the preprocessed cache (the preprocess stage; the layout: dgl/cache/__init__.py): the
frame store linked from the frames stage's output, each split's rows into it, its captions'
tokens, its video ids, captions and twins, and meta.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import open_clip
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from dgl.cache.read import image_size_of
from dgl.data.annotations import Annotations
from dgl.errors import UserError
from dgl.frames.store import FrameStore, store_files

SPLITS = ("train", "test")


def build_cache(
    annotations: Annotations, frames_dir: Path, out_dir: Path, *, backbone: str, context_length: int
) -> dict:
    """Write the cache into `out_dir`: the frame store linked from `frames_dir`, rows and tokens per split."""
    for name in ("skipped.json", "sampling.json"):
        if not (frames_dir / name).is_file():
            raise UserError(f"{frames_dir}: no sampled frames here ({name} is missing); run `dvc repro frames` first")
    skipped = {s["video_id"]: s["reason"] for s in json.loads((frames_dir / "skipped.json").read_text())["skipped"]}
    sampling = json.loads((frames_dir / "sampling.json").read_text())
    store = FrameStore(frames_dir, "frames")
    size = image_size_of(backbone)
    if store.frame_shape != (3, size, size):
        raise UserError(
            f"{frames_dir}: frames of {store.frame_shape} where {backbone} takes (3, {size}, {size}); "
            "run `dvc repro frames`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in store_files(frames_dir):
        _link_or_copy(path, out_dir / path.name)
    tokenizer = open_clip.get_tokenizer(backbone)

    summary = {
        "image_size": size,
        "context_length": context_length,
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "dropped_videos": sorted(skipped),
        "splits": {},
    }
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
        (out_dir / f"{split}.json").write_text(
            json.dumps(
                {
                    "video_ids": video_ids,
                    "caption_video": [index[c.video_id] for c in captions],
                    "texts": [c.text for c in captions],
                    "categories": [c.category for c in captions],
                    "twins": twins,
                }
            )
        )
        annotated = set(annotations.split_videos(split))
        summary["splits"][split] = {
            "videos": len(video_ids),
            "captions": len(captions),
            "frames": num_frames,
            "candidates": candidates,
            "annotated_videos": len(annotated),
            "skipped_videos": len(annotated & set(skipped)),
        }
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
