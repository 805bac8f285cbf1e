"""Base class, registry and parameter accounting shared by all methods."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from dgl.models.prompted import PromptedCLIP, TextPrompts, VideoPrompts

METHODS: dict[str, type[Method]] = {}

# What CLIP4Clip fine-tunes, i.e. the denominator of the DGL paper's percentages: CLIP minus its
# input embeddings (123,540,993 for ViT-B/32).
CLIP_INPUT_EMBEDDINGS = (
    "token_embedding.",
    "positional_embedding",
    "visual.conv1.",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.ln_pre.",
)


def mean_pool(frame_features: Tensor) -> Tensor:
    """CLIP4Clip's meanP (and VoP's): each frame's feature L2-normalised, then averaged over time.
    (B, T, E) -> (B, E); unnormalised, a frame with a larger norm would outweigh the others."""
    return F.normalize(frame_features, dim=-1).mean(dim=1)


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


class Method(nn.Module):
    """A retrieval method on CLIP. Subclasses add prompts/modules and say which CLIP weights train."""

    name = "method"

    def __init__(self, clip: nn.Module, cfg, num_frames: int):
        super().__init__()
        self.encoder = PromptedCLIP(clip)
        self.num_frames = num_frames

    @property
    def clip(self) -> nn.Module:
        return self.encoder.clip

    def clip_trainable(self, name: str) -> bool:
        """Whether the CLIP weight `name` trains (default: CLIP stays frozen)."""
        return False

    def prompts(self) -> tuple[TextPrompts | None, VideoPrompts | None]:
        """Sample-independent prompts, generated once per step (or once for a whole evaluation)."""
        return None, None

    def encode_text(self, tokens: Tensor, prompts: TextPrompts | None) -> Tensor:
        return self.encoder.encode_text(tokens, prompts)

    def encode_video(self, frames: Tensor, prompts: VideoPrompts | None) -> Tensor:
        """frames (B, T, 3, H, W) -> video features (B, E); default: meanP."""
        return mean_pool(self.encoder.encode_frames(frames, prompts))

    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale.exp()


def build_method(name: str, clip: nn.Module, cfg, num_frames: int) -> Method:
    method = METHODS[name](clip, cfg, num_frames)
    for param_name, param in method.clip.named_parameters():
        param.requires_grad_(method.clip_trainable(param_name))
    return method


def count_parameters(method: Method) -> dict[str, int | float]:
    """Trainable parameters per component, the total, and ratios to the whole model and to
    CLIP4Clip's fine-tuned set (the DGL paper's denominator)."""
    clip_ids = {id(p) for p in method.clip.parameters()}
    components: dict[str, int] = {}
    for name, param in method.named_parameters():
        if not param.requires_grad:
            continue
        key = "clip" if id(param) in clip_ids else name.split(".")[0]
        components[key] = components.get(key, 0) + param.numel()
    trainable = sum(components.values())
    total = sum(p.numel() for p in method.parameters())
    clip4clip = sum(p.numel() for n, p in method.clip.named_parameters() if not n.startswith(CLIP_INPUT_EMBEDDINGS))
    return {
        **{f"trainable_{k}": v for k, v in sorted(components.items())},
        "trainable": trainable,
        "total": total,
        "clip4clip_denominator": clip4clip,
        "trainable_ratio": trainable / total,
        "trainable_ratio_clip4clip": trainable / clip4clip,
    }
