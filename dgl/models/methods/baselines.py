"""Methods without prompts: zero-shot CLIP and full fine-tuning (CLIP4Clip meanP)."""

from __future__ import annotations

from dgl.models.methods.base import CLIP_INPUT_EMBEDDINGS, Method, register


@register("zeroshot")
class ZeroShot(Method):
    """Nothing trains; the video feature is the mean of its frames' CLIP image features."""


@register("full")
class FullFineTune(Method):
    """CLIP4Clip-meanP full fine-tuning of what CLIP4Clip counts as trained: every weight but
    the input embeddings (123,540,993 for ViT-B/32, the DGL paper's 123.54M)."""

    def clip_trainable(self, name: str) -> bool:
        return not name.startswith(CLIP_INPUT_EMBEDDINGS)
