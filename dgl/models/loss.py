"""The training objective shared by every method: DGL Eqs. (9)-(10) of docs/method.md.

Features arrive L2-normalised, so `logit_scale * text @ video.t()` is Eq. (9), the similarity: cosine
times CLIP's frozen logit scale (100). Eq. (10) is the symmetric InfoNCE over the batch: each text's
positive is the video at its own index, every other video in the batch a negative, and the same
from the videos' side. With several processes the caller passes the features of the global batch
(dgl.distributed.gather), so negatives come from every rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_loss(text: Tensor, video: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE over the batch: text (B, E), video (B, E), both L2-normalised -> scalar."""
    logits = logit_scale * text @ video.t()  # (B, B), DGL Eq. (9)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2  # DGL Eq. (10)
