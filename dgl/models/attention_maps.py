"""Where DGL's global prompts look (the paper's Figure 5).

In the last vision block, each global prompt's attention (nn.MultiheadAttention's weights,
averaged over heads) is averaged over the global prompts and summed over each frame's tokens
(CLS, frame prompts, patches). The global prompts' attention to themselves is left out and the
rest renormalised, so each video gets one weight per frame, summing to 1 over its frames.

The weights come from a hook on open_clip's own attention module, which it calls with
need_weights=False: the hook asks for the weights, and open_clip keeps using only the output.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from dgl.models.methods import Method


@contextlib.contextmanager
def attention_weights(attn: nn.MultiheadAttention) -> Iterator[list[Tensor]]:
    """While open, every call of `attn` appends its head-averaged weights (B, S, S) to the yielded list."""
    captured: list[Tensor] = []

    def ask_for_weights(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def keep(module, args, kwargs, output):
        captured.append(output[1])

    hooks = [attn.register_forward_pre_hook(ask_for_weights, with_kwargs=True),
             attn.register_forward_hook(keep, with_kwargs=True)]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def has_global_prompts(method: Method) -> bool:
    _, video_prompts = method.prompts()
    return video_prompts is not None and video_prompts.global_ is not None


@torch.no_grad()
def global_frame_attention(method: Method, frames: Tensor) -> Tensor:
    """frames (B, T, 3, H, W) of a method with global prompts -> (B, T) frame weights, rows summing to 1."""
    method.eval()
    _, prompts = method.prompts()
    n_global, num_frames = prompts.global_.shape[0], frames.shape[1]
    with attention_weights(method.clip.visual.transformer.resblocks[-1].attn) as captured:
        method.encode_video(frames, prompts)
    to_frames = captured[-1][:, :n_global, n_global:].mean(1)  # (B, T*F): global queries -> frame tokens
    per_frame = to_frames.unflatten(1, (num_frames, -1)).sum(-1)  # (B, T)
    return per_frame / per_frame.sum(-1, keepdim=True)
