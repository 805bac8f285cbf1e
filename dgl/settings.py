"""The whole of params.yaml as one typed, validated object: the schema, not the values.

Every key lives in params.yaml and nowhere else: these dataclasses give each key its type and
its allowed values, never a default, so a key missing from the file is an error that names it.
Reading params imports neither torch nor open_clip (each stage's deps start here, see dvc.yaml).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgl.errors import UserError
from dgl.typed_yaml import bounded, build, choice, read_yaml

DATASETS = ("synthetic", "msrvtt", "vatex", "lsmdc", "activitynet")
METHOD_NAMES = (
    "dgl",
    "zeroshot",
    "full",  # DGL; zero-shot CLIP; CLIP4Clip-meanP full fine-tuning
    "bias",
    "proj",
    "partial",
    "adapter_attn",
    "adapter_ffn",  # efficient-tuning baselines (peft.py)
    "vop",
    "vop_p",
    "vop_c",
    "vop_f",
    "vop_fp",
    "vop_fc",  # VoP and its video prompts (vop.py)
)
VIDEO_POOLS = ("global", "global_mean", "cls_mean", "both")  # dgl/models/prompted.py: VIDEO_POOLS
VATEX_SPLITS = ("hgr", "official_val")  # data.vatex_split: dgl/data/adapters.py VATEX_SPLITS
SAMPLERS = ("random", "twins")  # train.sampler: dgl/batch_order.py epoch_samples
C10D_PORT = 29400  # torchrun's default port for its c10d rendezvous (dgl/launch.py)
ENDPOINT = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
SEED_MAX = 2**32 - 1  # numpy's global seed (dgl/determinism.py) takes 32 bits


def check_endpoint(value: str, where: str) -> str:
    """`value` when it is host:port (a rendezvous endpoint), else one line naming `where` it came from."""
    match = ENDPOINT.match(value)
    if not match or not 0 < int(match["port"]) < 65536:
        raise UserError(
            f"{where} = {value!r} is not host:port (e.g. node01:{C10D_PORT}); set it to the address "
            "and a free port of one of the machines, reachable from all of them"
        )
    return value


# --- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    """`data.synthetic`: the embedded benchmark (dgl/data/synthetic_scenes.py checks it against the vocabulary)."""

    seed: int = bounded(0, SEED_MAX)
    train_videos: int = bounded(1, 1_000_000)
    test_videos: int = bounded(2, 100_000)  # even: order-sensitive test videos come in twin pairs
    resolution: int = bounded(16, 512)  # square frames, pixels; even (H.264 4:2:0)
    fps: int = bounded(2, 60)
    seconds: float = bounded(1.0, 10.0)
    captions_per_video: int = bounded(1, 5)  # paraphrases per video; at most the templates per kind
    held_out_fraction: float = bounded(0.0, 0.5)  # share of (colour, shape, event) combos seen only in test

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)

    def validate(self) -> None:
        key = "data.synthetic"
        if self.test_videos % 2:
            raise UserError(
                f"params: {key}.test_videos = {self.test_videos} must be even "
                f"(order-sensitive test videos come in time-reversed twin pairs); use {self.test_videos + 1}"
            )
        if self.resolution % 2:
            raise UserError(
                f"params: {key}.resolution = {self.resolution} must be even (H.264 4:2:0); use {self.resolution + 1}"
            )
        if self.frames < 4:
            raise UserError(
                f"params: {key}.seconds = {self.seconds} at fps {self.fps} gives {self.frames} frames; "
                "raise seconds or fps to give at least 4"
            )


@dataclass(frozen=True)
class DataConfig:
    dataset: str = choice(*DATASETS)
    synthetic: SyntheticConfig
    vatex_split: str = choice(*VATEX_SPLITS)  # VATEX's test videos: HGR's 1,500 (the papers') or the official 3,000
    max_extract_gb: float = bounded(0.001, 100_000.0)  # real datasets: the most one archive may write (GB)
    keep_archives: bool  # real datasets: keep each downloaded archive beside its extracted videos


@dataclass(frozen=True)
class FramesConfig:
    """`frames`: N frames per video at a fixed short side (dgl/frames/)."""

    num_frames: int = bounded(1, 512)
    train_candidates: int = bounded(1, 15)  # training videos: frames kept per segment, one drawn per step (odd)
    size: int = bounded(8, 2048)  # short side after resize at extraction (pixels)
    backend: str = choice("ffmpeg", "decord")
    workers: int = bounded(1, 256)  # videos decoded (and synthetic videos rendered) in parallel
    reencode_fps: float | None  # resample every video to this frame rate first (CLIP4Clip: 3); None = off
    codec: str = choice("raw", "jpeg")  # how the frame store keeps pixels (dgl/frames/store.py: CODECS)
    jpeg_quality: int = bounded(1, 100)  # codec jpeg: libjpeg's quality

    def validate(self) -> None:
        if self.train_candidates % 2 == 0:
            raise UserError(
                f"params: frames.train_candidates = {self.train_candidates} must be odd (the middle "
                f"candidate is the segment centre that evaluation uses); use {self.train_candidates + 1}"
            )
        if self.reencode_fps is not None and not 0 < self.reencode_fps <= 240:
            raise UserError(
                f"params: frames.reencode_fps = {self.reencode_fps} is out of range; use a value in (0, 240] or null"
            )


@dataclass(frozen=True)
class PreprocessConfig:
    context_length: int = bounded(8, 77)  # BPE tokens incl. start and end


# --- backbone ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining of the small CLIP on single synthetic frames with static captions."""

    images: int = bounded(64)
    eval_images: int = bounded(16)
    frames_per_video: int = bounded(1, 64)  # moments of one video per batch: hard negatives in place and size
    warmup_steps: int = bounded(0)  # steps of the image tower's warm-up (shape, size, place); 0 = contrastive only
    warmup_batch_size: int = bounded(2)  # lone-object frames per warm-up step
    epochs: int = bounded(1)  # contrastive epochs
    batch_size: int = bounded(2)
    lr: float = bounded(0.0, 1.0)
    seed: int = bounded(0, SEED_MAX)


