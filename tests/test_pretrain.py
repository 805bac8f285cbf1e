"""Pretraining of the synthetic CLIP: the shape warm-up trains the image tower only, on lone objects."""
from __future__ import annotations

import types

import torch

from conftest import group
from dgl.data.synthetic import vocab
from dgl.models.backbone import build_clip
from dgl.pretrain import _images_and_tokens, _lone_shape_labels, shape_warmup, zero_shot_image_text_r1


def test_lone_shape_labels_index_the_vocabulary_and_skip_pairs():
    shapes = list(vocab()["shapes"])
    contents = [("grey", (("red", shapes[2]),)), ("black", (("blue", shapes[0]), ("red", shapes[1])))]
    assert _lone_shape_labels(contents).tolist() == [2, -1]


def test_shape_warmup_trains_the_image_tower_only():
    torch.manual_seed(0)
    clip = build_clip("tiny-synthetic")
    images, _, _, contents = _images_and_tokens(64, 0, group("data.synthetic"), "tiny-synthetic", 32)
    before = {name: p.detach().clone() for name, p in clip.named_parameters()}
    pretrain = types.SimpleNamespace(shape_steps=3, batch_size=16, lr=1e-3, seed=0)
    loss = shape_warmup(clip, images, _lone_shape_labels(contents), pretrain, progress=False)
    assert torch.isfinite(torch.tensor(loss))
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
