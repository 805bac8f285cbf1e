"""Every row of the papers' comparison tables is a registered method: counts, gradients, config."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dgl.errors import UserError
from dgl.models.backbone import build_clip
from dgl.models.loss import contrastive_loss
from dgl.models.methods import METHODS, build_method, count_parameters
from dgl.param_counts import PAPER_MODEL
from dgl.settings import METHOD_NAMES, ModelConfig, merge
from helpers import ROOT, call_main, group


def model_cfg(method: str, **groups) -> ModelConfig:
    """params.yaml's model group at the papers' ViT-B sizes (dgl.param_counts.PAPER_MODEL), with `groups`."""
    return group("model", **merge(PAPER_MODEL, {"method": method, **groups}))


def tiny_clip():
    torch.manual_seed(0)
    return build_clip("tiny-synthetic")


# (what the paper prints in M, our exact count) for ViT-B/32 and 12 frames. The readings behind
# each count are in the method's docstring (peft.py, vop.py).
PAPER = {
    "bias": (0.1, 138_240),
    "proj": (0.7, 655_360),
    "partial": (7.7, 7_745_792),
    "adapter_attn": (2.0, 1_982_976),
    "adapter_ffn": (2.0, 1_982_976),
    "vop": (0.1, 122_880),
    "vop_p": (0.5, 528_384),
    "vop_c": (14.3, 14_257_152),
    "vop_f": (0.1, 132_096),
    "vop_fp": (0.4, 402_432),
    "vop_fc": (14.1, 14_278_656),
}
GAPS = {"vop_fc": "VoP's F+C (14.1M) cannot be below its shared CMM+FC (14.17M); see VoPFunctionContext"}


@pytest.mark.parametrize("method", sorted(PAPER))
def test_trainable_counts_match_the_papers(vit_b32, method):
    paper_m, exact = PAPER[method]
    counts = count_parameters(build_method(method, vit_b32, model_cfg(method), num_frames=12))
    assert counts["trainable"] == exact
    if method in GAPS:
        pytest.xfail(GAPS[method])
    assert round(counts["trainable"] / 1e6, 1) == paper_m


def test_vop_f_counts_without_frame_position_match_the_paper_percentages(vit_b32):
    """The paper's 0.103 % (F) and 0.328 % (F+P) of 119.8M are these counts exactly."""
    for method, exact in (("vop_f", 122_880), ("vop_fp", 393_216)):
        cfg = model_cfg(method, vop={"frame_pos": False})
        assert count_parameters(build_method(method, vit_b32, cfg, num_frames=12))["trainable"] == exact


def test_registry_and_method_names_agree():
    assert set(METHODS) == set(METHOD_NAMES)


def test_unknown_method_is_rejected_naming_the_key():
    with pytest.raises(UserError, match=r"model\.method"):
        group("model", method="nope")


def test_bad_method_params_are_rejected_naming_the_key():
    with pytest.raises(UserError, match=r"model\.vop\.specific_prompts"):
        model_cfg("vop_p", vop={"specific_prompts": 9})
    with pytest.raises(UserError, match=r"model\.vop\.shallow_layers"):
        build_method("vop_f", tiny_clip(), model_cfg("vop_f"), num_frames=4)  # K^s = 8 > 4 layers
    with pytest.raises(UserError, match=r"model\.partial\.vision_layers"):
        build_method("partial", tiny_clip(), model_cfg("partial", partial={"vision_layers": 5}), num_frames=4)


def tiny_batch():
    tokens = open_clip.get_tokenizer("tiny-synthetic")(["a red circle moves left", "a blue square"], context_length=32)
    return tokens, torch.randn(2, 4, 3, 64, 64)


def encode(method, tokens, frames):
    text_prompts, video_prompts = method.prompts()
    text = F.normalize(method.encode_text(tokens, text_prompts), dim=-1)
    video = F.normalize(method.encode_video(frames, video_prompts), dim=-1)
    return text, video


