"""What the training and evaluation loops read: a view of a cached split's videos, and how far ahead
of the batch in use the next is read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dgl.cache.read import CachedSplit

PREFETCH = 1  # batches read ahead of the one in use (dgl.cache.prefetch.device_batches)


@dataclass(frozen=True)
class SplitView:
    """A subset of a cached split's videos (e.g. train minus the validation hold-out)."""

    split: CachedSplit
    videos: np.ndarray  # indices into split's videos

    def captions(self) -> tuple[list[int], Tensor]:
        """Captions of these videos, and each caption's video index *within this view*."""
        position = {v: i for i, v in enumerate(self.videos.tolist())}
        keep = [c for c, v in enumerate(self.split.caption_video.tolist()) if v in position]
        return keep, torch.tensor([position[self.split.caption_video[c].item()] for c in keep])
