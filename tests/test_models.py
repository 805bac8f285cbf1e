"""DGL as published: parameter counts, prompt placement, global-local attention, frozen CLIP."""
from __future__ import annotations

from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dgl.config import build
from dgl.models.attention import global_local_mask
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method, count_parameters
from dgl.models.methods.dgl import DGLConfig
from dgl.models.prompted import PromptedCLIP, TextPrompts, contrastive_loss


def dgl_cfg(**kw):
    return SimpleNamespace(dgl=build(DGLConfig, kw))


@pytest.fixture(scope="module")
def vit_b32():
    torch.manual_seed(0)
    return build_clip("ViT-B-32")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_clip("tiny-synthetic")


# The paper's Table: ULP 0.83M, UPT 9.57M (DGL_SPEC.md derives both exactly).
@pytest.mark.parametrize("backbone", ["ViT-B-32", "ViT-B-16"])
@pytest.mark.parametrize("generator,expected,generator_part", [
    ("ulp", 827_392, 36_864 + 787_456),
    ("upt", 9_575_168, 516_096 + 7_087_872 + 1_968_128),
])
def test_trainable_counts_match_the_paper(backbone, generator, expected, generator_part):
    clip = build_clip(backbone)
    counts = count_parameters(build_method("dgl", clip, dgl_cfg(generator=generator), num_frames=12))
    assert counts["trainable"] == expected
    assert counts["trainable_generator"] == generator_part
    assert counts["trainable_global_prompts"] == 3_072
    if backbone == "ViT-B-32":
        assert counts["clip4clip_denominator"] == 123_540_993  # the paper's 0.67 % denominator
        assert round(100 * counts["trainable_ratio_clip4clip"], 2) == {"ulp": 0.67, "upt": 7.75}[generator]


def test_dgl_vit_b32_forward_backward_trains_only_dgl(vit_b32):
    method = build_method("dgl", vit_b32, dgl_cfg(generator="ulp"), num_frames=12)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a man is cooking", "a dog runs on grass"], context_length=32)
    frames = torch.randn(2, 12, 3, 224, 224)
    text_prompts, video_prompts = method.prompts()
    text = F.normalize(method.encode_text(tokens, text_prompts), dim=-1)
    video = F.normalize(method.encode_video(frames, video_prompts), dim=-1)
    contrastive_loss(text, video, method.logit_scale()).backward()
    assert all(p.grad is None for p in method.clip.parameters())
    assert method.global_prompts.grad.abs().sum() > 0
    assert method.generator.latent.grad.abs().sum() > 0
    assert method.generator.to_prefix.weight.grad.abs().sum() > 0


def test_postfix_quirk_and_its_fix(tiny):
    """As in the reference code, postfix prompts sit after every EOT position: under the causal
    mask they never reach the text feature. Our option moves them before EOT, where they act."""
    tokens = open_clip.get_tokenizer("tiny-synthetic")(["a red circle", "a blue square moves left"], context_length=32)
    grads = {}
    for fix in (False, True):
        method = build_method("dgl", tiny, dgl_cfg(postfix_before_eot=fix), num_frames=4)
        text_prompts, _ = method.prompts()
        method.encode_text(tokens, text_prompts).sum().backward()
        grads[fix] = method.generator.to_postfix.weight.grad
    assert grads[False] is None or grads[False].abs().sum() == 0
    assert grads[True].abs().sum() > 0


def test_unprompted_text_equals_open_clip(tiny):
    tokens = open_clip.get_tokenizer("tiny-synthetic")(["a red circle on a grey background"], context_length=32)
    ours = PromptedCLIP(tiny).encode_text(tokens)
    tiny.attn_mask = tiny.attn_mask[:32, :32]
    reference = tiny.encode_text(tokens)
    torch.testing.assert_close(ours, reference)


def test_unprompted_frames_equal_open_clip_images(tiny):
    frames = torch.randn(2, 3, 3, 64, 64)
    ours = PromptedCLIP(tiny).encode_frames(frames)  # (B, T, E)
    reference = tiny.encode_image(frames.flatten(0, 1)).unflatten(0, (2, 3))
    torch.testing.assert_close(ours, reference)


def test_prefix_prompts_sit_after_start_token(tiny):
    """Zero prompts in slot positions must change the feature only through attention, and the
    EOT is read at its shifted position: check by comparing against a hand-built sequence."""
    tokens = open_clip.get_tokenizer("tiny-synthetic")(["a red circle"], context_length=8)
    width = tiny.token_embedding.embedding_dim
    layers = len(tiny.transformer.resblocks)
    prefix, postfix = torch.randn(layers, 2, width), torch.randn(layers, 3, width)
    ours = PromptedCLIP(tiny).encode_text(tokens, TextPrompts(prefix, postfix))

    x = tiny.token_embedding(tokens) + tiny.positional_embedding[:8]
    x = torch.cat([x[:, :1], prefix[0][None], x[:, 1:], postfix[0][None]], dim=1)  # (1, 13, D)
    mask = torch.full((13, 13), float("-inf")).triu(1)
    for layer, block in enumerate(tiny.transformer.resblocks):
        x = torch.cat([x[:, :1], prefix[layer][None], x[:, 3:10], postfix[layer][None]], dim=1)
        x = block(x, attn_mask=mask)
    eot = tokens.argmax(-1).item() + 2
    reference = tiny.ln_final(x)[:, eot] @ tiny.text_projection
    torch.testing.assert_close(ours, reference)


def test_global_local_mask_entry_by_entry():
    """2 global prompts, 3 frames of 2 tokens: S = 8."""
    allowed = global_local_mask(2, 3, 2) == 0
    frame_of = [-1, -1, 0, 0, 1, 1, 2, 2]
    for q in range(8):
        for k in range(8):
            expected = frame_of[q] == -1 or frame_of[k] == -1 or frame_of[q] == frame_of[k]
            assert allowed[q, k].item() == expected, (q, k)


def test_ulp_is_order_blind_upt_is_not(tiny):
    """ULP gives every frame the same prompts and DGL has no time embedding: reversing the frames
    leaves the video feature unchanged. UPT's frame-specific prompts break that symmetry."""
    frames = torch.randn(1, 4, 3, 64, 64)
    reverse = frames.flip(1)
    for generator, blind in (("ulp", True), ("upt", False)):
        method = build_method("dgl", tiny, dgl_cfg(generator=generator), num_frames=4).eval()
        _, video_prompts = method.prompts()
        with torch.no_grad():
            a, b = method.encode_video(frames, video_prompts), method.encode_video(reverse, video_prompts)
        assert torch.allclose(a, b, atol=1e-5) == blind, generator


def test_temporal_pos_breaks_order_blindness(tiny):
    method = build_method("dgl", tiny, dgl_cfg(temporal_pos=True), num_frames=4).eval()
    torch.nn.init.normal_(method.temporal)
    frames = torch.randn(1, 4, 3, 64, 64)
    _, video_prompts = method.prompts()
    with torch.no_grad():
        assert not torch.allclose(method.encode_video(frames, video_prompts),
                                  method.encode_video(frames.flip(1), video_prompts), atol=1e-4)
