"""The whole of params.yaml as one typed, validated object."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dgl.config import bounded, build, choice, read_yaml
from dgl.data.synthetic import SyntheticConfig
from dgl.errors import UserError
from dgl.models.methods.config import ModelConfig
from dgl.video import FramesConfig

DATASETS = ("synthetic", "msrvtt", "vatex", "lsmdc", "activitynet")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = choice("synthetic", *DATASETS)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class PreprocessConfig:
    context_length: int = bounded(32, 8, 77)  # BPE tokens incl. start and end
    workers: int = bounded(2, 1, 64)


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining of the small CLIP on single synthetic frames with static captions."""
    images: int = bounded(20000, 64)
    eval_images: int = bounded(1000, 16)
    shape_steps: int = bounded(600, 0)  # steps of the image tower's shape warm-up; 0 = contrastive only
    epochs: int = bounded(4, 1)  # contrastive epochs
    batch_size: int = bounded(256, 2)
    lr: float = bounded(1e-3, 0.0, 1.0)
    seed: int = 0


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "tiny-synthetic"  # an open_clip model name (ViT-B-32, ViT-B-16) or one of dgl/models/configs
    pretrained: str = ""  # open_clip pretrained tag (e.g. openai) or a local checkpoint; "" = pretrain here
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(5, 0)
    batch_size: int = bounded(64, 2)
    lr: float = bounded(2e-3, 0.0, 1.0)
    weight_decay: float = bounded(0.2, 0.0, 10.0)
    warmup_fraction: float = bounded(0.1, 0.0, 1.0)
    grad_clip: float = bounded(1.0, 0.0)
    val_fraction: float = bounded(0.1, 0.0, 0.5)  # train videos held out for per-epoch validation
    seed: int = 42
    device: str = choice("auto", "auto", "cpu", "cuda")
    threads: int = bounded(0, 0, 256)  # CPU threads for torch; 0 = torch's default
    amp: str = choice("auto", "auto", "off", "bf16", "fp16")  # CUDA only; auto = bf16 where supported
    nproc: int = bounded(1, 1, 1024)  # processes on this machine (torchrun, DDP); batch_size stays global
    accum_steps: int = bounded(1, 1, 1024)  # sub-batches per step (GradCache): same loss, less memory

    def validate(self) -> None:
        if self.batch_size % (self.nproc * self.accum_steps):
            raise UserError(f"params: train.batch_size = {self.batch_size} (the global batch) must split evenly over "
                            f"train.nproc x train.accum_steps = {self.nproc * self.accum_steps}; change one of them")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = bounded(64, 1)
    chunk_size: int = bounded(1024, 1)  # similarity rows per chunk: bounds memory on large galleries
    dsl: bool = False  # dual softmax at inference (needs the whole query set): reported separately


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = ""  # "" = sqlite:///<repo>/mlflow.db (DVC_ROOT under DVC); MLFLOW_TRACKING_URI overrides
    experiment: str = "dgl"


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def load_params(path: Path | str = "params.yaml") -> Params:
    return build(Params, read_yaml(Path(path)))


def repo_root() -> Path:
    """The repository root: DVC_ROOT under `dvc repro`/`dvc exp run` (also in queued runs)."""
    return Path(os.environ.get("DVC_ROOT", os.getcwd())).resolve()
