"""DGL's local-prompt generators: one shared latent space -> text prompts and frame prompts
(the paper's local prompt generation; ULP is DGL Eq. (3), UPT DGL Eq. (4) of docs/method.md).

Prompts do not depend on the input sample, so a generator runs once per step and its output is
broadcast over the batch. Shapes: K prompted layers, Dv vision width, Dt text width, T frames,
Nl frame prompts per frame, Nt text prompts (half prefix, half postfix).
"""

from __future__ import annotations

import math

import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import Tensor, nn

from dgl.models.prompted import TextPrompts


def vpt_uniform_(tensor: Tensor, patch_size: int, width: int) -> Tensor:
    """VPT's prompt init, as DGL's reference code uses it: U(-a, a), a = sqrt(6 / (3 P^2 + Dv))."""
    bound = math.sqrt(6.0 / (3 * patch_size**2 + width))
    return nn.init.uniform_(tensor, -bound, bound)


class ULP(nn.Module):
    """Unified Linear Projection, DGL Eq. (3): the latent tokens ARE the frame prompts (the same for
    every frame), P_f^l = latent^l; two linear maps Dv -> Dt turn them into the prefix and postfix
    text prompts, P_pre^l = latent^l W_pre + b_pre and P_post^l = latent^l W_post + b_post."""

    def __init__(self, layers: int, n_local: int, vision_width: int, text_width: int, patch_size: int):
        super().__init__()
        self.layers, self.n_local, self.vision_width = layers, n_local, vision_width
        self.latent = nn.Parameter(vpt_uniform_(torch.empty(n_local, layers * vision_width), patch_size, vision_width))
        self.to_prefix = nn.Linear(vision_width, text_width)
        self.to_postfix = nn.Linear(vision_width, text_width)

    def forward(self, num_frames: int) -> tuple[TextPrompts, Tensor]:
        latent = self.latent.view(self.n_local, self.layers, self.vision_width).transpose(0, 1)  # (K, Nl, Dv)
        text = TextPrompts(prefix=self.to_prefix(latent), postfix=self.to_postfix(latent))  # (K, Nl, Dt) each
        frame = latent[:, None]  # (K, 1, Nl, Dv): order-blind by construction
        return text, frame


class UPT(nn.Module):
    """Unified Prompt Transformer, DGL Eq. (4): an embedding table of (Nt + Nl*T) latent tokens per
    layer goes through one shared pre-LN transformer block, Z^l = Block(E^l); the first Nt outputs
    pass an MLP Dv -> 2Dv -> Dt to become text prompts, the rest become Nl *different* prompts for
    each frame index, P_f^l(t) = Z^l[Nt + t*Nl : Nt + (t+1)*Nl]."""

    def __init__(
        self, layers: int, n_text: int, n_local: int, num_frames: int, vision_width: int, text_width: int, heads: int
    ):
        super().__init__()
        if n_text % 2:
            raise ValueError("UPT needs an even number of text prompts (half prefix, half postfix)")
        self.layers, self.n_text, self.n_local, self.num_frames = layers, n_text, n_local, num_frames
        self.vision_width = vision_width
        self.latent = nn.Parameter(torch.randn(n_text + n_local * num_frames, layers * vision_width))  # N(0, 1)
        self.block = ResidualAttentionBlock(vision_width, heads, act_layer=QuickGELU)  # pre-LN, no final LN
        self.to_text = nn.Sequential(
            nn.Linear(vision_width, 2 * vision_width), QuickGELU(), nn.Linear(2 * vision_width, text_width)
        )

    def forward(self, num_frames: int) -> tuple[TextPrompts, Tensor]:
        if num_frames != self.num_frames:
            raise ValueError(f"UPT was built for {self.num_frames} frames, got {num_frames}")
        tokens = self.latent.view(-1, self.layers, self.vision_width).transpose(0, 1)  # (K, Nt + Nl*T, Dv)
        out = self.block(tokens)  # Z^l = Block(E^l); layers are the batch: one shared block for every layer
        text = self.to_text(out[:, : self.n_text])  # (K, Nt, Dt)
        half = self.n_text // 2
        frame = out[:, self.n_text :].unflatten(1, (num_frames, self.n_local))  # (K, T, Nl, Dv)
        return TextPrompts(prefix=text[:, :half], postfix=text[:, half:]), frame
