"""The efficient-tuning baselines of the VoP and DGL tables: Bias, Proj, Partial, Adapter-ATTN/-FFN.

Each trains a small part of CLIP (or small modules beside it) and pools frames by their mean,
like CLIP4Clip-meanP. Counts below are for ViT-B/32; the VoP paper prints them with one decimal
in M and as a percentage of its "Full" denominator (119.8M, which we cannot reproduce from CLIP's
parameters: see dgl/param_counts.py).
"""

from __future__ import annotations

from torch import Tensor, nn

from dgl.errors import UserError
from dgl.models.adapters import Adapter, attached
from dgl.models.methods.base import Method, register
from dgl.models.prompted import TextPrompts, VideoPrompts
from dgl.settings import AdapterConfig, PartialConfig


def _linear_biases(module: nn.Module, layer_norm: bool) -> set[str]:
    """Names of the bias vectors of every linear map (incl. attention in/out) under `module`."""
    names = set()
    for prefix, m in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(m, nn.Linear) and m.bias is not None:
            names.add(f"{dot}bias")
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is not None:
            names.add(f"{dot}in_proj_bias")
        elif layer_norm and isinstance(m, nn.LayerNorm) and m.bias is not None:
            names.add(f"{dot}bias")
    return names


@register("bias")
class Bias(Method):
    """BitFit/TinyTL: only bias terms train. Reading that gives the paper's 0.1M: the biases of
    every linear map of both encoders (attention in/out projections, MLP): 138,240 at ViT-B/32.
    Adding LayerNorm shifts (`model.bias.layer_norm`) gives 171,008 = 0.2M. (The paper's 0.104 %
    of 119.8M, ~124.6k, matches no natural subset of CLIP's biases.)"""

    def __init__(self, clip: nn.Module, cfg, num_frames: int):
        super().__init__(clip, cfg, num_frames)
        self._trainable = _linear_biases(clip, cfg.bias.layer_norm)

    def clip_trainable(self, name: str) -> bool:
        return name in self._trainable


@register("proj")
class Proj(Method):
    """Only the last linear projection of each encoder (text_projection 512x512, visual.proj
    768x512): 655,360 = the paper's 0.7M (and exactly its 0.547 % of 119.8M)."""

    def clip_trainable(self, name: str) -> bool:
        return name in ("text_projection", "visual.proj")


@register("partial")
class Partial(Method):
    """VPT's Partial-k: the last layer(s) train. The paper says "the last layer of both encoders"
    and prints 7.7M; at ViT-B/32 one vision block is 7,087,872 and one text block 3,152,384, so
    7.7M holds the last vision block but no text block. Our reading: the last
    `model.partial.vision_layers` (1) vision blocks, the last `text_layers` (0) text blocks, and
    both encoders' output layers (final LayerNorm + projection): 7,745,792 = 7.7M. With a text
    block as well it would be 10.9M. (The paper's 6.410 % of 119.8M, ~7.68M, matches no natural
    set of whole modules.)"""

    def __init__(self, clip: nn.Module, cfg, num_frames: int):
        super().__init__(clip, cfg, num_frames)
        c: PartialConfig = cfg.partial
        prefixes = ["visual.ln_post.", "visual.proj", "ln_final.", "text_projection"]  # output layers
        for key, tuned, blocks in (
            ("vision_layers", c.vision_layers, "visual.transformer.resblocks"),
            ("text_layers", c.text_layers, "transformer.resblocks"),
        ):
            depth = len(clip.get_submodule(blocks))
            if tuned > depth:
                raise UserError(
                    f"params: model.partial.{key} = {tuned} exceeds the backbone's {depth} layers; "
                    f"use a value up to {depth}"
                )
            prefixes += [f"{blocks}.{i}." for i in range(depth - tuned, depth)]
        self._prefixes = tuple(prefixes)

    def clip_trainable(self, name: str) -> bool:
        return name.startswith(self._prefixes)


class _Adapters(Method):
    """One bottleneck adapter (hidden 64) beside the `sublayer` of every block of both encoders:
    per vision block 768->64->768 (99,136), per text block 512->64->512 (66,112); 12 + 12 blocks
    = 1,982,976 = the paper's 2.0M (exactly its 1.655 % of 119.8M)."""

    sublayer = "attn"

    def __init__(self, clip: nn.Module, cfg, num_frames: int):
        super().__init__(clip, cfg, num_frames)
        c: AdapterConfig = cfg.adapter
        blocks = [*clip.transformer.resblocks, *clip.visual.transformer.resblocks]
        self.adapters = nn.ModuleList(Adapter(b.ln_1.normalized_shape[0], c.hidden, c.scale) for b in blocks)
        self._sublayers = [getattr(b, self.sublayer) for b in blocks]  # open_clip's modules, not owned here
        self.encoder.recompute_context = self._attached  # activation checkpointing recomputes with them

    def _attached(self):
        return attached(zip(self._sublayers, self.adapters))

    def encode_text(self, tokens: Tensor, prompts: TextPrompts | None) -> Tensor:
        with self._attached():
            return super().encode_text(tokens, prompts)

    def encode_video(self, frames: Tensor, prompts: VideoPrompts | None) -> Tensor:
        with self._attached():
            return super().encode_video(frames, prompts)


@register("adapter_attn")
class AdapterAttn(_Adapters):
    """He et al.'s parallel adapter beside each multi-head self-attention (input: ln_1(x))."""

    sublayer = "attn"


@register("adapter_ffn")
class AdapterFFN(_Adapters):
    """AdaptFormer: a parallel adapter beside each MLP (input: ln_2(x))."""

    sublayer = "mlp"
