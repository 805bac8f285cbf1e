"""Text-video retrieval metrics (t2v and v2t) in bounded memory.

S is the (C, V) cosine similarity of C captions and V videos; features arrive L2-normalised, so S is
a matrix product. S is never built whole (at 100k x 100k float32 it would be 40 GB): both directions
are ranked in one pass over tiles of `chunk_size` captions by up to TILE_SIZE / chunk_size videos
(`retrieval_ranks`), each computed once, so ranking costs little more than the product itself
(bench/eval_speed.py), in O(TILE_SIZE + C + V) extra memory (a tile and its mask: 128 MiB). DSL's
softmax normalisers and the twins' content ranks take their own passes over `chunk_size` rows of S:
O(chunk_size * max(C, V)) (1024 x 100k float32 is 0.4 GB).

- t2v: every caption ranks all V videos.
- v2t: every video ranks the V caption groups (a video's captions); a group scores its best caption.

Ranks are 1-based and pessimistic on ties: a query's rank is the number of candidates scoring >= its
true match (the match included). The inherited CLIP4Clip code locates the true score in a sorted row:
`compute_metrics` keeps one hit per tied candidate, so the rank list grows longer than the query list
and its ranks no longer line up with queries, and the multi-caption path takes the position an
argsort happens to give, which can put the match first among its ties. A collapsed model (constant
similarity) must score the worst rank, never a lucky one, so ties here always count against the query.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

REPORTED_K = (1, 5, 10)
CURVE_MAX_K = 50
# A block of videos spans at least this many: the true scores come from a chunk's product with its
# block, and narrower products take the CPU BLAS's small-matrix path, which rounds differently from
# the wide ones ranking has always used: ranks decided by a float rounding (twins that an order-blind
# method encodes alike) would then move with chunk_size.
MIN_BLOCK_VIDEOS = 1024
TILE_SIZE = 2**24  # scores in a tile of the ranking pass (64 MiB float32): few, long BLAS and ATen calls


@dataclass(frozen=True)
class RetrievalResult:
    metrics: dict[str, float]  # flat: t2v_R1 ... v2t_MnR, t2v_R1_<category>, content_R1 (+ _<category>),
    #                            pair_acc, pair_acc_<category>, pair_acc_words, pair_acc_order
    curves: dict[str, list[float]]  # "t2v", "v2t": recall@K in %, K = 1 .. min(50, V)
    t2v_ranks: np.ndarray  # (C,) 1-based rank of each caption's video
    v2t_ranks: np.ndarray  # (V,) 1-based rank of each video's caption group


@torch.no_grad()
def evaluate_retrieval(
    text_feats: Tensor,
    video_feats: Tensor,
    caption_video: Tensor,
    *,
    categories: Sequence[str] | None = None,
    twins: Tensor | None = None,
    wordings: Sequence[str] | None = None,
    dsl: bool = False,
    chunk_size: int = 1024,
    logit_scale: float = 100.0,
) -> RetrievalResult:
    """Retrieval metrics of L2-normalised text (C, D) and video (V, D) features.

    caption_video (C,): index of each caption's video; every video needs at least one caption.
    categories (C,): per-category t2v R@1 (`t2v_R1_<category>`); empty strings are left out.
    twins (V,): each video's time-reversed twin, -1 for none; gives `pair_acc` (and per category): the
        share of captions with a twin whose own video beats the twin on plain cosine (a tie, within
        float rounding, counts 1/2);
        and `content_R1` (and per category): t2v R@1 where the twin also counts as a hit, i.e. what a
        model gets right without telling the order of frames.
    wordings (C,): `dgl.data.twins.twin_wordings` of each caption; gives `pair_acc_words` and `pair_acc_order`.
    dsl: rank on dual-softmax re-weighted scores, sim * softmax over all queries of sim * logit_scale, in
        each direction over its own queries (t2v: over captions, per video; v2t: over videos, per caption).
        The DGL reference code (where DSL is commented out) re-weights once, over captions, for both.
    """
    device = text_feats.device
    caption_video = caption_video.to(device=device, dtype=torch.long)
    check_inputs(text_feats, video_feats, caption_video, categories, twins, chunk_size, wordings)
    # DSL's softmax runs over all queries: per video for t2v (V,), per caption for v2t (C,).
    t2v_normaliser = dsl_normaliser(text_feats, video_feats, chunk_size, logit_scale) if dsl else None
    v2t_normaliser = dsl_normaliser(video_feats, text_feats, chunk_size, logit_scale) if dsl else None
    t2v_ranks, v2t_ranks = (
        ranks.cpu().numpy()
        for ranks in retrieval_ranks(
            text_feats,
            video_feats,
            caption_video,
            *ranking_tiles(caption_video, len(video_feats), chunk_size),
            t2v_normaliser,
            v2t_normaliser,
            logit_scale,
        )
    )
    metrics = rank_metrics("t2v", t2v_ranks) | rank_metrics("v2t", v2t_ranks)
    caption_categories = np.asarray(categories if categories is not None else [""] * len(text_feats), dtype=str)
    metrics |= category_means("t2v_R1", 100.0 * (t2v_ranks == 1), caption_categories)
    if twins is not None:
        twins = twins.to(device=device, dtype=torch.long)
        content = 100.0 * (
            content_ranks(text_feats, video_feats, caption_video, twins, chunk_size, t2v_normaliser, logit_scale)
            .cpu()
            .numpy()
            == 1
        )
        metrics |= {"content_R1": float(content.mean())} | category_means("content_R1", content, caption_categories)
        metrics |= pair_accuracy(text_feats, video_feats, caption_video, twins, caption_categories, wordings)
    ks = np.arange(1, min(CURVE_MAX_K, len(video_feats)) + 1)
    curves = {"t2v": recall_at(t2v_ranks, ks).tolist(), "v2t": recall_at(v2t_ranks, ks).tolist()}
    return RetrievalResult(metrics, curves, t2v_ranks, v2t_ranks)


def check_inputs(
    text: Tensor,
    video: Tensor,
    caption_video: Tensor,
    categories: Sequence[str] | None,
    twins: Tensor | None,
    chunk_size: int,
    wordings: Sequence[str] | None = None,
) -> None:
    num_captions, num_videos = len(text), len(video)
    if text.ndim != 2 or video.ndim != 2 or text.shape[1] != video.shape[1]:
        raise ValueError(f"need text (C, D) and video (V, D) features, got {tuple(text.shape)}, {tuple(video.shape)}")
    if caption_video.shape != (num_captions,):
        raise ValueError(f"caption_video must be ({num_captions},), got {tuple(caption_video.shape)}")
    if num_captions and (caption_video.min() < 0 or caption_video.max() >= num_videos):
        raise ValueError(f"caption_video holds indices outside [0, {num_videos})")
    if num_videos == 0 or torch.bincount(caption_video, minlength=num_videos).min() == 0:
        raise ValueError("every video needs at least one caption (v2t ranks caption groups)")
    if not (all_finite(text) and all_finite(video)):
        raise ValueError("features hold NaN or inf: ranks would be meaningless")
    if categories is not None and len(categories) != num_captions:
        raise ValueError(f"categories must have one entry per caption ({num_captions}), got {len(categories)}")
    if twins is not None and (twins.shape != (num_videos,) or twins.min() < -1 or twins.max() >= num_videos):
        raise ValueError(f"twins must be ({num_videos},) with video indices or -1")
    if wordings is not None and (twins is None or len(wordings) != num_captions):
        raise ValueError(f"wordings need twins and one entry per caption ({num_captions})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def all_finite(features: Tensor) -> bool:
    """NaN and inf reach the extremes (amax and amin propagate NaN): two reductions, no (N, D) temporaries."""
    return features.numel() == 0 or bool(torch.isfinite(torch.stack([features.amax(), features.amin()])).all())


def dsl_normaliser(queries: Tensor, gallery: Tensor, chunk_size: int, logit_scale: float) -> Tensor:
    """log sum over ALL queries q of exp(logit_scale * <q, g>), for each gallery item g: (G,).

    First pass of dual softmax: a chunk of queries only sees part of each column's softmax.
    """
    total = torch.full((len(gallery),), -torch.inf, dtype=gallery.dtype, device=gallery.device)
    for chunk in queries.split(chunk_size):
        total = torch.logaddexp(total, torch.logsumexp((chunk @ gallery.T).mul_(logit_scale), dim=0))  # (G,)
    return total


def dual_softmax(sim: Tensor, log_normaliser: Tensor, logit_scale: float) -> Tensor:
    """sim (q, G) * softmax over all queries of sim * logit_scale, in place to keep one copy of sim."""
    return sim.mul(logit_scale).sub_(log_normaliser).exp_().mul_(sim)


def query_scores(queries: Tensor, gallery: Tensor, log_normaliser: Tensor | None, logit_scale: float) -> Tensor:
    """Scores (q, G) that the queries rank the gallery by: cosine, or its DSL re-weighting."""
    sim = queries @ gallery.T  # (q, G)
    return sim if log_normaliser is None else dual_softmax(sim, log_normaliser, logit_scale)


def query_chunks(num_queries: int, chunk_size: int, device: torch.device) -> tuple[Tensor, ...]:
    return torch.arange(num_queries, device=device).split(chunk_size)


@dataclass(frozen=True)
class CaptionChunk:
    rows: slice  # positions among the captions sorted by video: whole caption groups, <= chunk_size
    #              of them unless one video alone has more
    videos: slice  # the videos they describe


@dataclass(frozen=True)
class VideoBlock:
    videos: slice  # consecutive videos, block_videos of them (the last block up to twice as many)
    chunks: tuple[CaptionChunk, ...]  # these videos' captions


def video_blocks(caption_video: Tensor, num_videos: int, chunk_size: int, block_videos: int) -> list[VideoBlock]:
    """The videos cut into blocks of `block_videos` (a shorter remainder joins the last block), and
    each block's captions into chunks of <= `chunk_size`, never splitting a video's captions (v2t
    takes the best of them within one tile)."""
    group_ends = torch.bincount(caption_video, minlength=num_videos).cumsum(0).tolist()  # sorted by video
    starts = list(range(0, num_videos, block_videos))
    if len(starts) > 1 and num_videos - starts[-1] < block_videos:
        starts.pop()
    blocks = []
    for start, stop in zip(starts, starts[1:] + [num_videos]):
        chunks, video = [], start
        while video < stop:
            first_row = group_ends[video - 1] if video else 0
            last = max(video + 1, bisect.bisect_right(group_ends, first_row + chunk_size, video, stop))
            chunks.append(CaptionChunk(slice(first_row, group_ends[last - 1]), slice(video, last)))
            video = last
        blocks.append(VideoBlock(slice(start, stop), tuple(chunks)))
    return blocks


def column_spans(blocks: list[VideoBlock], span_videos: int) -> list[slice]:
    """Consecutive whole blocks, up to `span_videos` videos together (at least one block each)."""
    spans = [blocks[0].videos]
    for block in blocks[1:]:
        if block.videos.stop - spans[-1].start <= span_videos:
            spans[-1] = slice(spans[-1].start, block.videos.stop)
        else:
            spans.append(block.videos)
    return spans


def ranking_tiles(caption_video: Tensor, num_videos: int, chunk_size: int) -> tuple[list[VideoBlock], list[slice]]:
    """The blocks and column spans `retrieval_ranks` goes over: tiles of about TILE_SIZE scores."""
    blocks = video_blocks(caption_video, num_videos, chunk_size, max(chunk_size, MIN_BLOCK_VIDEOS))
    return blocks, column_spans(blocks, TILE_SIZE // chunk_size)


def shaped(buffer: Tensor, rows: int, cols: int) -> Tensor:
    """A (rows, cols) tensor on the front of a flat reused buffer."""
    return buffer[: rows * cols].view(rows, cols)


def tile_scores(
    queries: Tensor,
    videos: Tensor,
    t2v_normaliser: Tensor | None,
    v2t_normaliser: Tensor | None,
    logit_scale: float,
    out: Tensor,
) -> tuple[Tensor, Tensor]:
    """t2v and v2t scores (q, w) of a tile: captions (q, D) against videos (w, D), the similarities
    written into `out`; the same tensor unless DSL re-weights each direction by its own softmax
    (normalisers: (w,) and (q,))."""
    sim = torch.mm(queries, videos.T, out=shaped(out, len(queries), len(videos)))  # (q, w)
    if t2v_normaliser is None:
        return sim, sim
    return (dual_softmax(sim, t2v_normaliser, logit_scale), dual_softmax(sim, v2t_normaliser[:, None], logit_scale))


def best_caption_scores(scores: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """(q, w) caption scores -> (num_groups, w): each video's caption group scores its best caption."""
    if len(scores) == num_groups:  # one caption per video, sorted: each row is its own group
        return scores
    best = torch.full((num_groups, scores.shape[1]), -torch.inf, dtype=scores.dtype, device=scores.device)
    return best.scatter_reduce_(0, group[:, None].expand_as(scores), scores, reduce="amax")