OUR_BACKBONES = Path(__file__).parent / "models" / "configs"  # open_clip architecture configs of our own


def backbone_names() -> set[str]:
    """What backbone.name may be: an architecture config of open_clip's (in its package) or of ours,
    found without importing open_clip and torch, so that stage `params` rejects a wrong name before
    DVC deletes the backbone it would rebuild."""
    spec = importlib.util.find_spec("open_clip")
    theirs = [Path(folder) / "model_configs" for folder in spec.submodule_search_locations or []] if spec else []
    return {config.stem for folder in [*theirs, OUR_BACKBONES] for config in folder.glob("*.json")}


def backbone_image_size(name: str) -> int:
    """The input size (pixels, square) of backbone `name`, from its architecture config, read as
    `backbone_names` finds it (the frames stage crops to it without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    theirs = [Path(folder) / "model_configs" for folder in spec.submodule_search_locations or []] if spec else []
    for folder in [OUR_BACKBONES, *theirs]:
        if (folder / f"{name}.json").is_file():
            size = json.loads((folder / f"{name}.json").read_text())["vision_cfg"]["image_size"]
            return size if isinstance(size, int) else size[0]
    raise UserError(f"params: backbone.name = {name!r} is not an open_clip model; use e.g. ViT-B-32")


@dataclass(frozen=True)
class BackboneConfig:
    name: str  # an open_clip model name (ViT-B-32, ViT-B-16) or one of dgl/models/configs
    pretrained: str  # open_clip pretrained tag (e.g. openai) or a local checkpoint; "" = pretrain here
    pretrain: PretrainConfig

    def validate(self) -> None:
        if self.name not in backbone_names():
            ours = ", ".join(sorted(config.stem for config in OUR_BACKBONES.glob("*.json")))
            raise UserError(
                f"params: backbone.name = {self.name!r} is not an open_clip model; "
                f"use e.g. ViT-B-32, ViT-B-16 or one of {ours}"
            )


# --- model: one group per method family ------------------------------------------------------------


@dataclass(frozen=True)
class DGLConfig:
    """`model.dgl` (dgl/models/methods/dgl.py)."""

    generator: str = choice("ulp", "upt")
    text_prompt_len: int = bounded(2, 64)  # UPT only (half prefix, half postfix); ULP derives 2 x local
    local_prompt_len: int = bounded(1, 64)  # frame prompts per frame (ULP: also prefix = postfix count)
    global_prompt_len: int = bounded(1, 64)
    prompt_layers: int = bounded(0, 48)  # deep prompts in the first N layers; 0 = every layer
    video_feature: str = choice(*VIDEO_POOLS)
    temporal_pos: bool  # our extension: a learned frame-index embedding (order signal)
    postfix_before_eot: bool  # our extension: postfix prompts where the causal mask lets them act

    def validate(self) -> None:
        if self.generator == "upt" and self.text_prompt_len % 2:
            raise UserError(
                f"params: model.dgl.text_prompt_len = {self.text_prompt_len} must be even for UPT "
                "(half prefix, half postfix); use an even number"
            )


@dataclass(frozen=True)
class BiasConfig:
    layer_norm: bool  # also LayerNorm shifts: 171,008 at ViT-B/32 = 0.2M, not the paper's 0.1M


@dataclass(frozen=True)
class PartialConfig:
    vision_layers: int = bounded(0, 48)  # last N residual blocks of the vision encoder
    text_layers: int = bounded(0, 48)  # last N residual blocks of the text encoder


@dataclass(frozen=True)
class AdapterConfig:
    hidden: int = bounded(1, 4096)  # VoP: "the number of hidden dimensions is set to 64"
    scale: float = bounded(0.0, 100.0)  # AdaptFormer's s (VoP does not give one)


@dataclass(frozen=True)
class VoPConfig:
    """`model.vop` (dgl/models/methods/vop.py)."""

    text_prefix: int = bounded(0, 64)  # text prompts right after SOT
    text_postfix: int = bounded(0, 64)  # text prompts after the word slots (P^t = prefix + postfix = 8)
    video_prompts: int = bounded(1, 64)  # P^v: visual prompts per frame and layer
    specific_prompts: int = bounded(1, 64)  # of those, position-/context-specific ones (P, C)
    shallow_layers: int = bounded(1, 48)  # K^s (F): intra-frame layers; the rest are inter-frame
    context_hidden: int = bounded(0, 8192)  # CMM BiLSTM hidden size per direction; 0 = vision width
    frame_pos: bool  # F: trainable frame position embedding before layer K^s + 1
    init_std: float = bounded(0.0, 1.0)
    postfix_before_eot: bool  # our option (as model.dgl.postfix_before_eot), off in the paper

    def validate(self) -> None:
        if self.text_prefix + self.text_postfix == 0:
            raise UserError(
                "params: model.vop.text_prefix + model.vop.text_postfix = 0; VoP needs text prompts, use e.g. 4 and 4"
            )
        if self.specific_prompts > self.video_prompts:
            raise UserError(
                f"params: model.vop.specific_prompts = {self.specific_prompts} exceeds "
                f"model.vop.video_prompts = {self.video_prompts}; use a value up to it"
            )


@dataclass(frozen=True)
class ModelConfig:
    method: str = choice(*METHOD_NAMES)
    dgl: DGLConfig
    bias: BiasConfig
    partial: PartialConfig
    adapter: AdapterConfig  # adapter_attn, adapter_ffn
    vop: VoPConfig  # vop, vop_p, vop_c, vop_f, vop_fp, vop_fc


# --- training and evaluation -------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(0)
    batch_size: int = bounded(2)
    captions: str = choice("all", "one")  # per epoch: every caption once (the papers), or one per video
    sampler: str = choice(*SAMPLERS)  # batches: random (the papers), or twin pairs kept together
    lr: float = bounded(0.0, 1.0)  # what a method adds: prompts, generators, adapters
    clip_lr: float = bounded(0.0, 1.0)  # CLIP's own weights, where a method trains them (CLIP4Clip's lr x coef_lr)
    weight_decay: float = bounded(0.0, 10.0)
    warmup_fraction: float = bounded(0.0, 1.0)
    grad_clip: float = bounded(0.0)
    val_fraction: float = bounded(0.0, 0.5)  # train videos held out for per-epoch validation
    seed: int = bounded(0, SEED_MAX)
    device: str = choice("auto", "cpu", "cuda")
    threads: int = bounded(0, 256)  # CPU threads for torch; 0 = torch's default
    amp: str = choice("auto", "off", "bf16", "fp16")  # CUDA only; auto = bf16 where supported
    nproc: int = bounded(1, 1024)  # processes on each machine (torchrun, DDP); batch_size stays global
    nnodes: int = bounded(1, 4096)  # machines (torchrun's c10d rendezvous); the environment overrides (dgl/launch.py)
    rdzv_endpoint: str  # host:port where the machines' agents meet; "" on one machine or under SLURM
    dist_timeout: int = bounded(10, 86_400)  # seconds a process waits for the others: joining, every collective
    accum_steps: int = bounded(1, 1024)  # sub-batches per step (GradCache): same loss, less memory
    activation_checkpointing: bool  # recompute each transformer block in the backward pass: less memory, more time

    def validate(self) -> None:
        parts = self.nnodes * self.nproc * self.accum_steps
        if self.batch_size % parts:
            raise UserError(
                f"params: train.batch_size = {self.batch_size} (the global batch) must split evenly over "
                f"train.nnodes x train.nproc x train.accum_steps = {parts}; change one of them"
            )
        if self.rdzv_endpoint:
            check_endpoint(self.rdzv_endpoint, "params: train.rdzv_endpoint")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = bounded(1)
    chunk_size: int = bounded(1)  # similarity rows per chunk: bounds memory on large galleries
    dsl: bool  # dual softmax at inference (needs the whole query set): reported separately
    max_missing: float = bounded(0.0, 1.0)  # share of annotated test videos that may be missing


@dataclass(frozen=True)
class TrackingConfig:
    uri: str  # "" = sqlite:///<repo>/mlflow.db (DVC_ROOT under DVC); MLFLOW_TRACKING_URI overrides
    experiment: str
    ui: str  # where `mlflow ui` serves a SQLite store, for the printed run links; MLFLOW_UI_URL overrides
    max_weights_mb: float = bounded(0.0)  # trained weights up to this size are logged with the run; 0 = never


@dataclass(frozen=True)
class Params:
    ffmpeg: str = choice("pinned", "system")  # which ffmpeg encodes and decodes (dgl/ffmpeg.py)
    data: DataConfig
    frames: FramesConfig
    preprocess: PreprocessConfig
    backbone: BackboneConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    tracking: TrackingConfig


def load_params(path: Path | str = "params.yaml") -> Params:
    return build(Params, read_yaml(Path(path)))


def load_group(key: str, overrides: dict | None = None, path: Path | str = "params.yaml") -> Any:
    """One group of a params file (`model`, `data.synthetic`) with `overrides` merged into it, checked
    like the whole file: for tools and tests that need a config beside the pipeline's own."""
    raw = read_yaml(Path(path))
    *parents, last = key.split(".")
    group = raw
    for part in parents:
        group = group.setdefault(part, {})
    group[last] = merge(group.get(last) or {}, overrides or {})
    obj = build(Params, raw)
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, nested mappings key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def repo_root() -> Path:
    """The repository root: DVC_ROOT under `dvc repro`/`dvc exp run` (also in queued runs)."""
    return Path(os.environ.get("DVC_ROOT", os.getcwd())).resolve()
