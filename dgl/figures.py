"""Pictures of a trained model, written by the evaluate stage into plots/figures/:

- retrieval.png: for a few test captions, the top-5 videos (first, middle and last frame each),
  the correct one framed in green;
- attention.png (methods with global prompts only): DGL's Figure 5, how the global prompts'
  attention spreads over the frames of a few test videos (see dgl/models/attention_maps.py).

Drawn on matplotlib's Agg canvas (no display needed); sizes are fixed: `DPI` and inches per cell.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from dgl.cache import CachedSplit
from dgl.models.attention_maps import global_frame_attention, has_global_prompts
from dgl.models.methods import Method

DPI = 100
FRAME_INCHES = 1.2  # one frame of the attention figure; bars below take 0.6 of that
CELL_INCHES = (2.4, 1.3)  # one ranked video of the retrieval figure (width, height incl. titles)
TOP_K = 5


def image(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (N, 3, S, S) -> one (S, N*S, 3) strip, side by side."""
    return np.concatenate(list(frames.transpose(0, 2, 3, 1)), axis=1)


def draw_frame_attention(frames: np.ndarray, weights: np.ndarray, titles: list[str], path: Path) -> None:
    """frames uint8 (N, T, 3, S, S), weights (N, T): each video a row of frames with its weights as bars below."""
    n, t = weights.shape
    fig = Figure(figsize=(t * FRAME_INCHES, n * 2 * FRAME_INCHES), dpi=DPI)
    for row, sub in enumerate(np.atleast_1d(fig.subfigures(n, 1))):
        sub.suptitle(titles[row], fontsize=8)
        grid = sub.add_gridspec(2, t, height_ratios=[1, 0.6], wspace=0.05, hspace=0.1)
        for i in range(t):
            ax = sub.add_subplot(grid[0, i])
            ax.imshow(image(frames[row, i : i + 1]))
            ax.set_axis_off()
        bars = sub.add_subplot(grid[1, :])
        bars.bar_label(bars.bar(np.arange(t), weights[row], width=0.6, color="tab:orange"), fmt="%.2f", fontsize=6)
        bars.axhline(1 / t, color="grey", linestyle="--", linewidth=0.8)  # uniform attention
        bars.set_xlim(-0.5, t - 0.5)
        bars.set_xticks(np.arange(t), [f"frame {i + 1}" for i in range(t)], fontsize=6)
        bars.tick_params(axis="y", labelsize=6)
    fig.savefig(path)


def draw_retrieval(frames: np.ndarray, titles: list[str], ranked: np.ndarray, answers: np.ndarray,
                   path: Path) -> None:
    """frames uint8 (V, T, 3, S, S); per query a title, its ranked (Q, K) videos, best first, and its
    correct video, answers (Q,): each query a row of videos (first, middle and last frame)."""
    q, k = ranked.shape
    num_frames = frames.shape[1]
    shown = [0, num_frames // 2, num_frames - 1]
    fig = Figure(figsize=(k * CELL_INCHES[0], q * CELL_INCHES[1]), dpi=DPI)
    for row, sub in enumerate(np.atleast_1d(fig.subfigures(q, 1))):
        sub.suptitle(titles[row], fontsize=8)
        for rank, (ax, video) in enumerate(zip(np.atleast_1d(sub.subplots(1, k)), ranked[row]), start=1):
            ax.imshow(image(frames[video, shown]))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{rank}", fontsize=7)
            hit = video == answers[row]
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if hit else "lightgrey")
                spine.set_linewidth(4 if hit else 1)
    fig.savefig(path)


def write_figures(out_dir: Path, method: Method, split: CachedSplit, text: Tensor, video: Tensor,
                  device: torch.device, count: int = 4) -> None:
    """text (C, E), video (V, E): L2-normalised features of all the split's captions and videos.
    The examples are `count` captions spread evenly over the split, and their videos."""
    queries = np.linspace(0, len(text) - 1, count).round().astype(int)
    answers = split.caption_video[queries].numpy()
    scores = text[queries] @ video.t()  # (Q, V)
    ranked = scores.topk(min(TOP_K, len(video)), dim=1).indices.numpy()
    rank = (scores >= scores[np.arange(count), answers][:, None]).sum(1)  # ties count against, as in metrics.py
    titles = [split.texts[c] for c in queries]
    draw_retrieval(split.frames, [f'"{t}"  (correct video: rank {r})' for t, r in zip(titles, rank.tolist())],
                   ranked, answers, out_dir / "retrieval.png")
    if has_global_prompts(method):
        weights = global_frame_attention(method, split.video_batch(answers).to(device)).cpu().numpy()
        draw_frame_attention(split.frames[answers], weights, titles, out_dir / "attention.png")