def count_at_least(scores: Tensor, threshold: Tensor, dim: int, mask: Tensor, ones: Tensor) -> Tensor:
    """How many scores along `dim` are >= threshold (int32). The mask is written as 0/1 into a reused
    float32 buffer and summed by a matrix-vector product with ones (BLAS): a bool mask's integer sum
    converts it first, and torch's float sum across rows is slower, both several times; float32 sums of
    0/1 are exact below 2**24 (TILE_SIZE) in any order."""
    mask = torch.ge(scores, threshold, out=shaped(mask, *scores.shape))  # (q, w)
    counts = torch.mv(mask, ones[: mask.shape[1]]) if dim == 1 else torch.mv(mask.T, ones[: mask.shape[0]])
    return counts.to(torch.int32)


def retrieval_ranks(
    text: Tensor,
    video: Tensor,
    caption_video: Tensor,
    blocks: list[VideoBlock],
    spans: list[slice],
    t2v_normaliser: Tensor | None,
    v2t_normaliser: Tensor | None,
    logit_scale: float,
) -> tuple[Tensor, Tensor]:
    """1-based t2v ranks (C,) and v2t ranks (V,) from one pass over S (`ranking_tiles`).

    First the true scores, each caption chunk's product with its block of videos (block / V of S
    more: 1% at 100k videos). Then every chunk against every span of columns, each tile once: a
    caption counts the videos in its row scoring >= its true score, a video the caption groups in its
    column scoring >= its own group's. A query's own match is counted by position (set to +inf), so
    exactly once; its rivals are compared with its true score, the very float the wider tile holds
    wherever the BLAS rounds a dot product the same at any product width (so on CPU from
    MIN_BLOCK_VIDEOS up; a small gallery is one tile, computed once).
    """
    order = torch.argsort(caption_video, stable=True)  # captions grouped by video, videos in order
    own_video = caption_video[order]
    chunks = [chunk for block in blocks for chunk in block.chunks]
    t2v = torch.zeros(len(text), dtype=torch.int32, device=text.device)  # sorted like `order`
    v2t = torch.zeros(len(video), dtype=torch.int32, device=video.device)
    t2v_true = torch.empty(len(text), dtype=text.dtype, device=text.device)  # sorted like `order`
    v2t_true = torch.full((len(video),), -torch.inf, dtype=video.dtype, device=video.device)
    rows, width = max(c.rows.stop - c.rows.start for c in chunks), max(s.stop - s.start for s in spans)
    sim_buffer = torch.empty(rows * width, dtype=text.dtype, device=text.device)
    mask_buffer = torch.empty(rows * width, dtype=torch.float32, device=text.device)
    ones = torch.ones(max(rows, width), dtype=torch.float32, device=text.device)

    def scores(chunk: CaptionChunk, videos: slice, queries: Tensor) -> tuple[Tensor, Tensor]:
        return tile_scores(
            queries,
            video[videos],
            None if t2v_normaliser is None else t2v_normaliser[videos],
            None if v2t_normaliser is None else v2t_normaliser[order[chunk.rows]],
            logit_scale,
            sim_buffer,
        )

    def count(chunk: CaptionChunk, span: slice, t2v_scores: Tensor, v2t_scores: Tensor) -> None:
        own = own_video[chunk.rows]
        if span.start <= chunk.videos.start < span.stop:  # the tile holding this chunk's own matches
            t2v_scores.scatter_(1, (own - span.start)[:, None], torch.inf)
            v2t_scores.scatter_(1, (own - span.start)[:, None], torch.inf)
        groups = best_caption_scores(v2t_scores, own - chunk.videos.start, chunk.videos.stop - chunk.videos.start)
        t2v[chunk.rows] += count_at_least(t2v_scores, t2v_true[chunk.rows, None], 1, mask_buffer, ones)
        v2t[span] += count_at_least(groups, v2t_true[span], 0, mask_buffer, ones)

    for block in blocks:
        for chunk in block.chunks:
            t2v_scores, v2t_scores = scores(chunk, block.videos, text[order[chunk.rows]])
            at_own = (own_video[chunk.rows] - block.videos.start)[:, None]
            t2v_true[chunk.rows] = t2v_scores.gather(1, at_own)[:, 0]
            v2t_true.scatter_reduce_(0, own_video[chunk.rows], v2t_scores.gather(1, at_own)[:, 0], reduce="amax")
    if len(chunks) == 1 and len(spans) == 1:  # the one tile is the one just computed
        count(chunks[0], spans[0], t2v_scores, v2t_scores)
    else:
        for chunk in chunks:
            queries = text[order[chunk.rows]]  # (q, D)
            for span in spans:
                count(chunk, span, *scores(chunk, span, queries))
    return torch.empty_like(t2v).index_copy_(0, order, t2v), v2t


