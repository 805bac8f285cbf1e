"""DGL's global-local video attention, as one block mask over the whole video sequence.

Sequence: [G global prompts] + T x [F frame tokens]. Global rows see every token (global
attention); the rows of frame t see the global prompts and frame t only (local attention).
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=32)
def global_local_mask(num_global: int, num_frames: int, frame_len: int, device: str = "cpu") -> torch.Tensor:
    """Additive mask (S, S), S = G + T*F: 0 where a query may attend to a key, -inf elsewhere."""
    size = num_global + num_frames * frame_len
    frame_of = torch.full((size,), -1, dtype=torch.long)  # -1 marks a global prompt
    frame_of[num_global:] = torch.arange(num_frames).repeat_interleave(frame_len)
    query, key = frame_of[:, None], frame_of[None, :]
    allowed = (query == -1) | (key == -1) | (query == key)
    mask = torch.zeros(size, size).masked_fill_(~allowed, float("-inf"))
    return mask.to(device)


@functools.lru_cache(maxsize=32)
def causal_mask(size: int, device: str = "cpu") -> torch.Tensor:
    """CLIP's causal text mask (S, S): a token sees itself and the tokens before it."""
    return torch.full((size, size), float("-inf")).triu_(1).to(device)
