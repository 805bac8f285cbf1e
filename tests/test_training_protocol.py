"""The training protocol the papers use: parameter groups at their own rates, every caption once per
epoch, a random frame per segment in training and the centre in evaluation, frame-normalised
meanP, and a test gallery that may not shrink unnoticed."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from dgl.batch_order import epoch_samples, into_batches, train_val_views
from dgl.cache.read import CachedSplit, gallery_counts
from dgl.errors import UserError
from dgl.evaluation import encode_view
from dgl.frames.store import RawCodec, write_arrays
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method
from dgl.train import optimizer_for, train_method
from dgl.views import SplitView
from helpers import group

FRAMES, CANDIDATES, SIZE = 4, 3, 64  # the tiny CLIP sees 64 x 64


def tiny_method(name: str):
    torch.manual_seed(0)
    return build_method(name, build_clip("tiny-synthetic"), group("model", method=name), num_frames=FRAMES)


STORES = tempfile.TemporaryDirectory()  # split_with's frame stores, removed at exit


def split_with(captions_per_video: list[int], candidates: int = 1, twins: list[int] | None = None) -> CachedSplit:
    """Videos whose every frame's pixels say which (segment, candidate) it is: value 10 t + k."""
    videos = len(captions_per_video)
    position = np.arange(FRAMES * candidates)
    label = (position // candidates) * 10 + position % candidates  # (T * K,)
    frames = np.broadcast_to(label[None, :, None, None, None], (videos, FRAMES * candidates, 3, SIZE, SIZE))
    caption_video = torch.tensor([v for v, n in enumerate(captions_per_video) for _ in range(n)])
    texts = [f"caption {i}" for i in range(len(caption_video))]
    import open_clip

    tokens = open_clip.get_tokenizer("tiny-synthetic")(texts, context_length=16).long()
    store, rows = write_arrays(
        Path(tempfile.mkdtemp(dir=STORES.name)), np.ascontiguousarray(frames, dtype=np.uint8), RawCodec()
    )
    return CachedSplit(
        store=store,
        rows=rows,
        tokens=tokens,
        caption_video=caption_video,
        texts=texts,
        categories=["static"] * len(texts),
        twins=torch.tensor(twins) if twins else torch.full((videos,), -1),
        video_ids=[f"v{v}" for v in range(videos)],
        mean=torch.zeros(3),
        std=torch.ones(3) / 255,
        candidates=candidates,
    )


@pytest.mark.parametrize(
    "method, groups",
    [
        ("full", {"clip"}),
        ("bias", {"clip"}),
        ("partial", {"clip"}),
        ("adapter_attn", {"added"}),
        ("dgl", {"added"}),
        ("vop_c", {"added"}),
    ],
)
def test_parameter_groups_get_their_configured_rates(method, groups):
    m = tiny_method(method)
    cfg = group("train", lr=0.01, clip_lr=3e-6)
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    optimizer = optimizer_for(m, params, cfg)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert {name.split("/")[0] for name in rates} == groups
    assert all(rate == (3e-6 if name.startswith("clip/") else 0.01) for name, rate in rates.items())
    clip_ids = {id(p) for p in m.clip.parameters()}
    for g in optimizer.param_groups:  # each parameter is where its owner says
        assert all((id(p) in clip_ids) == g["name"].startswith("clip/") for p in g["params"])
        assert (g["weight_decay"] > 0) == g["name"].endswith("/decay")
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(params)


@pytest.mark.parametrize("method", ["full", "partial", "dgl", "bias"])
def test_weight_decay_spares_only_parameters_named_bias_as_the_reference_scripts(method):
    """knightyxp/DGL and CLIP4Clip decay every parameter whose name lacks `bias`: LayerNorm gains and the
    logit scale too. For DGL-ULP (the default) that is the same set as decaying matrices only."""
    m = tiny_method(method)
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    optimizer = optimizer_for(m, params, group("train"))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {n for n, p in params if id(p) in decayed} == {n for n, _ in params if "bias" not in n}
    gains = [n for n, _ in params if n.endswith(("ln_1.weight", "ln_final.weight", "logit_scale"))]
    assert bool(gains) == (method in ("full", "partial")) and all(id(dict(params)[n]) in decayed for n in gains)
    if method == "dgl":
        assert {n for n, p in params if id(p) in decayed} == {n for n, p in params if p.ndim >= 2}


@pytest.mark.parametrize("method", ["full", "dgl"])
def test_a_trained_logit_scale_is_clamped_to_100_after_each_step_as_clip4clip_a_frozen_one_is_not(method):
    split = split_with([2] * 4)
    m = tiny_method(method)
    with torch.no_grad():
        m.clip.logit_scale.fill_(5.0)  # exp(5) = 148; rates 1e-20: only the clamp can move it
    cfg = group("train", epochs=1, batch_size=4, lr=1e-20, clip_lr=1e-20, val_fraction=0.0, device="cpu")
    train_method(
        m,
        SplitView(split, np.arange(split.num_videos)),
        None,
        cfg,
        torch.device("cpu"),
        on_epoch=lambda *_: None,
        progress=False,
    )
    assert m.clip.logit_scale.item() == pytest.approx(np.log(100) if method == "full" else 5.0)


def test_captions_all_visits_every_caption_exactly_once_per_epoch():
    split = split_with([1, 4, 2, 3, 3, 1, 2, 5])  # uneven, as in VATEX
    view = SplitView(split, np.arange(split.num_videos))
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(2):
        batches = into_batches(epoch_samples(view, "all", rng), batch_size=4, parts=1)
        captions = [c for _, cs in batches for c in cs.tolist()]
        assert sorted(captions) == list(range(len(split.texts)))  # each caption exactly once
        for videos, cs in batches:
            assert len(set(videos.tolist())) == len(videos), "no video twice in a contrastive batch"
            assert (split.caption_video[cs].numpy() == videos).all()
        epochs.append(captions)
    assert epochs[0] != epochs[1], "a new order every epoch"


def test_captions_one_shows_every_video_once_with_one_of_its_captions():
    split = split_with([2, 3, 1, 2, 2, 4])
    view = SplitView(split, np.arange(1, split.num_videos))  # a view: the validation video 0 left out
    samples = [s for unit in epoch_samples(view, "one", np.random.default_rng(0)) for s in unit]
    assert sorted(v for v, _ in samples) == list(range(1, 6))
    assert all(split.caption_video[c].item() == v for v, c in samples)


def test_batches_are_trimmed_to_the_process_split():
    samples = [[(v, v)] for v in range(10)]
    assert [len(v) for v, _ in into_batches(samples, batch_size=4, parts=2)] == [4, 4, 2]
    assert [len(v) for v, _ in into_batches(samples, batch_size=4, parts=4)] == [4, 4]


# videos 0-1, 2-3 and 5-6 are twin pairs; 4 and 7 have no twin
TWINS = [1, 0, 3, 2, -1, 6, 5, -1]


@pytest.mark.parametrize("captions", ["all", "one"])
def test_the_twins_sampler_puts_every_twin_pair_in_one_batch(captions):
    split = split_with([3, 3, 2, 3, 1, 4, 4, 2], twins=TWINS)
    view = SplitView(split, np.arange(split.num_videos))
    rng = np.random.default_rng(0)
    for _ in range(3):
        batches = into_batches(epoch_samples(view, captions, rng, "twins"), batch_size=4, parts=1)
        shown = [c for _, cs in batches for c in cs.tolist()]
        if captions == "all":
            assert sorted(shown) == list(range(len(split.texts)))  # still every caption once
        held = [set(videos.tolist()) for videos, _ in batches]
        assert all(len(h) == len(v) for h, (v, _) in zip(held, batches))
        counts = [3, 3, 2, 3, 1, 4, 4, 2] if captions == "all" else [1] * 8
        for v, t in ((0, 1), (2, 3), (5, 6)):  # as often together as the twin with fewer captions allows
            assert sum(v in h and t in h for h in held) == min(counts[v], counts[t])


def test_random_batches_rarely_hold_a_twin_pair_the_twins_sampler_always_does():
    pairs = 40
    twins = [v + 1 if v % 2 == 0 else v - 1 for v in range(2 * pairs)]
    split = split_with([1] * (2 * pairs), twins=twins)
    view = SplitView(split, np.arange(split.num_videos))

    def together(sampler: str) -> float:
        batches = into_batches(epoch_samples(view, "one", np.random.default_rng(0), sampler), 8, 1)
        held = [set(v.tolist()) for v, _ in batches]
        return np.mean([twins[v] in b for b in held for v in b])

    assert together("twins") == 1.0
    assert together("random") < 0.3


def test_validation_holds_twin_pairs_whole():
    split = split_with([1] * 8, twins=TWINS)
    for seed in range(5):
        train, val = train_val_views(split, 0.25, seed)
        held = set(val.videos.tolist())
        assert 2 <= len(held) <= 3 and not held & set(train.videos.tolist())
        assert all(TWINS[v] in held for v in held if TWINS[v] >= 0)


def test_jitter_shows_other_frames_each_epoch_and_evaluation_the_centres(monkeypatch):
    split = split_with([2] * 8, candidates=CANDIDATES)
    shown = []
    original = CachedSplit.video_batch

    def spy(self, indices, picks=None):
        frames = original(self, indices, picks)
        shown.append(frames[:, :, 0, 0, 0].round().long())  # (B, T) labels 10 t + k
        return frames

    monkeypatch.setattr(CachedSplit, "video_batch", spy)
    method = tiny_method("dgl")
    view = SplitView(split, np.arange(split.num_videos))
    cfg = group("train", epochs=2, batch_size=8, captions="one", val_fraction=0.0, device="cpu")
    train_method(method, view, None, cfg, torch.device("cpu"), on_epoch=lambda *_: None, progress=False)
    first, second = shown
    segments = torch.arange(FRAMES) * 10
    for labels in (first, second):
        assert ((labels - segments) >= 0).all() and ((labels - segments) < CANDIDATES).all()  # own segment
    assert not torch.equal(first, second), "another candidate frame in another epoch"
    assert len(torch.unique(first - segments)) > 1, "candidates drawn per video and segment"
    shown.clear()
    encode_view(method, view, torch.device("cpu"), batch_size=8)
    assert all(torch.equal(labels, (segments + CANDIDATES // 2).expand_as(labels)) for labels in shown)


def test_meanp_normalises_each_frame_before_averaging(monkeypatch):
    method = tiny_method("zeroshot")
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.1])  # norms 5 and 0.1
    monkeypatch.setattr(method.encoder, "encode_frames", lambda frames, prompts: torch.stack([a, b])[None])
    video = method.encode_video(torch.zeros(1, 2, 3, 8, 8), None)
    assert torch.allclose(video, ((a / 5 + b / 0.1) / 2)[None])


def write_meta(cache, annotated: int, skipped: int) -> None:
    cache.mkdir(exist_ok=True)
    splits = {
        "test": {
            "videos": annotated - skipped,
            "captions": 3 * (annotated - skipped),
            "frames": 4,
            "candidates": 1,
            "annotated_videos": annotated,
            "skipped_videos": skipped,
        }
    }
    (cache / "meta.json").write_text(json.dumps({"splits": splits}))


def test_a_test_set_missing_videos_is_refused_naming_the_count(tmp_path):
    write_meta(tmp_path, annotated=1000, skipped=12)
    with pytest.raises(
        UserError,
        match=r"12 of the 1000 annotated test videos \(1\.2 %\).*skipped\.json.*"
        r"eval\.max_missing >= 0\.0120",
    ):
        gallery_counts(tmp_path, "test", max_missing=0.0)
    assert gallery_counts(tmp_path, "test", max_missing=0.012) == {
        "videos": 988,
        "captions": 2964,
        "skipped_videos": 12,
    }
    write_meta(tmp_path, annotated=1000, skipped=0)
    assert gallery_counts(tmp_path, "test", max_missing=0.0)["skipped_videos"] == 0


def test_one_epoch_of_all_captions_is_the_scheduled_step_count():
    split = split_with([3] * 10)
    view = SplitView(split, np.arange(split.num_videos))
    batches = into_batches(epoch_samples(view, "all", np.random.default_rng(1)), batch_size=4, parts=1)
    assert Counter(len(v) for v, _ in batches) == Counter({4: 7, 2: 1})  # ceil(30 / 4) = 8 steps
