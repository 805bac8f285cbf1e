"""Training and encoding loops; nothing in here knows which method it trains."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from dgl.cache import CachedSplit
from dgl.errors import UserError
from dgl.metrics import evaluate_retrieval
from dgl.models.methods import Method
from dgl.models.prompted import contrastive_loss
from dgl.optim import adamw, warmup_cosine


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("params: train.device = 'cuda' but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


@dataclass(frozen=True)
class SplitView:
    """A subset of a cached split's videos (e.g. train minus the validation hold-out)."""

    split: CachedSplit
    videos: np.ndarray  # indices into split's videos

    def captions(self) -> tuple[list[int], Tensor]:
        """Captions of these videos, and each caption's video index *within this view*."""
        position = {v: i for i, v in enumerate(self.videos.tolist())}
        keep = [c for c, v in enumerate(self.split.caption_video.tolist()) if v in position]
        return keep, torch.tensor([position[self.split.caption_video[c].item()] for c in keep])


def train_val_views(split: CachedSplit, val_fraction: float, seed: int) -> tuple[SplitView, SplitView | None]:
    order = np.random.default_rng(seed).permutation(split.num_videos)
    n_val = int(round(split.num_videos * val_fraction))
    train = SplitView(split, np.sort(order[n_val:]))
    return train, (SplitView(split, np.sort(order[:n_val])) if n_val >= 2 else None)


def _batches(view: SplitView, batch_size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch: videos shuffled, each with one of its captions drawn at random; no video twice in
    a batch, so the contrastive targets are the diagonal."""
    groups = view.split.captions_of()
    videos = rng.permutation(view.videos)
    captions = np.array([rng.choice(groups[v]) for v in videos])
    count = len(videos) // batch_size  # drop the last partial batch: contrastive batches stay full
    return [(videos[i * batch_size : (i + 1) * batch_size], captions[i * batch_size : (i + 1) * batch_size])
            for i in range(count)]


def train_method(method: Method, train: SplitView, val: SplitView | None, cfg, device: torch.device,
                 on_epoch: Callable[[int, dict], None], progress: bool = True) -> list[dict]:
    """Contrastive training of the method's trainable parameters; returns per-epoch history."""
    params = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    rng = np.random.default_rng(cfg.seed)
    batch_size = min(cfg.batch_size, len(train.videos))
    steps_per_epoch = len(train.videos) // batch_size
    history: list[dict] = []
    if not params or cfg.epochs == 0:
        return history
    optimizer = adamw(params, cfg.lr, cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    method.to(device)
    for epoch in range(1, cfg.epochs + 1):
        method.train()
        losses = []
        bar = tqdm(_batches(train, batch_size, rng), desc=f"train epoch {epoch}/{cfg.epochs}",
                   disable=not progress, unit="batch")
        for videos, captions in bar:
            frames = train.split.video_batch(videos).to(device)
            tokens = train.split.tokens[captions].to(device)
            text_prompts, video_prompts = method.prompts()  # sample-independent: once per step
            text = F.normalize(method.encode_text(tokens, text_prompts), dim=-1)
            video = F.normalize(method.encode_video(frames, video_prompts), dim=-1)
            loss = contrastive_loss(text, video, method.logit_scale())
            if not math.isfinite(loss.item()):
                raise UserError(f"training diverged at epoch {epoch} (loss {loss.item()}); "
                                "lower train.lr or raise train.warmup_fraction")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        record = {"train_loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0]}
        if val is not None:
            record.update({f"val_{k}": v for k, v in evaluate_view(method, val, device, cfg.batch_size).metrics.items()
                           if k in ("t2v_R1", "v2t_R1", "t2v_R5")})
        history.append(record)
        on_epoch(epoch, record)
    return history


@torch.no_grad()
def encode_view(method: Method, view: SplitView, device: torch.device, batch_size: int,
                progress: bool = False) -> tuple[Tensor, Tensor, list[int], Tensor]:
    """L2-normalised text (C, E) and video (V, E) features of a view, prompts generated once."""
    method.eval().to(device)
    text_prompts, video_prompts = method.prompts()
    captions, caption_video = view.captions()
    tokens = view.split.tokens[captions]
    text = torch.cat([F.normalize(method.encode_text(t.to(device), text_prompts), dim=-1).cpu()
                      for t in tokens.split(batch_size)])
    video = torch.cat([
        F.normalize(method.encode_video(view.split.video_batch(v).to(device), video_prompts), dim=-1).cpu()
        for v in tqdm(np.array_split(view.videos, max(1, math.ceil(len(view.videos) / batch_size))),
                      desc="encode videos", disable=not progress, unit="batch")
    ])
    return text, video, captions, caption_video


def evaluate_view(method: Method, view: SplitView, device: torch.device, batch_size: int, *,
                  dsl: bool = False, chunk_size: int = 1024, progress: bool = False):
    text, video, captions, caption_video = encode_view(method, view, device, batch_size, progress)
    position = {v: i for i, v in enumerate(view.videos.tolist())}
    twins = torch.tensor([position.get(view.split.twins[v].item(), -1) for v in view.videos])
    categories = [view.split.categories[c] for c in captions]
    return evaluate_retrieval(text, video, caption_video, categories=categories, twins=twins, dsl=dsl,
                              chunk_size=chunk_size, logit_scale=float(method.logit_scale()))
