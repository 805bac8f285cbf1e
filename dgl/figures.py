"""Pictures of a trained model, written by the evaluate stage into plots/figures/:

- retrieval.png: for a few test captions, the top-5 videos (first, middle and last frame each,
  apart, time running left to right), the correct one framed in green and its time-reversed twin
  in orange; at most `MAX_WIDTH_PX` wide, so that MLflow's artifact pane shows it unscaled;
- attention.png (methods with global prompts only): DGL's Figure 5, how the global prompts'
  attention spreads over the frames of a few test videos (see dgl/models/attention_maps.py); the
  title names the block, the prompts and the heads it averages.

Each figure's title names the method and the test split. Not the run: a figure is a DVC output, and
the same params must give the same bytes (a run name holds the time).
Drawn on matplotlib's Agg canvas (no display needed); sizes are fixed: `DPI` and inches per cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from dgl.cache.read import CachedSplit
from dgl.models.attention_maps import global_frame_attention, has_global_prompts
from dgl.models.methods import Method

DPI = 100
FRAME_INCHES = 1.2  # one frame of the attention figure; its bars below take 0.8 of that
ATTENTION_ROW = 1.9  # one video's row of the attention figure (caption, frames, bars), in FRAME_INCHES
CELL_INCHES = (
    1.9,
    1.2,
)  # one ranked video of the retrieval figure: 3 frames of ~0.55 inch (width, height incl. titles)
TITLE_INCHES = 0.6  # the figure's title band
TOP_K = 5
MAX_WIDTH_PX = 1000  # the retrieval figure's width: MLflow's artifact pane shows it without scaling it down
GAP = 1 / 8  # white space between two frames, as a share of a frame's width
MARKS = {"correct": ("tab:green", "correct"), "twin": ("tab:orange", "its twin")}  # colour, label


def mark(video: int, answer: int, twin_of_answer: int) -> str:
    """How a ranked video is marked: "correct", "twin" (the correct video's time-reversed twin, the
    synthetic benchmark's hard negative) or "" (experiments/compare.py marks its page the same way)."""
    return "correct" if video == answer else "twin" if video == twin_of_answer >= 0 else ""


def strip(frames: np.ndarray, gap: float = GAP) -> np.ndarray:
    """uint8 frames (N, 3, S, S) -> one (S, N*S + (N-1)*gap*S, 3) strip, side by side with white gaps."""
    size = frames.shape[-1]
    space = np.full((size, max(1, round(gap * size)), 3), 255, np.uint8)
    pieces = [p for frame in frames.transpose(0, 2, 3, 1) for p in (frame, space)][:-1]
    return np.concatenate(pieces, axis=1)


def method_title(model) -> str:
    """params.model as a reader names it: `dgl (ULP generator)`, `vop_f`."""
    return f"dgl ({model.dgl.generator.upper()} generator)" if model.method == "dgl" else model.method


def global_attention_title(method: Method) -> str:
    """Which attention attention_maps.global_frame_attention shows: block, prompts and heads."""
    blocks = method.clip.visual.transformer.resblocks
    _, prompts = method.prompts()
    return (
        f"last vision block ({len(blocks)} of {len(blocks)}): its {prompts.global_.shape[0]} global prompts' "
        f"attention, averaged over them and {blocks[-1].attn.num_heads} heads\n"
        "summed over each frame's tokens; dashed line: uniform"
    )


def draw_frame_attention(frames: np.ndarray, weights: np.ndarray, titles: list[str], title: str, path: Path) -> None:
    """frames uint8 (N, T, 3, S, S), weights (N, T): each video a row of frames with its weights as bars below."""
    n, t = weights.shape
    fig = Figure(figsize=(max(t, 6) * FRAME_INCHES, n * ATTENTION_ROW * FRAME_INCHES + TITLE_INCHES), dpi=DPI)
    fig.suptitle(title, fontsize=8)
    top = 1 - TITLE_INCHES / fig.get_figheight()
    rows = fig.subfigures(n + 1, 1, height_ratios=[1 - top] + [top / n] * n)[1:]
    for row, sub in enumerate(rows):
        sub.suptitle(f'"{titles[row]}"', fontsize=8)
        grid = sub.add_gridspec(
            2, t, height_ratios=[1, 0.8], wspace=0.15, hspace=0.3, top=0.88, bottom=0.12, left=0.1, right=0.97
        )
        for i in range(t):
            ax = sub.add_subplot(grid[0, i])
            ax.imshow(frames[row, i].transpose(1, 2, 0))
            ax.set_axis_off()
        bars = sub.add_subplot(grid[1, :])
        bars.bar_label(bars.bar(np.arange(t), weights[row], width=0.6, color="tab:orange"), fmt="%.2f", fontsize=6)
        bars.axhline(1 / t, color="grey", linestyle="--", linewidth=0.8)  # uniform attention
        bars.set_xlim(-0.5, t - 0.5)
        bars.set_ylim(0, max(float(weights[row].max()) * 1.3, 1.5 / t))
        bars.set_xticks(np.arange(t), [f"frame {i + 1}" for i in range(t)], fontsize=6)
        bars.set_ylabel("attention\nshare", fontsize=6)
        bars.tick_params(axis="y", labelsize=6)
    fig.savefig(path)


def draw_retrieval(
    frames: np.ndarray,
    titles: list[str],
    ranked: np.ndarray,
    answers: np.ndarray,
    twins: np.ndarray,
    title: str,
    path: Path,
) -> None:
    """frames uint8 (Q, K, T, 3, S, S): per query its ranked videos' frames; per query a title, its
    ranked (Q, K) videos, best first, its correct video, answers (Q,), and that video's twin, twins
    (Q,), -1 where none: each query a row of videos (first, middle and last frame)."""
    q, k = ranked.shape
    num_frames, size = frames.shape[2], frames.shape[-1]
    shown = [0, num_frames // 2, num_frames - 1]
    centres = [(i * (1 + GAP) + 0.5) * size for i in range(len(shown))]
    fig = Figure(figsize=(k * CELL_INCHES[0], q * CELL_INCHES[1] + TITLE_INCHES), dpi=DPI)
    fig.suptitle(title, fontsize=9)
    top = 1 - TITLE_INCHES / fig.get_figheight()
    rows = fig.subfigures(q + 1, 1, height_ratios=[1 - top] + [top / q] * q)[1:]
    for row, sub in enumerate(rows):
        sub.suptitle(titles[row], fontsize=8)
        axes = np.atleast_1d(
            sub.subplots(1, k, gridspec_kw={"wspace": 0.1, "bottom": 0.14, "top": 0.7, "left": 0.02, "right": 0.98})
        )
        for rank, (ax, video) in enumerate(zip(axes, ranked[row]), start=1):
            ax.imshow(strip(frames[row, rank - 1, shown]))
            ax.set_xticks(centres, [f"{i + 1}" for i in shown], fontsize=7)
            ax.set_yticks([])
            colour, label = MARKS.get(mark(video, answers[row], twins[row]), ("black", ""))
            ax.set_title(
                f"#{rank}  {label}".rstrip(), fontsize=8, color=colour, fontweight="bold" if label else "normal"
            )
            if rank == 1:
                ax.set_xlabel("frame, time →", fontsize=7, loc="left")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour if label else "lightgrey")
                spine.set_linewidth(3 if label else 1)
    fig.savefig(path)


def write_figures(
    out_dir: Path,
    method: Method,
    split: CachedSplit,
    text: Tensor,
    video: Tensor,
    device: torch.device,
    count: int = 4,
    title: str = "",
) -> None:
    """text (C, E), video (V, E): L2-normalised features of all the split's captions and videos.
    The examples are `count` captions spread evenly over the split, and their videos. `title`: what
    ran on what, e.g. `dgl (ULP generator) on synthetic test`, heads both figures."""
    queries = np.linspace(0, len(text) - 1, count).round().astype(int)
    answers = split.caption_video[queries].numpy()
    scores = text[queries] @ video.t()  # (Q, V)
    ranked = scores.topk(min(TOP_K, len(video)), dim=1).indices.numpy()
    rank = (scores >= scores[np.arange(count), answers][:, None]).sum(1)  # ties count against, as in metrics.py
    titles = [split.texts[c] for c in queries]
    suffix = f" — {title}" if title else ""
    shown = split.video_pixels(ranked.ravel()).reshape(*ranked.shape, split.num_frames, *split.frame_shape)
    draw_retrieval(
        shown,
        [f'"{t}"  (correct video: rank {r} of {len(video)})' for t, r in zip(titles, rank.tolist())],
        ranked,
        answers,
        split.twins[answers].numpy(),
        f"Text-to-video retrieval, the top {ranked.shape[1]} videos per caption{suffix}",
        out_dir / "retrieval.png",
    )
    if has_global_prompts(method):
        weights = global_frame_attention(method, split.video_batch(answers).to(device)).cpu().numpy()
        draw_frame_attention(
            split.video_pixels(answers),
            weights,
            titles,
            f"Where the global prompts look{suffix}\n{global_attention_title(method)}",
            out_dir / "attention.png",
        )
