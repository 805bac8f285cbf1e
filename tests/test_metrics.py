"""Retrieval metrics: chunked evaluation against a dense reference, ties, grouping, DSL, memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgl.data.twins import twin_wordings
from dgl.metrics import column_spans, evaluate_retrieval, retrieval_ranks, video_blocks

ROOT = Path(__file__).resolve().parents[1]


def features_for(sim: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and video features whose product is exactly `sim` (C, V): text = sim, video = identity."""
    sim = torch.tensor(sim, dtype=torch.float64)
    return sim, torch.eye(sim.shape[1], dtype=torch.float64)


def dense_ranks(scores: torch.Tensor, true_index: torch.Tensor) -> np.ndarray:
    """Pessimistic 1-based ranks (Q,) from a full score matrix (Q, N)."""
    true_score = scores[torch.arange(len(scores)), true_index]
    return (scores >= true_score[:, None]).sum(dim=1).numpy()


def dense_reference(
    text: torch.Tensor,
    video: torch.Tensor,
    caption_video: torch.Tensor,
    *,
    dsl: bool = False,
    logit_scale: float = 100.0,
) -> tuple[np.ndarray, np.ndarray]:
    """t2v ranks (C,) and v2t ranks (V,), built from the whole similarity matrix at once."""
    sim = text @ video.T  # (C, V)
    t2v_scores, v2t_scores = sim, sim.T  # (C, V), (V, C): queries along dim 0
    if dsl:
        t2v_scores = t2v_scores * torch.softmax(t2v_scores * logit_scale, dim=0)
        v2t_scores = v2t_scores * torch.softmax(v2t_scores * logit_scale, dim=0)
    num_videos = len(video)
    groups = torch.stack([v2t_scores[:, caption_video == v].max(dim=1).values for v in range(num_videos)], dim=1)
    return dense_ranks(t2v_scores, caption_video), dense_ranks(groups, torch.arange(num_videos))


def dense_metrics(direction: str, ranks: np.ndarray) -> dict[str, float]:
    return {f"{direction}_R{k}": 100.0 * np.count_nonzero(ranks <= k) / len(ranks) for k in (1, 5, 10)} | {
        f"{direction}_MdR": float(np.median(ranks)),
        f"{direction}_MnR": float(np.mean(ranks)),
    }


def multi_caption_videos(num_captions: int, num_videos: int, generator: torch.Generator) -> torch.Tensor:
    """(C,) video index per caption, shuffled, every video with at least one caption."""
    extra = torch.randint(0, num_videos, (num_captions - num_videos,), generator=generator)
    return torch.cat([torch.arange(num_videos), extra])[torch.randperm(num_captions, generator=generator)]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1000])
def test_chunked_equals_dense_with_multi_caption_videos_and_ties(chunk_size):
    # Small integer features: every dot product is exact in float32 whatever the summation order, so
    # chunked and dense scores agree bit for bit, and the many exact ties exercise tie handling.
    gen = torch.Generator().manual_seed(0)
    num_captions, num_videos = 53, 17
    text = torch.randint(-2, 3, (num_captions, 8), generator=gen).float()
    video = torch.randint(-2, 3, (num_videos, 8), generator=gen).float()
    caption_video = multi_caption_videos(num_captions, num_videos, gen)
    result = evaluate_retrieval(text, video, caption_video, chunk_size=chunk_size)
    t2v, v2t = dense_reference(text, video, caption_video)
    np.testing.assert_array_equal(result.t2v_ranks, t2v)
    np.testing.assert_array_equal(result.v2t_ranks, v2t)
    assert result.metrics == dense_metrics("t2v", t2v) | dense_metrics("v2t", v2t)


