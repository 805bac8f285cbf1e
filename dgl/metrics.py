"""Text-video retrieval metrics (t2v and v2t) in bounded memory.

S is the (C, V) cosine similarity of C captions and V videos; features arrive L2-normalised, so S is
a matrix product. S is never built whole: queries are scored `chunk_size` rows at a time, so the
extra memory is O(chunk_size * max(C, V)) (1024 x 100k float32 is 0.4 GB; all of S would be 40 GB).

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

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

REPORTED_K = (1, 5, 10)
CURVE_MAX_K = 50


@dataclass(frozen=True)
class RetrievalResult:
    metrics: dict[str, float]  # flat: t2v_R1 ... v2t_MnR, t2v_R1_<category>, content_R1 (+ _<category>),
    #                            pair_acc, pair_acc_<category>, pair_acc_words, pair_acc_order
    curves: dict[str, list[float]]  # "t2v", "v2t": recall@K in %, K = 1 .. min(50, V)
    t2v_ranks: np.ndarray  # (C,) 1-based rank of each caption's video
    v2t_ranks: np.ndarray  # (V,) 1-based rank of each video's caption group


@torch.no_grad()
def evaluate_retrieval(text_feats: Tensor, video_feats: Tensor, caption_video: Tensor, *,
                       categories: Sequence[str] | None = None, twins: Tensor | None = None,
                       wordings: Sequence[str] | None = None, dsl: bool = False, chunk_size: int = 1024, logit_scale: float = 100.0) -> RetrievalResult:
    """Retrieval metrics of L2-normalised text (C, D) and video (V, D) features.

    caption_video (C,): index of each caption's video; every video needs at least one caption.
    categories (C,): per-category t2v R@1 (`t2v_R1_<category>`); empty strings are left out.
    twins (V,): each video's time-reversed twin, -1 for none; gives `pair_acc` (and per category): the
        share of captions with a twin whose own video beats the twin on plain cosine (a tie, within
        float rounding, counts 1/2);
        and `content_R1` (and per category): t2v R@1 where the twin also counts as a hit, i.e. what a
        model gets right without telling the order of frames.
    wordings (C,): `twin_wordings` of each caption; gives `pair_acc_words` and `pair_acc_order`.
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
    t2v_ranks = text_to_video_ranks(text_feats, video_feats, caption_video, chunk_size, t2v_normaliser,
                                    logit_scale).cpu().numpy()
    v2t_ranks = video_to_text_ranks(text_feats, video_feats, caption_video, chunk_size, v2t_normaliser,
                                    logit_scale).cpu().numpy()
    metrics = rank_metrics("t2v", t2v_ranks) | rank_metrics("v2t", v2t_ranks)
    caption_categories = np.asarray(categories if categories is not None else [""] * len(text_feats), dtype=str)
    metrics |= category_means("t2v_R1", 100.0 * (t2v_ranks == 1), caption_categories)
    if twins is not None:
        twins = twins.to(device=device, dtype=torch.long)
        content = 100.0 * (content_ranks(text_feats, video_feats, caption_video, twins, chunk_size,
                                         t2v_normaliser, logit_scale).cpu().numpy() == 1)
        metrics |= {"content_R1": float(content.mean())} | category_means("content_R1", content, caption_categories)
        metrics |= pair_accuracy(text_feats, video_feats, caption_video, twins, caption_categories)
        if wordings is not None:
            wins = pair_wins(text_feats, video_feats, caption_video, twins)
            has_twin = (twins[caption_video] >= 0).cpu().numpy()
            metrics |= category_means("pair_acc", wins, np.asarray(wordings, dtype=str)[has_twin])
    ks = np.arange(1, min(CURVE_MAX_K, len(video_feats)) + 1)
    curves = {"t2v": recall_at(t2v_ranks, ks).tolist(), "v2t": recall_at(v2t_ranks, ks).tolist()}
    return RetrievalResult(metrics, curves, t2v_ranks, v2t_ranks)


