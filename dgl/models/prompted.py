"""One prompted-encoder implementation on open_clip's CLIP, shared by every method.

A method only declares which prompts exist (`TextPrompts`, `VideoPrompts`); this module inserts
them into open_clip's own modules (token embedding, residual blocks, final norms, projections)
without re-implementing them.

Text sequence (DGL Eq. (1) of docs/method.md):
  [SOT, prefix prompts, word slots (incl. EOT and padding), postfix prompts]
  With `postfix_before_eot` (our option, off by default) the postfix prompts sit right before EOT,
  where the causal mask lets them influence the text feature (docs/method.md, "Reference-code
  behaviour": as placed by default they never reach the EOT token).
Video sequence (global-local, DGL Eq. (2)): [global prompts] + T x [CLS, frame prompts, patches]
Video sequence (per frame):    each frame alone: [CLS, frame prompts, patches]
Video sequence (joint, VoP^F):  the first K layers per frame as above; the later layers see one
  sequence per video, [video prompts] + T x [CLS, patches], with full attention
Prompts carry no position embedding; visual prompts are inserted after `ln_pre`. Deep prompts
overwrite their slots at the input of every prompted layer; global prompts are shallow.
Frame prompts are either fixed tensors or a function of (layer, the frame tokens entering that
layer), for prompts generated from the video itself (VoP^C).

Activation checkpointing (`activation_checkpointing`, train.activation_checkpointing): every
transformer block of both towers keeps only its input for the backward pass and recomputes its
activations there (torch.utils.checkpoint, non-reentrant). With frozen blocks only the prompts
train, yet their gradients flow back through every block after them, so each block's activations
would otherwise stay in memory until the backward pass reaches it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dgl.models.attention import causal_mask, global_local_block


@dataclass
class TextPrompts:
    prefix: Tensor  # (layers, Np, Dt); layer l's prompts enter at the input of block l
    postfix: Tensor  # (layers, Nq, Dt)


# (layer, frame tokens entering that layer (B, T, F, Dv)) -> that layer's frame prompts
# (B or 1, T or 1, Nf, Dv), or None for no new prompts there. Nf must be the same at every layer.
FramePromptFn = Callable[[int, Tensor], Tensor | None]


@dataclass
class VideoPrompts:
    frame: Tensor | FramePromptFn | None  # (layers, T or 1, Nf, Dv); 1 = the same prompts for every frame
    global_: Tensor | None = None  # (Ng, Dv), shallow
    video: Tensor | None = None  # (joint layers, Nv, Dv): deep video-level prompts (encode_frames_joint)


def _text_slots(
    tokens: Tensor, n_prefix: int, n_postfix: int, postfix_before_eot: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Where every position of the prompted text sequence comes from.

    Returns `source` (B, S): index into [word slots (L), prompts (Np + Nq)]; `prompt_id` (B, S):
    which prompt sits at a position (-1 for a word slot); `eot` (B,): the EOT position.
    """
    batch, length = tokens.shape
    n_prompts = n_prefix + n_postfix
    eot_word = tokens.argmax(dim=-1)  # (B,) EOT has the largest id in CLIP's vocabulary
    pos = torch.arange(length + n_prompts, device=tokens.device).expand(batch, -1)  # (B, S)
    postfix_start = (
        (eot_word + n_prefix)[:, None] if postfix_before_eot else torch.full_like(pos[:, :1], length + n_prefix)
    )
    is_prefix = (pos >= 1) & (pos < 1 + n_prefix)
    is_postfix = (pos >= postfix_start) & (pos < postfix_start + n_postfix)
    words_before = (pos - is_prefix.long().cumsum(1) - is_postfix.long().cumsum(1)).clamp(0, length - 1)
    prompt_id = torch.where(is_prefix, pos - 1, torch.where(is_postfix, n_prefix + pos - postfix_start, -1))
    source = torch.where(prompt_id >= 0, length + prompt_id, words_before)
    eot = eot_word + n_prefix + (n_postfix if postfix_before_eot else 0)
    return source, prompt_id, eot


def _unpinned(arg):
    """A tensor that is a view into a larger storage (DGL's global prompts: the first G rows of the last
    block's output) as a copy of its own: a checkpoint keeps its inputs, and a view would keep the
    whole storage. Same values; anything else as it is."""
    if isinstance(arg, Tensor) and arg.untyped_storage().nbytes() > arg.numel() * arg.element_size():
        return arg.clone()
    return arg


