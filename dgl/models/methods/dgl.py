"""DGL: Dynamic Global-Local prompt tuning (Yang et al., AAAI 2024, arXiv 2401.10588).

docs/method.md explains the method, its shapes and its equations, numbered as cited here:
- Eq. (1) prompted text encoder (deep prefix/postfix prompts): prompted.py, encode_text
- Eq. (2) prompted video sequence [global prompts] + T x [CLS, frame prompts, patches]: prompted.py
- Eq. (3) ULP / Eq. (4) UPT: local prompts of both modalities from one shared latent space per
  layer: generators.py, built in `DGL.__init__`, run once per step in `DGL.prompts`
- Eqs. (5)-(7) global-local attention in every vision block: attention.py
- Eq. (8) video feature: the first global prompt's output after ln_post and the projection
  (`model.dgl.video_feature`: prompted.py, VIDEO_POOLS)
- Eqs. (9)-(10) similarity and symmetric contrastive loss: dgl/models/loss.py
Shapes at ViT-B/32, T = 12: text prompts (K, 4, 512) + (K, 4, 512), frame prompts (K, T or 1, 4, 768),
global prompts (4, 768), video sequence (B, 4 + 12 * 54, 768), features (B, 512).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgl.errors import UserError
from dgl.models.generators import ULP, UPT, vpt_uniform_
from dgl.models.methods.base import Method, register
from dgl.models.prompted import TextPrompts, VideoPrompts
from dgl.settings import DGLConfig


@register("dgl")
class DGL(Method):
    def __init__(self, clip: nn.Module, cfg, num_frames: int):
        super().__init__(clip, cfg, num_frames)
        c: DGLConfig = cfg.dgl
        self.encoder.postfix_before_eot = c.postfix_before_eot
        visual, layers = clip.visual, len(clip.visual.transformer.resblocks)
        if c.prompt_layers > layers:
            raise UserError(
                f"params: model.dgl.prompt_layers = {c.prompt_layers} exceeds the backbone's {layers} "
                f"layers; use 0 (all) or a value up to {layers}"
            )
        prompted = c.prompt_layers or layers
        vision_width, text_width = visual.class_embedding.shape[0], clip.token_embedding.embedding_dim
        patch_size = visual.patch_size[0]
        if c.generator == "ulp":
            self.generator = ULP(prompted, c.local_prompt_len, vision_width, text_width, patch_size)
        else:
            heads = visual.transformer.resblocks[0].attn.num_heads
            self.generator = UPT(
                prompted, c.text_prompt_len, c.local_prompt_len, num_frames, vision_width, text_width, heads
            )
        # G of DGL Eq. (2): shallow, inserted once before the first vision block
        self.global_prompts = nn.Parameter(
            vpt_uniform_(torch.empty(c.global_prompt_len, vision_width), patch_size, vision_width)
        )
        self.temporal = nn.Parameter(torch.zeros(num_frames, vision_width)) if c.temporal_pos else None
        self.video_feature = c.video_feature

    def prompts(self) -> tuple[TextPrompts, VideoPrompts]:
        text, frame = self.generator(self.num_frames)  # DGL Eq. (3) or (4), once per step
        return text, VideoPrompts(frame=frame, global_=self.global_prompts)

    def encode_video(self, frames: Tensor, prompts: VideoPrompts) -> Tensor:
        # DGL Eqs. (2), (5)-(8): frames (B, T, 3, H, W) -> video features (B, E)
        video, _ = self.encoder.encode_video_global_local(frames, prompts, self.temporal, self.video_feature)
        return video
