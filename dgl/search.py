"""Ask a trained model: rank the test videos for a free-text query.

    python -m dgl.search "a red circle moves to the left"                  # the workspace's models/trained
    python -m dgl.search "a red circle moves to the left" --run upt --k 10 # the method an MLflow run kept
    python -m dgl.search "a square turns from blue to green" --strip q.png # also the top videos as frames
    python -m dgl.search "a dog catches a frisbee" --videos ~/clips          # rank a folder of videos instead

Prints each of the top k videos with its rank, id, cosine score and its time-reversed twin (the same
frames in reverse order, the synthetic benchmark's hard negative): the twin's rank and score. A twin
right below at the same score is a model that does not see the order of frames.

The gallery is the cache's test split (data/cache, as evaluate encodes it); the query is tokenised
as the cache's captions were (the backbone's tokenizer, the cache's context length). `--videos DIR`
ranks the video files in DIR instead: each is sampled and cropped as the frames stage does
(`frames` params, dgl/frames/extract.py) and normalised as the backbone's record says; a file that
cannot be sampled is named with its reason and left out. `--run NAME`
downloads the trained weights and model.json that the run logged (artifact `model/`,
dgl.tracking.runs.log_trained), so only the backbone and the cache come from the workspace.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dgl.artifacts import load_trained
from dgl.cache.read import CachedSplit, normalise
from dgl.cli import entry_point
from dgl.devices import pick_device
from dgl.errors import UserError
from dgl.evaluation import encode_view
from dgl.models.methods import Method
from dgl.views import SplitView


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = best
    video: int  # index in the split
    score: float  # cosine of query and video features
    twin: int  # the video's time-reversed twin, -1 if it has none
    twin_rank: int  # 0 where there is no twin
    twin_score: float


@dataclass(frozen=True)
class Videos:
    """What a gallery ranks: each video's id, its time-reversed twin (-1: none) and its frames."""

    ids: list[str]
    twins: torch.Tensor  # (V,)
    pixels: Callable[[np.ndarray], np.ndarray]  # video indices (B,) -> uint8 frames (B, T, 3, S, S)

    @classmethod
    def of_split(cls, split: CachedSplit) -> Videos:
        return cls(split.video_ids, split.twins, split.video_pixels)


