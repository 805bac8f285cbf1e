"""Pretraining of the synthetic CLIP: the warm-up trains the image tower only, on lone objects; the text
diagnostic tells a text tower that knows the words of twins from one that does not."""

from __future__ import annotations

import types

import pytest
import torch

from dgl.backbone_report import twin_text_report, zero_shot_image_text_r1
from dgl.data.synthetic_scenes import vocab
from dgl.models.backbone import build_clip
from dgl.pretrain import (
    _images_and_tokens,
    _lone_object_labels,
    _unknown_tokens,
    factor_loss,
    warmup,
    with_unknown_words,
)
from helpers import group


def test_lone_object_labels_index_each_factor_and_skip_other_frames():
    shapes = list(vocab()["shapes"])
    contents = [
        ("grey", (("red", shapes[2], "large", "top", "middle"),)),
        ("black", (("blue", shapes[0], "", "middle", "left"), ("red", shapes[1], "small", "top", "right"))),
        ("grey", ()),
    ]
    assert _lone_object_labels(contents).tolist() == [[2, 2, 0, 1], [-1] * 4, [-1] * 4]


def test_warmup_trains_the_image_tower_only():
    torch.manual_seed(0)
    clip = build_clip("tiny-synthetic")
    images, _, _, contents = _images_and_tokens(64, 0, group("data.synthetic"), "tiny-synthetic", 32)
    before = {name: p.detach().clone() for name, p in clip.named_parameters()}
    pretrain = types.SimpleNamespace(warmup_steps=3, warmup_batch_size=16, lr=1e-3, seed=0)
    heads, loss = warmup(clip, images, _lone_object_labels(contents), pretrain, progress=False)
    assert torch.isfinite(torch.tensor(loss))
    assert [head.out_features for head in heads] == [len(vocab()["shapes"]), 3, 3, 3]
    changed = {name for name, p in clip.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("visual.") for name in changed)
    assert "visual.conv1.weight" in changed


def test_image_text_r1_counts_any_paraphrase_of_the_frame_as_a_hit():
    torch.manual_seed(0)
    clip = build_clip("tiny-synthetic")
    images, tokens, captions, contents = _images_and_tokens(48, 0, group("data.synthetic"), "tiny-synthetic", 32)
    # Every frame shows the same content, so whichever caption ranks first describes it.
    same = [contents[0]] * len(contents)
    assert zero_shot_image_text_r1(clip, images, tokens, captions, same) == 1.0
    assert 0.0 <= zero_shot_image_text_r1(clip, images, tokens, captions, contents) < 1.0


def test_twin_text_report_tells_a_text_tower_that_reads_the_words_from_one_that_does_not(monkeypatch):
    """A bag-of-words text tower tells word-differing twins apart and sees order-only twins as one
    (ties: never closer); a constant one sees nothing."""
    from dgl.models.prompted import PromptedCLIP

    torch.manual_seed(0)
    clip = build_clip("tiny-synthetic")
    synthetic = group("data.synthetic", test_videos=40)
    report = twin_text_report(clip, synthetic, "tiny-synthetic", 32)
    assert set(report) == {
        "text_twin_words_own_closer",
        "text_twin_words_cosine",
        "text_twin_order_own_closer",
        "text_twin_order_cosine",
    }
    monkeypatch.setattr(PromptedCLIP, "encode_text", lambda self, tokens: torch.ones(len(tokens), 8))
    blind = twin_text_report(clip, synthetic, "tiny-synthetic", 32)
    assert blind["text_twin_words_own_closer"] == 0.0 and blind["text_twin_words_cosine"] == pytest.approx(1.0)

    vocabulary: dict[int, int] = {}

    def bag_of_words(self, tokens):  # (N, L) -> (N, 512): counts of each token id
        out = torch.zeros(len(tokens), 512)
        for row, ids in zip(out, tokens.tolist()):
            for i in ids:
                row[vocabulary.setdefault(i, len(vocabulary) % 512)] += 1
        return out

    monkeypatch.setattr(PromptedCLIP, "encode_text", bag_of_words)
    reads = twin_text_report(clip, synthetic, "tiny-synthetic", 32)
    assert reads["text_twin_words_cosine"] < 0.99 and reads["text_twin_words_own_closer"] > 0.5
    assert reads["text_twin_order_own_closer"] == 0.0 and reads["text_twin_order_cosine"] > 0.999


def test_grouped_order_keeps_each_run_of_frames_in_one_batch():
    from dgl.pretrain import grouped_order

    order = grouped_order(10, 4, torch.Generator().manual_seed(0)).tolist()
    assert sorted(order) == list(range(10))
    for start in (i for i, v in enumerate(order) if v % 4 == 0):  # each run (0-3, 4-7, 8-9) contiguous, in order
        first = order[start]
        length = min(4, 10 - first)
        assert order[start : start + length] == list(range(first, first + length))
    assert (
        grouped_order(10, 4, torch.Generator().manual_seed(1)).tolist() != order
        or grouped_order(10, 4, torch.Generator().manual_seed(2)).tolist() != order
    )  # the runs' order is random


