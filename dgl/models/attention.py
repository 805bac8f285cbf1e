"""DGL's global-local video attention (DGL Eqs. (5)-(7) of docs/method.md), and CLIP's causal text mask.

Video sequence: [G global prompts] + T x [F frame tokens], S = G + T*F. Global rows see every token
(global attention, Eq. (5)); the rows of frame t see the global prompts and frame t only (local
attention, Eq. (6)).
`global_local_mask` states this as one block mask over the whole sequence (the specification; the
tests compare against it); `global_local_block` computes the same block output with two attention calls
(global queries; each frame's queries) that skip the T*(T-1)*F^2 masked-out query-key pairs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def global_local_mask(num_global: int, num_frames: int, frame_len: int) -> Tensor:
    """DGL Eq. (7): additive mask (S, S), S = G + T*F: 0 where a query may attend to a key (either is a
    global prompt, or both are in the same frame), -inf elsewhere."""
    size = num_global + num_frames * frame_len
    frame_of = torch.full((size,), -1, dtype=torch.long)  # -1 marks a global prompt
    frame_of[num_global:] = torch.arange(num_frames).repeat_interleave(frame_len)
    query, key = frame_of[:, None], frame_of[None, :]
    allowed = (query == -1) | (key == -1) | (query == key)
    return torch.zeros(size, size).masked_fill_(~allowed, float("-inf"))


def qkv_heads(attn: nn.MultiheadAttention, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """h (B, S, D) -> q, k, v, each (B, H, S, D/H), from attn's own packed in-projection."""
    if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn or attn.dropout:
        raise ValueError(
            "global-local attention expects a plain nn.MultiheadAttention (packed q/k/v "
            "projection, no bias_k/bias_v, no zero attention, no dropout), as open_clip builds it"
        )
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B, S, 3D)
    return qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)


def global_attention_weights(attn: nn.MultiheadAttention, h: Tensor, num_global: int) -> Tensor:
    """h (B, S, D), a block's ln_1 output -> the global rows' attention over all S keys, averaged over
    heads: (B, G, S), rows summing to 1. The weights of global_local_block's global call."""
    q, k, _ = qkv_heads(attn, h)
    scores = q[:, :, :num_global] @ k.transpose(-2, -1) * attn.head_dim**-0.5  # (B, H, G, S)
    return scores.softmax(-1).mean(1)


def global_local_block(block: nn.Module, g: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """One open_clip ResidualAttentionBlock with DGL's global-local attention (DGL Eqs. (5)-(6)), in
    its own frozen weights.

    g (B, G, D) global prompts, x (B, T, F, D) frame tokens -> (g, x) after the block. Equals
    block(cat([g, x.flatten(1, 2)], 1), attn_mask=global_local_mask(G, T, F)) up to float rounding,
    as two attention calls over one q/k/v projection of T per-frame sequences [G globals, frame t]:
      local:  the B*T frames as a batch, each frame's F queries over its own G+F keys;
      global: each video's G global queries over its T sequences laid end to end (a view, no copy),
              the globals' repeats in frames 1..T-1 masked out: keys = the G globals + all T*F tokens.
    """
    batch, num_frames, frame_len, width = x.shape
    n_global = g.shape[1]
    seq = torch.cat([g, x.flatten(1, 2)], dim=1)  # (B, S, D), the residual stream
    h = block.ln_1(seq)
    per_frame = torch.cat(
        [h[:, None, :n_global].expand(-1, num_frames, -1, -1), h[:, n_global:].unflatten(1, (num_frames, frame_len))],
        dim=2,
    )  # (B, T, G+F, D)
    q, k, v = qkv_heads(block.attn, per_frame.flatten(0, 1))  # (B*T, H, G+F, d) each
    out_local = F.scaled_dot_product_attention(q[:, :, n_global:], k, v)  # (B*T, H, F, d), DGL Eq. (6)

    def video(t: Tensor) -> Tensor:  # (B*T, H, G+F, d) -> (B, H, T*(G+F), d)
        return t.unflatten(0, (batch, num_frames)).transpose(1, 2).flatten(2, 3)

    pos = torch.arange(num_frames * (n_global + frame_len), device=x.device)
    keys = (pos < n_global) | (pos % (n_global + frame_len) >= n_global)  # frame 0's globals, every frame token
    out_global = F.scaled_dot_product_attention(
        q[::num_frames, :, :n_global], video(k), video(v), attn_mask=keys[None]
    )  # (B, H, G, d), DGL Eq. (5)
    out_local = out_local.unflatten(0, (batch, num_frames)).permute(0, 1, 3, 2, 4).reshape(batch, -1, width)
    out = torch.cat([out_global.transpose(1, 2).flatten(2), out_local], dim=1)  # (B, S, D), heads merged
    seq = seq + block.ls_1(block.attn.out_proj(out))
    seq = seq + block.ls_2(block.mlp(block.ln_2(seq)))
    return seq[:, :n_global], seq[:, n_global:].unflatten(1, (num_frames, frame_len))


@functools.lru_cache(maxsize=32)
def causal_mask(size: int, device: str = "cpu") -> Tensor:
    """CLIP's causal text mask (S, S): a token sees itself and the tokens before it."""
    return torch.full((size, size), float("-inf")).triu_(1).to(device)
