"""DGL as published: parameter counts, prompt placement, global-local attention, frozen CLIP."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dgl.models.attention import global_local_block, global_local_mask
from dgl.models.backbone import build_clip
from dgl.models.loss import contrastive_loss
from dgl.models.methods import build_method, count_parameters
from dgl.models.prompted import PromptedCLIP, TextPrompts
from helpers import group


def dgl_cfg(**kw):
    return SimpleNamespace(dgl=group("model.dgl", **kw))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_clip("tiny-synthetic")


# The paper's Table: ULP 0.83M, UPT 9.57M (docs/method.md, "Trainable parameters", derives both exactly).
@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["ViT-B-32", "ViT-B-16"])
@pytest.mark.parametrize(
    "generator,expected,generator_part",
    [
        ("ulp", 827_392, 36_864 + 787_456),
        ("upt", 9_575_168, 516_096 + 7_087_872 + 1_968_128),
    ],
)
def test_trainable_counts_match_the_paper(backbone, generator, expected, generator_part, request):
    clip = request.getfixturevalue({"ViT-B-32": "vit_b32", "ViT-B-16": "vit_b16"}[backbone])
    counts = count_parameters(build_method("dgl", clip, dgl_cfg(generator=generator), num_frames=12))
    assert counts["trainable"] == expected
    assert counts["trainable_generator"] == generator_part
    assert counts["trainable_global_prompts"] == 3_072
    if backbone == "ViT-B-32":
        assert counts["clip4clip_denominator"] == 123_540_993  # the paper's 0.67 % denominator
        assert round(100 * counts["trainable_ratio_clip4clip"], 2) == {"ulp": 0.67, "upt": 7.75}[generator]


@pytest.mark.slow
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
    clip = copy.deepcopy(tiny)  # open_clip's causal mask cut to 32 tokens on a copy: tiny is shared by the module
    clip.attn_mask = clip.attn_mask[:32, :32]
    reference = clip.encode_text(tokens)
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


def test_global_local_attention_entry_by_entry(tiny):
    """2 global prompts, 3 frames of 2 tokens: S = 8. Which token may attend to which, as the mask
    states it and as the two-call block computes it: output token q depends on input token k != q
    only through attention (the MLP acts per token), so the block's Jacobian is the attention pattern."""
    frame_of = [-1, -1, 0, 0, 1, 1, 2, 2]
    expected = torch.tensor(
        [
            [q == k or frame_of[q] == -1 or frame_of[k] == -1 or frame_of[q] == frame_of[k] for k in range(8)]
            for q in range(8)
        ]
    )
    assert torch.equal(global_local_mask(2, 3, 2) == 0, expected)

    block, width = tiny.visual.transformer.resblocks[0], tiny.visual.class_embedding.shape[0]

    readout = torch.randn(width)

    def two_call(seq):  # (S, D) -> (S,): each output token read out along a random direction
        g, x = global_local_block(block, seq[None, :2], seq[2:].unflatten(0, (3, 2))[None])
        return torch.cat([g[0], x[0].flatten(0, 1)]) @ readout

    jacobian = torch.autograd.functional.jacobian(two_call, torch.randn(8, width))  # (S, S, D)
    depends = jacobian.abs().amax(dim=2) > 0  # (S, S): query q's output depends on token k
    for q in range(8):
        for k in range(8):
            assert depends[q, k].item() == expected[q, k].item(), (q, k)


def masked_global_local(encoder: PromptedCLIP, frames, prompts):
    """The specification: every block runs once over the whole video sequence under the block mask."""
    x = encoder.frame_tokens(frames)  # (B, T, 1+P, Dv)
    batch, num_frames = x.shape[:2]
    g = prompts.global_.expand(batch, -1, -1)
    n_global = g.shape[1]
    for layer, block in enumerate(encoder.visual.transformer.resblocks):
        x = encoder._with_frame_prompts(x, prompts.frame, layer, inserted=layer > 0)
        frame_len = x.shape[2]
        seq = block(
            torch.cat([g, x.flatten(1, 2)], dim=1), attn_mask=global_local_mask(n_global, num_frames, frame_len)
        )
        g, x = seq[:, :n_global], seq[:, n_global:].unflatten(1, (num_frames, frame_len))
    return encoder.visual.ln_post(g) @ encoder.visual.proj, encoder.visual.ln_post(x[:, :, 0]) @ encoder.visual.proj


@pytest.mark.parametrize("generator", ["ulp", "upt"])
def test_two_call_video_encoder_equals_masked_single_call(tiny, generator):
    torch.manual_seed(1)
    method = build_method("dgl", tiny, dgl_cfg(generator=generator, video_feature="global_mean"), num_frames=3)
    frames = torch.randn(2, 3, 3, 64, 64)
    _, prompts = method.prompts()
    with torch.no_grad():
        video, cls = method.encoder.encode_video_global_local(frames, prompts, pool="global_mean")
        global_ref, cls_ref = masked_global_local(method.encoder, frames, prompts)
    torch.testing.assert_close(video, global_ref.mean(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(cls, cls_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "variant, blind",
    [
        ({"generator": "ulp"}, True),
        ({"generator": "upt"}, False),
        ({"generator": "ulp", "temporal_pos": True}, False),
    ],
)
def test_only_ulp_is_blind_to_every_order_of_the_frames(tiny, variant, blind):
    """ULP gives every frame the same prompts and DGL has no time embedding, so ULP's video feature
    is the same under every permutation of the frames: it has no order signal by construction. UPT's
    frame-specific prompts and our frame-index embedding (temporal_pos) each break that symmetry."""
    import itertools

    torch.manual_seed(2)
    method = build_method("dgl", tiny, dgl_cfg(**variant), num_frames=4).eval()
    if method.temporal is not None:
        torch.nn.init.normal_(method.temporal)  # trained, it is not zero
    frames = torch.randn(4, 3, 64, 64)
    _, video_prompts = method.prompts()
    orders = list(itertools.permutations(range(4)))  # the original order first; all in one batch
    with torch.no_grad():
        original, *permuted = method.encode_video(frames[torch.tensor(orders)], video_prompts)
    same = [torch.allclose(original, p, atol=1e-5) for p in permuted]
    assert all(same) if blind else not any(same)


def test_the_params_schema_names_every_video_pool():
    from dgl.models.prompted import VIDEO_POOLS
    from dgl.settings import VIDEO_POOLS as ALLOWED

    assert set(ALLOWED) == set(VIDEO_POOLS)


@pytest.mark.parametrize("tag, quick_gelu", [("openai", True), ("laion2b_s34b_b79k", False)])
def test_a_pretrained_tag_gets_the_activation_its_weights_were_trained_with(monkeypatch, tag, quick_gelu):
    """open_clip's ViT-B-32 config uses GELU and only warns for OpenAI's QuickGELU weights; built
    with the wrong one, every real-data number would be off. The weights cannot download here, so
    the model is built without them, with the activation build_clip asked for."""
    real_create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda name, pretrained=None, **kw: real_create(name, None, **kw))
    activation = type(build_clip("ViT-B-32", tag).visual.transformer.resblocks[0].mlp.gelu)
    assert (activation is open_clip.transformer.QuickGELU) == quick_gelu
