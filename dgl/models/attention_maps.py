"""Where DGL's global prompts look (the paper's Figure 5).

In the last vision block, each global prompt's attention (averaged over heads) is averaged over the
global prompts and summed over each frame's tokens (CLS, frame prompts, patches). The global
prompts' attention to themselves is left out and the rest renormalised, so each video gets one
weight per frame, summing to 1 over its frames.

The encoder's global call (attention.global_local_block) returns no weights, so a hook on the
block's ln_1 keeps its output, the tokens the attention reads, and the global rows' weights are
computed from them with the block's own projections (attention.global_attention_weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from dgl.models.attention import global_attention_weights
from dgl.models.methods import Method


@contextlib.contextmanager
def global_attention(block: nn.Module, num_global: int) -> Iterator[list[Tensor]]:
    """While open, every pass through `block` appends its global prompts' head-averaged attention
    (B, G, S) over the whole video sequence to the yielded list."""
    captured: list[Tensor] = []

    def keep(module, args, output):
        captured.append(global_attention_weights(block.attn, output, num_global))

    hook = block.ln_1.register_forward_hook(keep)
    try:
        yield captured
    finally:
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
    with global_attention(method.clip.visual.transformer.resblocks[-1], n_global) as captured:
        method.encode_video(frames, prompts)
    to_frames = captured[-1][:, :, n_global:].mean(1)  # (B, T*F): global queries -> frame tokens
    per_frame = to_frames.unflatten(1, (num_frames, -1)).sum(-1)  # (B, T)
    return per_frame / per_frame.sum(-1, keepdim=True)
