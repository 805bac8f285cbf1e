"""DGL: Dynamic Global-Local prompt tuning (AAAI 2024).

Local prompts for both modalities come from one shared latent space per layer (ULP or UPT,
see generators.py); 4 global prompts are prepended once to the video sequence, and every vision
block runs the global-local attention (attention.py). The video feature is the first global
prompt's output after ln_post and the projection.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dgl.errors import UserError
from dgl.models.generators import ULP, UPT, vpt_uniform_
from dgl.models.methods.base import Method, register
from dgl.settings import DGLConfig
from dgl.models.prompted import TextPrompts, VideoPrompts


@register("dgl")
class DGL(Method):
    def __init__(self, clip: nn.Module, cfg, num_frames: int):
        super().__init__(clip, cfg, num_frames)
        c: DGLConfig = cfg.dgl
        self.encoder.postfix_before_eot = c.postfix_before_eot
        visual, layers = clip.visual, len(clip.visual.transformer.resblocks)
        if c.prompt_layers > layers:
            raise UserError(f"params: model.dgl.prompt_layers = {c.prompt_layers} exceeds the backbone's {layers} "
                            f"layers; use 0 (all) or a value up to {layers}")
        prompted = c.prompt_layers or layers
        vision_width, text_width = visual.class_embedding.shape[0], clip.token_embedding.embedding_dim
        patch_size = visual.patch_size[0]
        if c.generator == "ulp":
            self.generator = ULP(prompted, c.local_prompt_len, vision_width, text_width, patch_size)
        else:
            heads = visual.transformer.resblocks[0].attn.num_heads
            self.generator = UPT(prompted, c.text_prompt_len, c.local_prompt_len, num_frames,
                                 vision_width, text_width, heads)
        self.global_prompts = nn.Parameter(vpt_uniform_(torch.empty(c.global_prompt_len, vision_width),
                                                        patch_size, vision_width))
        self.temporal = nn.Parameter(torch.zeros(num_frames, vision_width)) if c.temporal_pos else None
        self.video_feature = c.video_feature

    def prompts(self) -> tuple[TextPrompts, VideoPrompts]:
        text, frame = self.generator(self.num_frames)
        return text, VideoPrompts(frame=frame, global_=self.global_prompts)

    def encode_video(self, frames: Tensor, prompts: VideoPrompts) -> Tensor:
        video, _ = self.encoder.encode_video_global_local(frames, prompts, self.temporal, self.video_feature)
        return video