class PromptedCLIP(nn.Module):
    """open_clip's CLIP with prompt slots in its text and vision transformers."""

    def __init__(self, clip: nn.Module, postfix_before_eot: bool = False):
        super().__init__()
        self.clip = clip
        self.postfix_before_eot = postfix_before_eot
        self.activation_checkpointing = False  # set by training (train.activation_checkpointing)
        # what a recomputation runs inside: whatever the forward pass had around the blocks that
        # changes what they compute (the adapters' hooks, peft.py)
        self.recompute_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    def _block(self, fn: Callable[..., Tensor], *args, **kwargs):
        """fn(*args, **kwargs), one transformer block; under activation checkpointing while autograd
        records, only its inputs are kept and its activations recomputed in the backward pass (same
        operations: the same values; no block draws random numbers)."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            args = tuple(_unpinned(a) for a in args)
            return checkpoint(
                fn,
                *args,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), self.recompute_context()),
                **kwargs,
            )
        return fn(*args, **kwargs)

    # ---- text ----------------------------------------------------------------------------
    def encode_text(self, tokens: Tensor, prompts: TextPrompts | None = None) -> Tensor:
        """tokens (B, L) -> text features (B, E), not normalised: DGL Eq. (1), the EOT token's output
        (shifted by the prefix prompts) after ln_final and the projection."""
        clip = self.clip
        length = tokens.shape[1]
        x = clip.token_embedding(tokens) + clip.positional_embedding[:length]  # (B, L, Dt)
        if prompts is None:
            slots, prompt_id, eot = None, None, tokens.argmax(dim=-1)
        else:
            n_prefix, n_postfix = prompts.prefix.shape[1], prompts.postfix.shape[1]
            source, prompt_id, eot = _text_slots(tokens, n_prefix, n_postfix, self.postfix_before_eot)
            slots = source
            prompt_bank = torch.cat([prompts.prefix, prompts.postfix], dim=1)  # (layers, Np+Nq, Dt)
            x = torch.cat([x, x.new_zeros(x.shape[0], n_prefix + n_postfix, x.shape[2])], dim=1)
            x = x.gather(1, slots[..., None].expand(-1, -1, x.shape[2]))  # (B, S, Dt)
        mask = causal_mask(x.shape[1], str(x.device)).to(x.dtype)
        for layer, block in enumerate(clip.transformer.resblocks):
            if slots is not None and layer < prompt_bank.shape[0]:
                layer_prompts = prompt_bank[layer][prompt_id.clamp(min=0)]  # (B, S, Dt)
                x = torch.where((prompt_id >= 0)[..., None], layer_prompts.to(x.dtype), x)
            x = self._block(block, x, attn_mask=mask)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (B, Dt)
        return x @ clip.text_projection

    # ---- video ---------------------------------------------------------------------------
    def frame_tokens(self, frames: Tensor, temporal: Tensor | None = None) -> Tensor:
        """frames (B, T, 3, H, W) -> per-frame [CLS, patches] after ln_pre: (B, T, 1+P, Dv)."""
        batch, num_frames = frames.shape[:2]
        x = self.visual._embeds(frames.flatten(0, 1))  # (B*T, 1+P, Dv)
        x = x.unflatten(0, (batch, num_frames))
        if temporal is not None:  # our frame-order extension: one learned vector per frame index
            x = x + temporal[None, :num_frames, None, :]
        return x

    def _with_frame_prompts(
        self, x: Tensor, prompts: Tensor | FramePromptFn | None, layer: int, inserted: bool
    ) -> Tensor:
        """x (B, T, F, Dv); put layer `layer`'s frame prompts right after each CLS token."""
        if prompts is None:
            return x
        if callable(prompts):
            p = prompts(layer, x)  # generated from the tokens entering this layer
            if p is None:
                return x
        elif layer >= prompts.shape[0]:
            return x
        else:
            p = prompts[layer]
        n = p.shape[-2]
        p = p.to(x.dtype).expand(x.shape[0], x.shape[1], -1, -1)  # (B, T, Nf, Dv)
        rest = x[:, :, 1 + n :] if inserted else x[:, :, 1:]
        return torch.cat([x[:, :, :1], p, rest], dim=2)

    def encode_frames(
        self, frames: Tensor, prompts: VideoPrompts | None = None, temporal: Tensor | None = None
    ) -> Tensor:
        """Each frame encoded alone, CLS -> ln_post -> proj: (B, T, E)."""
        x = self.frame_tokens(frames, temporal)  # (B, T, 1+P, Dv)
        frame_prompts = prompts.frame if prompts is not None else None
        batch, num_frames = x.shape[:2]
        for layer, block in enumerate(self.visual.transformer.resblocks):
            x = self._with_frame_prompts(x, frame_prompts, layer, inserted=layer > 0)
            x = self._block(block, x.flatten(0, 1)).unflatten(0, (batch, num_frames))
        cls = self.visual.ln_post(x[:, :, 0])  # (B, T, Dv)
        return cls @ self.visual.proj

    def encode_frames_joint(
        self, frames: Tensor, prompts: VideoPrompts, joint_from: int, frame_pos: Tensor | None = None
    ) -> Tensor:
        """VoP^F's encoder: layers < `joint_from` encode each frame alone with its frame prompts
        (intra-frame); from layer `joint_from` on, the frame prompt slots are dropped, `frame_pos`
        (T, Dv) is added to every token of frame t, and each frozen block attends over one sequence
        per video, [video prompts of that layer, all frames' CLS and patches] (inter-frame). The
        video prompts are deep: their outputs are discarded. Returns per-frame CLS features (B, T, E)."""
        x = self.frame_tokens(frames)  # (B, T, 1+P, Dv)
        batch, num_frames, frame_len = x.shape[:3]
        blocks = self.visual.transformer.resblocks
        for layer, block in enumerate(blocks[:joint_from]):
            x = self._with_frame_prompts(x, prompts.frame, layer, inserted=layer > 0)
            x = self._block(block, x.flatten(0, 1)).unflatten(0, (batch, num_frames))
        n_frame_prompts = x.shape[2] - frame_len
        x = torch.cat([x[:, :, :1], x[:, :, 1 + n_frame_prompts :]], dim=2)  # (B, T, 1+P, Dv)
        if frame_pos is not None:
            x = x + frame_pos[None, :num_frames, None, :].to(x.dtype)
        x = x.flatten(1, 2)  # (B, T*(1+P), Dv)
        video = prompts.video
        for layer in range(joint_from, len(blocks)):
            if video is None or layer - joint_from >= video.shape[0]:
                x = self._block(blocks[layer], x)
                continue
            p = video[layer - joint_from].to(x.dtype).expand(batch, -1, -1)  # (B, Nv, Dv)
            x = self._block(blocks[layer], torch.cat([p, x], dim=1))[:, p.shape[1] :]  # prompt outputs discarded
        cls = self.visual.ln_post(x.unflatten(1, (num_frames, frame_len))[:, :, 0])  # (B, T, Dv)
        return cls @ self.visual.proj

    def encode_video_global_local(
        self, frames: Tensor, prompts: VideoPrompts, temporal: Tensor | None = None, pool: str = "global"
    ) -> tuple[Tensor, Tensor]:
        """DGL's video encoder: the sequence of DGL Eq. (2), every block with the global-local attention of
        Eqs. (5)-(6), the video feature of Eq. (8). Returns (video features (B, E), per-frame CLS
        features (B, T, E))."""
        x = self.frame_tokens(frames, temporal)  # (B, T, 1+P, Dv)
        g = prompts.global_.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, Ng, Dv)
        for layer, block in enumerate(self.visual.transformer.resblocks):
            x = self._with_frame_prompts(x, prompts.frame, layer, inserted=layer > 0)  # (B, T, F, Dv)
            g, x = self._block(global_local_block, block, g, x)
        global_feats = self.visual.ln_post(g) @ self.visual.proj  # (B, Ng, E)
        cls_feats = self.visual.ln_post(x[:, :, 0]) @ self.visual.proj  # (B, T, E)
        return VIDEO_POOLS[pool](global_feats, cls_feats), cls_feats


VIDEO_POOLS = {
    "global": lambda g, cls: g[:, 0],  # the paper, DGL Eq. (8): the first global prompt
    "global_mean": lambda g, cls: g.mean(1),
    "cls_mean": lambda g, cls: cls.mean(1),
    "both": lambda g, cls: torch.cat([g, cls], dim=1).mean(1),
}