class Gallery:
    """A trained method beside the features of every video of a gallery, ready for queries."""

    def __init__(
        self,
        method: Method,
        info: dict,
        videos: Videos,
        video: torch.Tensor,
        context_length: int,
        device: torch.device,
        split: CachedSplit | None = None,
    ):
        self.method, self.info, self.videos, self.video, self.device = method, info, videos, video, device
        self.context_length = context_length
        self.split = split  # the cached split the gallery holds (its captions, for experiments.compare); None: a folder
        import open_clip  # the backbone's architecture is registered by now (load_trained built it)

        self.tokenizer = open_clip.get_tokenizer(info["backbone"])

    @classmethod
    def load(cls, trained: Path, backbone: Path, cache: Path, params, split: str = "test") -> Gallery:
        """The cache's `split`, encoded as the evaluate stage encodes it."""
        cached = CachedSplit.load(cache, split)
        method, info = load_trained(trained, backbone, params.model, num_frames=cached.num_frames)
        device = pick_device(params.train.device)
        _, video, _, _ = encode_view(
            method, SplitView(cached, np.arange(cached.num_videos)), device, params.eval.batch_size
        )
        return cls(method, info, Videos.of_split(cached), video, cached.tokens.shape[1], device, cached)

    @classmethod
    def of_folder(cls, folder: Path, trained: Path, backbone: Path, params) -> Gallery:
        """The video files in `folder`, sampled and cropped as the frames stage would, normalised as
        the backbone's record says; files that cannot be sampled are named on stderr and left out."""
        from dgl.data.adapters import VIDEO_EXTENSIONS
        from dgl.frames.extract import sample_frames
        from dgl.frames.sampling import VideoError
        from dgl.frames.store import resize_center_crop
        from dgl.models.backbone import backbone_info

        if not folder.is_dir():
            raise UserError(f"--videos {folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not files:
            raise UserError(f"--videos {folder}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in it")
        preprocess = backbone_info(backbone)["open_clip"]["preprocess_cfg"]
        cfg, frames, ids = params.frames, [], []
        for path in files:
            try:
                sampled = sample_frames(path, cfg.num_frames, cfg.size, cfg.backend, cfg.reencode_fps, params.ffmpeg)
            except VideoError as e:
                print(f"search: left out {path.name}: {e}", file=sys.stderr)
                continue
            frames.append(resize_center_crop(sampled, preprocess["size"]))  # (T, 3, S, S)
            ids.append(path.name)
        if not frames:
            raise UserError(f"--videos {folder}: none of its {len(files)} video files could be sampled (reasons above)")
        pixels = np.stack(frames)  # (V, T, 3, S, S)
        method, info = load_trained(trained, backbone, params.model, num_frames=cfg.num_frames)
        device = pick_device(params.train.device)
        method.eval().to(device)
        _, video_prompts = method.prompts()
        with torch.no_grad():
            video = torch.cat(
                [
                    F.normalize(
                        method.encode_video(
                            normalise(batch, preprocess["mean"], preprocess["std"]).to(device), video_prompts
                        ),
                        dim=-1,
                    ).cpu()
                    for batch in np.array_split(pixels, max(1, -(-len(pixels) // params.eval.batch_size)))
                ]
            )
        videos = Videos(ids, torch.full((len(ids),), -1), lambda indices: pixels[indices])
        return cls(method, info, videos, video, params.preprocess.context_length, device)

    @torch.no_grad()
    def scores(self, queries: list[str]) -> torch.Tensor:
        """(Q, V) cosine scores of each query against every video."""
        tokens = self.tokenizer(queries, context_length=self.context_length).long()
        text_prompts, _ = self.method.prompts()
        text = F.normalize(self.method.encode_text(tokens.to(self.device), text_prompts), dim=-1).cpu()
        return text @ self.video.t()

    def search(self, query: str, k: int) -> list[Hit]:
        scores = self.scores([query])[0]
        order = scores.argsort(descending=True, stable=True)
        rank_of = torch.empty_like(order)
        rank_of[order] = torch.arange(1, len(order) + 1)
        hits = []
        for rank, video in enumerate(order[:k].tolist(), start=1):
            twin = int(self.videos.twins[video])
            hits.append(
                Hit(
                    rank,
                    video,
                    float(scores[video]),
                    twin,
                    int(rank_of[twin]) if twin >= 0 else 0,
                    float(scores[twin]) if twin >= 0 else float("nan"),
                )
            )
        return hits


def describe(hits: list[Hit], videos: Videos) -> list[str]:
    """The hits as aligned lines: rank, video id, score, the twin's rank and score."""
    ids = [videos.ids[h.video] for h in hits]
    width = max(len("video"), *map(len, ids))
    lines = [f"{'rank':>4}  {'video':<{width}}  {'score':>6}  time-reversed twin"]
    for hit, vid in zip(hits, ids):
        twin = (
            f"{videos.ids[hit.twin]}: rank {hit.twin_rank}, {hit.twin_score:.3f}"
            + ("  (same score: order-blind)" if abs(hit.twin_score - hit.score) < 5e-4 else "")
            if hit.twin >= 0
            else "-"
        )
        lines.append(f"{hit.rank:>4}  {vid:<{width}}  {hit.score:>6.3f}  {twin}")
    return lines


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("query", help="the text to search the videos for")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="NAME", help="the trained method an MLflow run logged (its name)")
    source.add_argument(
        "--trained",
        type=Path,
        default=Path("models/trained"),
        metavar="DIR",
        help="a trained method's folder (default: models/trained)",
    )
    ap.add_argument("--videos", type=Path, metavar="DIR", help="rank the video files in DIR, not the test split")
    ap.add_argument("--k", type=int, default=5, help="how many videos to list (default 5)")
    ap.add_argument("--strip", type=Path, metavar="PNG", help="also draw the top k videos' frames there")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    args = ap.parse_args()
    if args.k < 1:
        raise UserError(f"--k {args.k}: give at least 1")
    if not args.query.strip():
        raise UserError('the query is empty; give the text to search for, e.g. "a red circle moves to the left"')
    from dgl.settings import load_params

    params = load_params(args.params)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            from dgl.tracking.runs import trained_of_run

            trained = trained_of_run(params.tracking, args.run, Path(tmp))
        else:
            trained = args.trained
        if args.videos:
            gallery = Gallery.of_folder(args.videos, trained, args.backbone, params)
        else:
            gallery = Gallery.load(trained, args.backbone, args.cache, params)
    count = len(gallery.videos.ids)
    gallery_name = f"videos of {args.videos}" if args.videos else "test videos"
    hits = gallery.search(args.query, min(args.k, count))
    print("\n".join(describe(hits, gallery.videos)))
    if args.strip:
        from dgl.figures import draw_retrieval

        ranked = np.array([[h.video for h in hits]])  # (1, K)
        frames = gallery.videos.pixels(ranked.ravel())[None]  # (1, K, T, 3, S, S)
        draw_retrieval(
            frames,
            [f'"{args.query}"'],
            ranked,
            np.array([-1]),
            np.array([-1]),
            f"{args.run or args.trained}: the top {len(hits)} {gallery_name}",
            args.strip,
        )
    where = f"run {args.run!r}" if args.run else str(args.trained)
    print(
        f"searched {count} {gallery_name} with {gallery.info['method']} from {where} in "
        f"{time.monotonic() - start:.1f}s" + (f"; frames in {args.strip}" if args.strip else ""),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