@pytest.mark.parametrize("method_name", [m for m in METHOD_NAMES if m != "zeroshot"])
def test_one_step_trains_exactly_the_trainable_parameters(method_name):
    clip = tiny_clip()
    method = build_method(method_name, clip, model_cfg(method_name, vop={"shallow_layers": 2}), num_frames=4)
    tokens, frames = tiny_batch()
    text, video = encode(method, tokens, frames)
    contrastive_loss(text, video, method.logit_scale()).backward()
    trainable = {n: p for n, p in method.named_parameters() if p.requires_grad}
    assert trainable
    assert all(p.grad is not None for p in trainable.values()), [n for n, p in trainable.items() if p.grad is None]
    assert all(p.grad is None for p in method.parameters() if not p.requires_grad)
    assert sum(p.grad.abs().sum() for p in trainable.values()) > 0


@pytest.mark.parametrize("method_name", ["adapter_attn", "adapter_ffn"])
def test_adapters_start_as_the_identity_and_leave_clip_untouched(method_name):
    clip = tiny_clip()
    tokens, frames = tiny_batch()
    zeroshot = build_method("zeroshot", clip, model_cfg("zeroshot"), num_frames=4)
    adapted = build_method(method_name, clip, model_cfg(method_name), num_frames=4)
    with torch.no_grad():
        torch.testing.assert_close(encode(adapted, tokens, frames), encode(zeroshot, tokens, frames))
        for adapter in adapted.adapters:
            torch.nn.init.normal_(adapter.up.weight)
        assert not torch.allclose(encode(adapted, tokens, frames)[1], encode(zeroshot, tokens, frames)[1])
    assert not any(m._forward_hooks for m in clip.modules())  # hooks live only inside the method's calls


def test_vop_p_and_f_see_frame_order_vop_does_not():
    """Shared prompts and per-frame encoding make VoP order-blind; position-specific prompts and
    the frame position embedding of the inter-frame layers do not."""
    tokens, frames = tiny_batch()
    for name, blind in (("vop", True), ("vop_p", False), ("vop_f", False), ("vop_c", False)):
        method = build_method(name, tiny_clip(), model_cfg(name, vop={"shallow_layers": 2}), num_frames=4).eval()
        _, video_prompts = method.prompts()
        with torch.no_grad():
            a, b = method.encode_video(frames, video_prompts), method.encode_video(frames.flip(1), video_prompts)
        assert torch.allclose(a, b, atol=1e-5) == blind, name


def test_vop_f_with_every_layer_intra_frame_is_vop():
    """The paper: with K^s = K, VoP^F degrades to VoP."""
    tokens, frames = tiny_batch()
    vop = build_method("vop", tiny_clip(), model_cfg("vop"), num_frames=4).eval()
    vop_f = build_method(
        "vop_f", tiny_clip(), model_cfg("vop_f", vop={"shallow_layers": 4, "frame_pos": False}), num_frames=4
    ).eval()
    vop_f.load_state_dict(vop.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(encode(vop_f, tokens, frames), encode(vop, tokens, frames))


def test_vop_c_prompts_depend_on_the_video():
    method = build_method("vop_c", tiny_clip(), model_cfg("vop_c"), num_frames=4)
    _, video_prompts = method.prompts()
    tokens = torch.randn(2, 4, 1 + 8 + 16, 128)  # (B, T, CLS + prompts + patches, Dv) entering layer 1
    prompts = video_prompts.frame(1, tokens)
    assert prompts.shape == (2, 4, 8, 128)
    torch.testing.assert_close(prompts[:, :, :4], method.frame_prompts[1].expand(2, 4, -1, -1))  # shared part
    assert not torch.allclose(prompts[0, :, 4:], prompts[1, :, 4:])  # generated part: per video


@pytest.mark.slow
def test_params_cli_prints_dgl_ulp_count(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = call_main(
        "dgl.param_counts", ["--backbone", "ViT-B-32", "--method", "dgl", "--generator", "ulp"], monkeypatch, capsys
    )
    assert out.returncode == 0, out.stderr
    assert "827,392" in out.stdout
    assert "123,540,993" in out.stdout