def test_factor_loss_counts_lone_objects_only():
    torch.manual_seed(0)
    heads = torch.nn.ModuleList(torch.nn.Linear(8, n) for n in (4, 3, 3, 3))
    feature = torch.randn(3, 8)
    labels = torch.tensor([[1, 0, 2, 1], [-1, -1, -1, -1], [3, 2, 0, 0]])
    lone = labels[[0, 2]]
    expected = sum(torch.nn.functional.cross_entropy(h(feature[[0, 2]]), lone[:, i]) for i, h in enumerate(heads))
    assert torch.allclose(factor_loss(heads, feature, labels), expected)
    assert factor_loss(heads, feature[1:2], labels[1:2]).item() == 0.0
    assert factor_loss(torch.nn.ModuleList(), feature, labels).item() == 0.0  # no warm-up: no heads, no loss


def test_unknown_words_are_inserted_between_start_and_end_and_never_known():
    _, tokens, _, _ = _images_and_tokens(200, 0, group("data.synthetic"), "tiny-synthetic", 32)
    clip = build_clip("tiny-synthetic")
    unknown = _unknown_tokens(clip, tokens)
    known = set(tokens.unique().tolist())
    assert not known & set(unknown.tolist()) and 0 not in unknown.tolist()
    assert len(unknown) > 40_000  # the rest of the BPE vocabulary

    out = with_unknown_words(tokens, unknown, torch.Generator().manual_seed(0), most=3)
    assert out.shape == (200, tokens.shape[1] + 3)
    assert torch.equal(out, with_unknown_words(tokens, unknown, torch.Generator().manual_seed(0), most=3))
    counts = []
    for before, after in zip(tokens.tolist(), out.tolist()):
        before, after = [t for t in before if t], [t for t in after if t]
        extra = [t for t in after if t not in known]
        assert [t for t in after if t in known] == before  # every caption word kept, in order
        assert after[0] == before[0] and after[-1] == before[-1]  # start and end tokens stay outermost
        assert after[-1] == max(after)  # the text tower pools at the largest id: still the end token
        counts.append(len(extra))
    assert set(counts) == {0, 1, 2, 3}
    assert 0.35 < sum(c > 0 for c in counts) / len(counts) < 0.65  # about half the captions


def test_the_towers_side_by_side_give_the_gradients_of_one_backward_bit_for_bit():
    """pretrain_step runs each tower's forward and backward on its own thread, the loss in between;
    the gradients are those of one graph through both towers on one thread, to the last bit."""
    from dgl.models.prompted import PromptedCLIP
    from dgl.pretrain import encode_by_length, pretrain_loss, pretrain_step, towers_side_by_side, warmup_classes

    torch.manual_seed(0)
    clip = build_clip("tiny-synthetic")
    images, tokens, _, contents = _images_and_tokens(
        32, 0, group("data.synthetic"), "tiny-synthetic", 32, frames_per_video=4
    )
    labels, content_id = _lone_object_labels(contents), torch.arange(32) // 2
    heads = torch.nn.ModuleList(torch.nn.Linear(clip.visual.output_dim, len(c)) for c in warmup_classes())
    parameters = list(clip.parameters()) + list(heads.parameters())
    threads = torch.get_num_threads()
    with towers_side_by_side() as pool:
        assert torch.get_num_threads() == max(1, threads // 2)
        loss = pretrain_step(pool, clip, PromptedCLIP(clip), heads, images, tokens, content_id, labels)
        one_thread = torch.get_num_threads()
    assert torch.get_num_threads() == threads
    side = [p.grad.clone() for p in parameters]
    for p in parameters:
        p.grad = None

    torch.set_num_threads(one_thread)
    try:
        from dgl.cache.read import normalise

        image = clip.encode_image(normalise(images))
        text = encode_by_length(PromptedCLIP(clip), tokens)
        whole = pretrain_loss(clip, heads, image, text, content_id, labels)
        whole.backward()
    finally:
        torch.set_num_threads(threads)
    assert loss == whole.item()
    assert all(torch.equal(a, p.grad) for a, p in zip(side, parameters))
    assert clip.visual.conv1.weight.grad.abs().sum() > 0 and clip.token_embedding.weight.grad.abs().sum() > 0


def test_encode_by_length_matches_one_run_over_the_padded_captions():
    from dgl.models.prompted import PromptedCLIP
    from dgl.pretrain import encode_by_length

    torch.manual_seed(0)
    encoder = PromptedCLIP(build_clip("tiny-synthetic"))
    _, tokens, _, _ = _images_and_tokens(40, 0, group("data.synthetic"), "tiny-synthetic", 32)
    padded = torch.nn.functional.pad(tokens, (0, 6))
    with torch.no_grad():
        assert torch.allclose(encode_by_length(encoder, padded), encoder.encode_text(padded), atol=1e-5)
