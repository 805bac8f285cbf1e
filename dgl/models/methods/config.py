"""params.yaml group `model`: the method name and each method family's own hyper-parameters."""
from __future__ import annotations

from dataclasses import dataclass, field

from dgl.config import choice
from dgl.models.methods.dgl import DGLConfig
from dgl.models.methods.peft import AdapterConfig, BiasConfig, PartialConfig
from dgl.models.methods.vop import VoPConfig

METHOD_NAMES = (
    "dgl", "zeroshot", "full",  # DGL; zero-shot CLIP; CLIP4Clip-meanP full fine-tuning
    "bias", "proj", "partial", "adapter_attn", "adapter_ffn",  # efficient-tuning baselines (peft.py)
    "vop", "vop_p", "vop_c", "vop_f", "vop_fp", "vop_fc",  # VoP and its video prompts (vop.py)
)


@dataclass(frozen=True)
class ModelConfig:
    method: str = choice("dgl", *METHOD_NAMES)
    dgl: DGLConfig = field(default_factory=DGLConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    partial: PartialConfig = field(default_factory=PartialConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # adapter_attn, adapter_ffn
    vop: VoPConfig = field(default_factory=VoPConfig)  # vop, vop_p, vop_c, vop_f, vop_fp, vop_fc
