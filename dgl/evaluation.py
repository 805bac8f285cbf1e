"""Evaluation: encode a view of a cached split and score text-video retrieval on it. The evaluate
stage (test split) and training's validation (the held-out training videos) run this same code."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from dgl.cache.prefetch import device_batches
from dgl.data.twins import twin_wordings
from dgl.metrics import RetrievalResult, evaluate_retrieval
from dgl.models.methods import Method
from dgl.views import PREFETCH, SplitView

Encoded = tuple[Tensor, Tensor, list[int], Tensor]  # text (C, E), video (V, E), captions, caption_video (C,)


@torch.no_grad()
def encode_view(
    method: Method, view: SplitView, device: torch.device, batch_size: int, progress: bool = False
) -> Encoded:
    """L2-normalised text (C, E) and video (V, E) features of a view, prompts generated once."""
    method.eval().to(device)
    text_prompts, video_prompts = method.prompts()
    captions, caption_video = view.captions()
    tokens = view.split.tokens[captions]
    text = torch.cat(
        [F.normalize(method.encode_text(t.to(device), text_prompts), dim=-1).cpu() for t in tokens.split(batch_size)]
    )
    parts = np.array_split(view.videos, max(1, math.ceil(len(view.videos) / batch_size)))
    with device_batches(view.split, [(v, None, None) for v in parts], device, PREFETCH) as loader:
        video = torch.cat(
            [
                F.normalize(method.encode_video(frames, video_prompts), dim=-1).cpu()
                for frames, _ in tqdm(
                    loader, total=len(parts), desc="encode videos", disable=not progress, unit="batch"
                )
            ]
        )
    return text, video, captions, caption_video


def score_view(
    method: Method, view: SplitView, encoded: Encoded, *, dsl: bool = False, chunk_size: int = 1024
) -> RetrievalResult:
    """Retrieval metrics of a view's features (encode_view), with the view's categories, twins and twin wordings."""
    text, video, captions, caption_video = encoded
    position = {v: i for i, v in enumerate(view.videos.tolist())}
    twins = torch.tensor([position.get(view.split.twins[v].item(), -1) for v in view.videos])
    categories = [view.split.categories[c] for c in captions]
    wordings = twin_wordings([view.split.texts[c] for c in captions], caption_video.tolist(), twins.tolist())
    return evaluate_retrieval(
        text,
        video,
        caption_video,
        categories=categories,
        twins=twins,
        wordings=wordings,
        dsl=dsl,
        chunk_size=chunk_size,
        logit_scale=float(method.logit_scale()),
    )


def evaluate_view(
    method: Method,
    view: SplitView,
    device: torch.device,
    batch_size: int,
    *,
    dsl: bool = False,
    chunk_size: int = 1024,
    progress: bool = False,
) -> RetrievalResult:
    """encode_view, then score_view."""
    return score_view(
        method, view, encode_view(method, view, device, batch_size, progress), dsl=dsl, chunk_size=chunk_size
    )