def content_ranks(
    text: Tensor,
    video: Tensor,
    caption_video: Tensor,
    twins: Tensor,
    chunk_size: int,
    log_normaliser: Tensor | None,
    logit_scale: float,
) -> Tensor:
    """1-based rank (C,) of each caption's video and its twin taken as one candidate: how many other
    videos score >= the better of the two, plus one."""

    def ranks(rows: Tensor) -> Tensor:
        scores = query_scores(text[rows], video, log_normaliser, logit_scale)  # (q, V)
        own, twin = caption_video[rows], twins[caption_video[rows]]
        best = scores.gather(1, own[:, None])  # (q, 1)
        has_twin = twin >= 0
        best[has_twin] = torch.maximum(best[has_twin], scores[has_twin].gather(1, twin[has_twin, None]))
        scores.scatter_(1, own[:, None], -torch.inf)
        scores[has_twin] = scores[has_twin].scatter(1, twin[has_twin, None], -torch.inf)
        return (scores >= best).sum(dim=1, dtype=torch.int32) + 1

    # a comprehension: each chunk's (q, V) temporaries are freed before the next chunk's are made
    return torch.cat([ranks(rows) for rows in query_chunks(len(text), chunk_size, text.device)])  # (C,)


def recall_at(ranks: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """% of queries ranked within the top k, for each k."""
    return 100.0 * np.searchsorted(np.sort(ranks), ks, side="right") / len(ranks)


def rank_metrics(direction: str, ranks: np.ndarray) -> dict[str, float]:
    recalls = recall_at(ranks, np.array(REPORTED_K))
    return {f"{direction}_R{k}": float(r) for k, r in zip(REPORTED_K, recalls)} | {
        f"{direction}_MdR": float(np.median(ranks)),
        f"{direction}_MnR": float(np.mean(ranks)),
    }


def category_means(name: str, values: np.ndarray, categories: np.ndarray) -> dict[str, float]:
    """`<name>_<category>`: mean of values (one per caption) over each non-empty category."""
    return {f"{name}_{c}": float(values[categories == c].mean()) for c in np.unique(categories) if c}


TIE = 1e-6  # cosines closer than this are a tie: float rounding, e.g. attention summing frames in another order


def pair_wins(text: Tensor, video: Tensor, caption_video: Tensor, twins: Tensor) -> np.ndarray:
    """For each caption with a twin: 1 where its own video beats the twin on plain cosine, 1/2 on a
    tie (within TIE, so a method blind to frame order scores exactly 1/2 on exact twins)."""
    twin = twins[caption_video]  # (C,)
    has_twin = twin >= 0
    queries = text[has_twin]  # (n, D)
    own = torch.linalg.vecdot(queries, video[caption_video[has_twin]])  # (n,)
    other = torch.linalg.vecdot(queries, video[twin[has_twin]])  # (n,)
    tie = (own - other).abs() <= TIE
    return torch.where(tie, 0.5, (own > other).double()).cpu().numpy()


def pair_accuracy(
    text: Tensor,
    video: Tensor,
    caption_video: Tensor,
    twins: Tensor,
    categories: np.ndarray,
    wordings: Sequence[str] | None = None,
) -> dict[str, float]:
    """Does a caption prefer its own video to its time-reversed twin? `pair_acc`, per category and, with
    wordings, per wording; empty when no video has a twin.

    Plain cosine, also under DSL: it probes the features, and twin features equal up to float
    rounding give exactly 1/2 (`pair_wins`).
    """
    has_twin = (twins[caption_video] >= 0).cpu().numpy()
    if not has_twin.any():
        return {}
    wins = pair_wins(text, video, caption_video, twins)
    metrics = {"pair_acc": float(wins.mean())} | category_means("pair_acc", wins, categories[has_twin])
    if wordings is not None:
        metrics |= category_means("pair_acc", wins, np.asarray(wordings, dtype=str)[has_twin])
    return metrics
