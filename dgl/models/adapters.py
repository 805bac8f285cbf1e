"""Bottleneck adapters placed in parallel to open_clip's attention or MLP sub-layers.

For a sub-layer f with input h (already through its LayerNorm):

    f(h)  ->  f(h) + s * up(ReLU(down(h)))        down: D -> r, up: r -> D

The up-projection starts at zero, so an adapted CLIP computes exactly the frozen CLIP at
initialisation. Adapters reach open_clip's own modules through forward hooks that live only
inside `attached(...)`: the CLIP module itself is never modified, so one CLIP can be shared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import Tensor, nn


class Adapter(nn.Module):
    """down (D -> r) -> ReLU -> up (r -> D), scaled by s; zero up-projection = identity at init."""

    def __init__(self, width: int, hidden: int, scale: float):
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.act = nn.ReLU()
        self.up = nn.Linear(hidden, width)
        self.scale = scale
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return self.scale * self.up(self.act(self.down(h)))


def _parallel(adapter: Adapter):
    def hook(module: nn.Module, args: tuple, output):
        h = args[0]  # the sub-layer's input: ln_1(x) for attention (the query), ln_2(x) for the MLP
        if isinstance(output, tuple):  # nn.MultiheadAttention returns (attn_output, attn_weights)
            return (output[0] + adapter(h).to(output[0].dtype), *output[1:])
        return output + adapter(h).to(output.dtype)

    return hook


@contextlib.contextmanager
def attached(pairs: Iterable[tuple[nn.Module, Adapter]]) -> Iterator[None]:
    """While active, each (sub-layer, adapter) pair adds the adapter's output beside the sub-layer."""
    handles = [module.register_forward_hook(_parallel(adapter)) for module, adapter in pairs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