def argsort_ranks(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """1-based ranks (Q,) by sorting each row of scores (Q, N), best first, with the true candidate
    placed after every candidate tied with it."""
    ranks = []
    for row, true in zip(scores, true_index):
        order = np.lexsort((np.arange(len(row)) == true, -row))  # by score, then the true one last
        ranks.append(int(np.flatnonzero(order == true)[0]) + 1)
    return np.array(ranks)


def tied_multi_caption_gallery(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features in {-1, 0, 1} (exact dot products in [-4, 4], so ties everywhere) of 23 videos with 1
    to 7 captions each, in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    num_videos = 23
    caption_video = torch.repeat_interleave(torch.arange(num_videos), torch.randint(1, 8, (num_videos,), generator=gen))
    caption_video = caption_video[torch.randperm(len(caption_video), generator=gen)]
    text = torch.randint(-1, 2, (len(caption_video), 4), generator=gen).float()
    video = torch.randint(-1, 2, (num_videos, 4), generator=gen).float()
    return text, video, caption_video


def argsort_reference(
    text: torch.Tensor, video: torch.Tensor, caption_video: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    sim, own = (text @ video.T).numpy(), caption_video.numpy()  # (C, V)
    groups = np.stack([sim[own == v].max(axis=0) for v in range(len(video))], axis=1)  # (V videos, V groups)
    assert (sim == sim[np.arange(len(sim)), own][:, None]).sum(1).max() > 1  # true matches do tie
    return argsort_ranks(sim, own), argsort_ranks(groups, np.arange(len(video)))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 16, 1000])
def test_ranks_equal_an_argsort_reference_with_ties(chunk_size):
    text, video, caption_video = tied_multi_caption_gallery(5)
    result = evaluate_retrieval(text, video, caption_video, chunk_size=chunk_size)
    t2v, v2t = argsort_reference(text, video, caption_video)
    np.testing.assert_array_equal(result.t2v_ranks, t2v)
    np.testing.assert_array_equal(result.v2t_ranks, v2t)


@pytest.mark.parametrize(("chunk_size", "block_videos", "span_videos"), [(1, 1, 1), (3, 2, 5), (5, 4, 9), (8, 3, 100)])
def test_ranks_across_many_tiles_equal_an_argsort_reference(chunk_size, block_videos, span_videos):
    # A real gallery is cut into blocks of >= 1024 videos and spans of up to 16k; these tiny ones
    # give the same code several blocks (a last one with a remainder), chunks per block, videos
    # with more captions than a chunk, and spans of several blocks.
    text, video, caption_video = tied_multi_caption_gallery(6)
    blocks = video_blocks(caption_video, len(video), chunk_size, block_videos)
    spans = column_spans(blocks, span_videos)
    assert len(blocks) > 1
    t2v, v2t = retrieval_ranks(text, video, caption_video, blocks, spans, None, None, 100.0)
    reference_t2v, reference_v2t = argsort_reference(text, video, caption_video)
    np.testing.assert_array_equal(t2v.numpy(), reference_t2v)
    np.testing.assert_array_equal(v2t.numpy(), reference_v2t)


def test_tiles_cover_each_caption_once_and_keep_a_video_s_captions_together():
    # captions per video 1, 3, 2, 6, 1, 1 (sorted by video: rows 0, 1-3, 4-5, 6-11, 12, 13); at most 4
    # captions a chunk and blocks of 3 videos
    caption_video = torch.repeat_interleave(torch.arange(6), torch.tensor([1, 3, 2, 6, 1, 1]))
    blocks = video_blocks(caption_video[torch.randperm(len(caption_video))], 6, 4, 3)
    layout = [
        (
            (b.videos.start, b.videos.stop),
            [(c.rows.start, c.rows.stop, c.videos.start, c.videos.stop) for c in b.chunks],
        )
        for b in blocks
    ]
    assert layout == [
        (
            (0, 3),
            [
                (0, 4, 0, 2),  # videos 0 and 1: 4 captions
                (4, 6, 2, 3),
            ],
        ),  # video 2; with video 3 it would be 10
        (
            (3, 6),
            [
                (6, 12, 3, 4),  # video 3 alone: 6 captions, more than 4, kept whole
                (12, 14, 4, 6),
            ],
        ),
    ]
    # a remainder shorter than a block joins the last block; spans gather whole blocks
    blocks = video_blocks(torch.arange(10), 10, 4, 3)
    assert [(b.videos.start, b.videos.stop) for b in blocks] == [(0, 3), (3, 6), (6, 10)]
    assert column_spans(blocks, 7) == [slice(0, 6), slice(6, 10)]
    assert column_spans(blocks, 2) == [slice(0, 3), slice(3, 6), slice(6, 10)]  # never less than a block


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_dsl_equals_dense_dual_softmax(chunk_size):
    gen = torch.Generator().manual_seed(1)
    num_captions, num_videos = 40, 15
    text = F.normalize(torch.randn(num_captions, 16, generator=gen, dtype=torch.float64), dim=-1)
    video = F.normalize(torch.randn(num_videos, 16, generator=gen, dtype=torch.float64), dim=-1)
    caption_video = multi_caption_videos(num_captions, num_videos, gen)
    result = evaluate_retrieval(text, video, caption_video, dsl=True, chunk_size=chunk_size)
    t2v, v2t = dense_reference(text, video, caption_video, dsl=True)
    np.testing.assert_array_equal(result.t2v_ranks, t2v)
    np.testing.assert_array_equal(result.v2t_ranks, v2t)
    plain_t2v, plain_v2t = dense_reference(text, video, caption_video)
    assert not np.array_equal(t2v, plain_t2v) and not np.array_equal(v2t, plain_v2t)  # DSL did re-rank


def test_constant_similarity_gets_the_worst_rank():
    num_videos = 6
    text = F.normalize(torch.ones(12, 4), dim=-1)
    video = F.normalize(torch.ones(num_videos, 4), dim=-1)
    result = evaluate_retrieval(text, video, torch.arange(12) % num_videos, chunk_size=5)
    assert (result.t2v_ranks == num_videos).all() and (result.v2t_ranks == num_videos).all()
    assert result.metrics["t2v_R1"] == 0.0 and result.metrics["v2t_R1"] == 0.0
    assert result.metrics["t2v_MdR"] == num_videos and result.metrics["v2t_MnR"] == num_videos


def test_ties_count_against_the_query_on_a_hand_example():
    text, video = features_for(
        [
            [0.5, 0.5, 0.1],  # own video ties one other: rank 2
            [0.25, 0.75, 0.75],  # ties one other: rank 2
            [0.3, 0.3, 0.3],
        ]
    )  # ties both: rank 3
    result = evaluate_retrieval(text, video, torch.arange(3))
    np.testing.assert_array_equal(result.t2v_ranks, [2, 2, 3])
    np.testing.assert_array_equal(result.v2t_ranks, [1, 1, 2])  # video 2: its caption's 0.3 < 0.75


def test_median_and_mean_rank_on_a_hand_example():
    ranks = [1, 3, 4, 2]
    # caption i: own video i scores 0, (rank - 1) other videos score 1, the rest -1
    sim = [[0.0 if v == i else (1.0 if (v - i) % 4 < r else -1.0) for v in range(4)] for i, r in enumerate(ranks)]
    result = evaluate_retrieval(*features_for(sim), torch.arange(4))
    np.testing.assert_array_equal(result.t2v_ranks, ranks)
    metrics = result.metrics
    assert (metrics["t2v_R1"], metrics["t2v_R5"], metrics["t2v_MdR"], metrics["t2v_MnR"]) == (25.0, 100.0, 2.5, 2.5)


def test_v2t_scores_a_caption_group_by_its_best_caption():
    text, video = features_for(
        [
            [0.1, 0.9],  # caption 0, video 0
            [0.8, 0.2],  # caption 1, video 0
            [0.5, 0.6],
        ]
    )  # caption 2, video 1
    result = evaluate_retrieval(text, video, torch.tensor([0, 0, 1]))
    np.testing.assert_array_equal(result.t2v_ranks, [2, 1, 1])
    # video 0: group 0 scores max(0.1, 0.8) = 0.8 > 0.5 (a mean, 0.45, or the first caption, 0.1, would lose)
    # video 1: group 0 scores max(0.9, 0.2) = 0.9 > 0.6
    np.testing.assert_array_equal(result.v2t_ranks, [1, 2])
    assert result.metrics["v2t_R1"] == 50.0


def test_per_category_recall_skips_empty_categories():
    ranks = [1, 3, 1, 2]
    sim = [[0.0 if v == i else (1.0 if (v - i) % 4 < r else -1.0) for v in range(4)] for i, r in enumerate(ranks)]
    text, video = features_for(sim)
    metrics = evaluate_retrieval(text, video, torch.arange(4), categories=["a", "a", "b", ""]).metrics
    assert {k: v for k, v in metrics.items() if k.startswith("t2v_R1_")} == {"t2v_R1_a": 50.0, "t2v_R1_b": 100.0}
    unlabelled = evaluate_retrieval(text, video, torch.arange(4), categories=[""] * 4).metrics
    assert not any(k.startswith("t2v_R1_") for k in unlabelled)


def test_pair_accuracy_on_a_hand_example():
    text, video = features_for(
        [
            [0.9, 0.1, 0.0, 0.0],  # video 0 beats its twin 1: 1
            [0.3, 0.6, 0.0, 0.0],  # video 1 beats its twin 0: 1
            [0.4, 0.4, 0.0, 0.0],  # video 0 ties its twin: 1/2
            [0.0, 0.9, 0.1, 0.0],  # video 2 has no twin: left out
            [0.0, 0.0, 0.0, 0.5],
        ]
    )  # video 3 has no twin: left out
    result = evaluate_retrieval(
        text,
        video,
        torch.tensor([0, 1, 0, 2, 3]),
        categories=["x", "y", "x", "x", "z"],
        twins=torch.tensor([1, 0, -1, -1]),
    )
    pair = {k: v for k, v in result.metrics.items() if k.startswith("pair_acc")}
    assert pair == {"pair_acc": 2.5 / 3, "pair_acc_x": 0.75, "pair_acc_y": 1.0}


def test_pair_accuracy_is_one_half_when_twins_have_identical_features():
    gen = torch.Generator().manual_seed(2)
    video = F.normalize(torch.randn(6, 32, generator=gen), dim=-1)
    video[1], video[3] = video[0], video[2]
    text = F.normalize(torch.randn(30, 32, generator=gen), dim=-1)
    metrics = evaluate_retrieval(text, video, torch.arange(30) % 6, twins=torch.tensor([1, 0, 3, 2, -1, -1])).metrics
    assert metrics["pair_acc"] == 0.5
    no_twins = evaluate_retrieval(text, video, torch.arange(30) % 6, twins=torch.full((6,), -1)).metrics
    assert "pair_acc" not in no_twins


def test_content_recall_counts_the_twin_as_a_hit():
    text, video = features_for(
        [
            [0.5, 0.9, 0.1, 0.0],  # twin 1 first, own second: content hit, R@1 miss
            [0.2, 0.3, 0.9, 0.0],  # video 2 beats both: miss either way
            [0.0, 0.1, 0.9, 0.0],  # video 2 (no twin) first: hit either way
            [0.0, 0.0, 0.2, 0.1],
        ]
    )  # video 3 (no twin) second: a miss either way
    result = evaluate_retrieval(
        text, video, torch.tensor([0, 1, 2, 3]), categories=["x", "x", "y", "y"], twins=torch.tensor([1, 0, -1, -1])
    )
    content = {k: v for k, v in result.metrics.items() if k.startswith("content_R1")}
    assert result.metrics["t2v_R1"] == 25.0
    assert content == {"content_R1": 50.0, "content_R1_x": 50.0, "content_R1_y": 50.0}


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_content_recall_equals_a_dense_reference(chunk_size):
    gen = torch.Generator().manual_seed(4)
    text, video = (
        F.normalize(torch.randn(40, 16, generator=gen), dim=-1),
        F.normalize(torch.randn(10, 16, generator=gen), dim=-1),
    )
    caption_video = torch.arange(40) % 10
    twins = torch.tensor([1, 0, 3, 2, -1, 6, 5, -1, 9, 8])
    sim = text @ video.T
    own, twin = caption_video, twins[caption_video]
    best = torch.where(
        twin >= 0,
        torch.maximum(sim[torch.arange(40), own], sim[torch.arange(40), twin.clamp(min=0)]),
        sim[torch.arange(40), own],
    )
    others = sim.clone()
    others[torch.arange(40), own] = -2
    others[torch.arange(40)[twin >= 0], twin[twin >= 0]] = -2
    expected = 100.0 * float(((others >= best[:, None]).sum(1) == 0).double().mean())
    got = evaluate_retrieval(text, video, caption_video, twins=twins, chunk_size=chunk_size).metrics["content_R1"]
    assert got == pytest.approx(expected)


def test_twin_wordings_tell_word_changes_from_order_changes():
    texts = [
        "a dot moves up",
        "a dot turns from red to blue",  # video 0
        "a dot moves down",
        "a dot turns from blue to red",  # video 1, its twin
        "a still dot",
    ]  # video 2, no twin
    assert twin_wordings(texts, [0, 0, 1, 1, 2], [1, 0, -1]) == ["words", "order", "words", "order", ""]
    text, video = features_for([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])
    metrics = evaluate_retrieval(
        text,
        video,
        torch.tensor([0, 0, 1, 1, 2]),
        twins=torch.tensor([1, 0, -1]),
        wordings=twin_wordings(texts, [0, 0, 1, 1, 2], [1, 0, -1]),
    ).metrics
    assert (metrics["pair_acc_words"], metrics["pair_acc_order"]) == (1.0, 0.5)


def test_recall_curves_stop_at_50_or_the_gallery_size():
    gen = torch.Generator().manual_seed(3)
    for num_videos, length in ((60, 50), (20, 20)):
        text = F.normalize(torch.randn(2 * num_videos, 8, generator=gen), dim=-1)
        video = F.normalize(torch.randn(num_videos, 8, generator=gen), dim=-1)
        result = evaluate_retrieval(text, video, torch.arange(2 * num_videos) % num_videos)
        for direction in ("t2v", "v2t"):
            curve = result.curves[direction]
            assert len(curve) == length and np.all(np.diff(curve) >= 0)
            assert curve[0] == result.metrics[f"{direction}_R1"] and curve[9] == result.metrics[f"{direction}_R10"]
            assert curve[-1] == 100.0 or num_videos > 50  # every rank is <= V


def test_bad_inputs_are_refused():
    video = torch.eye(3)
    with pytest.raises(ValueError, match="at least one caption"):
        evaluate_retrieval(torch.eye(3)[:2], video, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_retrieval(torch.full((3, 3), float("nan")), video, torch.arange(3))
    for bad in (float("nan"), float("inf"), -float("inf")):  # one bad entry, in either tower
        features = torch.eye(3)
        features[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            evaluate_retrieval(features, video, torch.arange(3))
        with pytest.raises(ValueError, match="NaN or inf"):
            evaluate_retrieval(video, features, torch.arange(3))


MEMORY_SCRIPT = """
import torch
import torch.nn.functional as F
from dgl.metrics import evaluate_retrieval

gen = torch.Generator().manual_seed(0)
text = F.normalize(torch.randn(25000, 64, generator=gen), dim=-1)
video = F.normalize(text + 0.15 * torch.randn(25000, 64, generator=gen), dim=-1)
evaluate_retrieval(text[:2000], video[:2000], torch.arange(2000), dsl=True)  # warm up kernels and allocator
def status_kib(field):
    line = next(line for line in open("/proc/self/status") if line.startswith(field))
    return int(line.split()[1]) * 1024
for n, dsl, chunk_size in ((25000, False, 2048), (14000, True, 1024)):
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM (the peak RSS) to the current RSS
    rss_before = status_kib("VmRSS")
    result = evaluate_retrieval(text[:n], video[:n], torch.arange(n), dsl=dsl, chunk_size=chunk_size)
    peak = status_kib("VmHWM")
    assert 0 < result.metrics["t2v_R1"] < 100
    print(peak - rss_before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc/self/status")
def test_large_gallery_stays_within_a_small_memory_cap():
    # Ranking, 25k x 25k in 2048-row chunks: S would be 2.3 GiB, one row chunk of it 195 MiB. It goes tile
    # by tile (scores and their mask, 128 MiB, whatever the chunk or the gallery's size): the cap, 192 MiB
    # over the resident size before the call, is less than one row chunk.
    # DSL, 14k x 14k: its softmax normalisers take 1024-row chunks (55 MiB), about 2.3 held at once;
    # with the ranking's tiles the cap, 384 MiB, fails long before anything dense (784 MB).
    # glibc's adaptive mmap threshold sometimes keeps freed chunk-sized blocks resident (+300 MiB at
    # random); a fixed threshold makes it hand every large block back, so the peak measures this code.
    # The peak is VmHWM, reset after warm-up: ru_maxrss survives execve, so the child would inherit the
    # peak of the pytest process that spawned it.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    plain, dsl = (int(line) for line in out.stdout.split()[-2:])
    assert plain < 192 * 2**20, f"peak extra memory {plain / 2**20:.0f} MiB"
    assert dsl < 384 * 2**20, f"peak extra memory with DSL {dsl / 2**20:.0f} MiB"


def test_pair_accuracy_counts_a_float_rounding_difference_as_a_tie():
    """A method blind to frame order gives exact twins features that differ only by float rounding
    (attention sums the frames in another order): that is no preference, and scores exactly 1/2."""
    text, video = features_for([[0.5, 0.5 + 3e-7], [0.5 - 3e-7, 0.5], [0.9, 0.1]])
    metrics = evaluate_retrieval(text, video, torch.tensor([0, 1, 0]), twins=torch.tensor([1, 0])).metrics
    assert metrics["pair_acc"] == (0.5 + 0.5 + 1.0) / 3