def check_inputs(text: Tensor, video: Tensor, caption_video: Tensor, categories: Sequence[str] | None,
                 twins: Tensor | None, chunk_size: int, wordings: Sequence[str] | None = None) -> None:
    num_captions, num_videos = len(text), len(video)
    if text.ndim != 2 or video.ndim != 2 or text.shape[1] != video.shape[1]:
        raise ValueError(f"need text (C, D) and video (V, D) features, got {tuple(text.shape)}, {tuple(video.shape)}")
    if caption_video.shape != (num_captions,):
        raise ValueError(f"caption_video must be ({num_captions},), got {tuple(caption_video.shape)}")
    if num_captions and (caption_video.min() < 0 or caption_video.max() >= num_videos):
        raise ValueError(f"caption_video holds indices outside [0, {num_videos})")
    if num_videos == 0 or torch.bincount(caption_video, minlength=num_videos).min() == 0:
        raise ValueError("every video needs at least one caption (v2t ranks caption groups)")
    if not (torch.isfinite(text).all() and torch.isfinite(video).all()):
        raise ValueError("features hold NaN or inf: ranks would be meaningless")
    if categories is not None and len(categories) != num_captions:
        raise ValueError(f"categories must have one entry per caption ({num_captions}), got {len(categories)}")
    if twins is not None and (twins.shape != (num_videos,) or twins.min() < -1 or twins.max() >= num_videos):
        raise ValueError(f"twins must be ({num_videos},) with video indices or -1")
    if wordings is not None and (twins is None or len(wordings) != num_captions):
        raise ValueError(f"wordings need twins and one entry per caption ({num_captions})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


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


def pessimistic_ranks(scores: Tensor, true_index: Tensor) -> Tensor:
    """1-based rank (q,) of each row's true candidate: how many candidates score >= it."""
    true_score = scores.gather(1, true_index[:, None])  # (q, 1)
    return (scores >= true_score).sum(dim=1, dtype=torch.int32)  # int32: an int64 sum would copy (q, N) as int64


def query_chunks(num_queries: int, chunk_size: int, device: torch.device) -> tuple[Tensor, ...]:
    return torch.arange(num_queries, device=device).split(chunk_size)


# The chunk loops are comprehensions so that each chunk's (q, N) temporaries are freed before the next
# chunk's are made: a loop variable would keep the last chunk alive while the next one is computed.
def text_to_video_ranks(text: Tensor, video: Tensor, caption_video: Tensor, chunk_size: int,
                        log_normaliser: Tensor | None, logit_scale: float) -> Tensor:
    return torch.cat([pessimistic_ranks(query_scores(text[rows], video, log_normaliser, logit_scale),  # (q, V)
                                         caption_video[rows])
                      for rows in query_chunks(len(text), chunk_size, text.device)])  # (C,)


def video_to_text_ranks(text: Tensor, video: Tensor, caption_video: Tensor, chunk_size: int,
                        log_normaliser: Tensor | None, logit_scale: float) -> Tensor:
    return torch.cat([pessimistic_ranks(caption_group_scores(video[rows], text, caption_video, len(video),
                                                             log_normaliser, logit_scale), rows)
                      for rows in query_chunks(len(video), chunk_size, video.device)])  # (V,)


def content_ranks(text: Tensor, video: Tensor, caption_video: Tensor, twins: Tensor, chunk_size: int,
                  log_normaliser: Tensor | None, logit_scale: float) -> Tensor:
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

    return torch.cat([ranks(rows) for rows in query_chunks(len(text), chunk_size, text.device)])  # (C,)


def caption_group_scores(videos: Tensor, text: Tensor, caption_video: Tensor, num_videos: int,
                         log_normaliser: Tensor | None, logit_scale: float) -> Tensor:
    """Each video query's score (q, V) for each caption group: its best caption's score."""
    scores = query_scores(videos, text, log_normaliser, logit_scale)  # (q, C)
    best = torch.full((len(videos), num_videos), -torch.inf, dtype=scores.dtype, device=scores.device)
    return best.scatter_reduce_(1, caption_video.expand_as(scores), scores, reduce="amax")


def recall_at(ranks: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """% of queries ranked within the top k, for each k."""
    return 100.0 * np.searchsorted(np.sort(ranks), ks, side="right") / len(ranks)


def rank_metrics(direction: str, ranks: np.ndarray) -> dict[str, float]:
    recalls = recall_at(ranks, np.array(REPORTED_K))
    return ({f"{direction}_R{k}": float(r) for k, r in zip(REPORTED_K, recalls)}
            | {f"{direction}_MdR": float(np.median(ranks)), f"{direction}_MnR": float(np.mean(ranks))})


def category_means(name: str, values: np.ndarray, categories: np.ndarray) -> dict[str, float]:
    """`<name>_<category>`: mean of values (one per caption) over each non-empty category."""
    return {f"{name}_{c}": float(values[categories == c].mean()) for c in np.unique(categories) if c}


def twin_wordings(texts: Sequence[str], caption_video: Sequence[int], twins: Sequence[int]) -> list[str]:
    """Per caption: `words` where it differs from every caption of its video's twin in its words
    ("moves up" / "moves down"), `order` where one of the twin's captions has the same words in another
    order ("from left to right" / "from right to left"), "" for a video without a twin. A text tower
    that reads words but not their order can tell only the first kind apart."""
    bags: dict[int, set[tuple[str, ...]]] = {}
    for text, video in zip(texts, caption_video):
        bags.setdefault(int(video), set()).add(tuple(sorted(text.split())))
    wordings = []
    for text, video in zip(texts, caption_video):
        twin = int(twins[int(video)])
        wordings.append("" if twin < 0 else "order" if tuple(sorted(text.split())) in bags.get(twin, set()) else "words")
    return wordings


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


def pair_accuracy(text: Tensor, video: Tensor, caption_video: Tensor, twins: Tensor,
                  categories: np.ndarray) -> dict[str, float]:
    """Does a caption prefer its own video to its time-reversed twin? Empty when no video has a twin.

    Plain cosine, also under DSL: it probes the features, and twin features equal up to float
    rounding give exactly 1/2 (`pair_wins`).
    """
    has_twin = (twins[caption_video] >= 0).cpu().numpy()
    if not has_twin.any():
        return {}
    wins = pair_wins(text, video, caption_video, twins)
    return {"pair_acc": float(wins.mean())} | category_means("pair_acc", wins, categories[has_twin])
