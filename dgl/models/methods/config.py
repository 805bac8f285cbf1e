"""params.yaml group `model`: the method name and each method's own hyper-parameters."""
from __future__ import annotations

from dataclasses import dataclass, field

from dgl.config import choice
from dgl.models.methods.dgl import DGLConfig

METHOD_NAMES = ("dgl", "zeroshot", "full")


@dataclass(frozen=True)
class ModelConfig:
    method: str = choice("dgl", *METHOD_NAMES)
    dgl: DGLConfig = field(default_factory=DGLConfig)
