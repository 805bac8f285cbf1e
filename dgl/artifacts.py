"""Saved models: only the trainable weights, plus the backbone's identity and hash, so a DGL
checkpoint is a few MB instead of a whole CLIP."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from dgl.errors import UserError
from dgl.models.backbone import build_clip, load_checkpoint
from dgl.models.methods import Method, build_method

BACKBONE_WEIGHTS, BACKBONE_INFO = "clip.pt", "backbone.json"
TRAINED_WEIGHTS, TRAINED_INFO = "weights.pt", "model.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_backbone(clip: nn.Module, name: str, out_dir: Path, info: dict) -> None:
    torch.save(clip.state_dict(), out_dir / BACKBONE_WEIGHTS)
    info = {"name": name, "sha256": sha256_of(out_dir / BACKBONE_WEIGHTS), **info}
    (out_dir / BACKBONE_INFO).write_text(json.dumps(info, indent=2))


def load_backbone(backbone_dir: Path) -> tuple[nn.Module, dict]:
    info_path = backbone_dir / BACKBONE_INFO
    if not info_path.exists():
        raise UserError(f"{backbone_dir}: no backbone here; run `dvc repro backbone` first")
    info = json.loads(info_path.read_text())
    clip = build_clip(info["name"])
    load_checkpoint(clip, backbone_dir / BACKBONE_WEIGHTS)
    return clip, info


def save_trained(method: Method, out_dir: Path, info: dict) -> None:
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    state = {n: t for n, t in method.state_dict().items() if n in trainable}
    torch.save(state, out_dir / TRAINED_WEIGHTS)
    (out_dir / TRAINED_INFO).write_text(json.dumps(info, indent=2))


def load_trained(trained_dir: Path, backbone_dir: Path, model_cfg, num_frames: int) -> tuple[Method, dict]:
    info = json.loads((trained_dir / TRAINED_INFO).read_text())
    clip, backbone = load_backbone(backbone_dir)
    if backbone["sha256"] != info["backbone_sha256"]:
        raise UserError(f"{trained_dir}: trained on another backbone (sha256 {info['backbone_sha256'][:12]}, "
                        f"now {backbone['sha256'][:12]}); re-run `dvc repro train`")
    method = build_method(info["method"], clip, model_cfg, num_frames)
    state = torch.load(trained_dir / TRAINED_WEIGHTS, map_location="cpu", weights_only=True)
    missing, unexpected = method.load_state_dict(state, strict=False)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    if unexpected or trainable - set(state):
        raise UserError(f"{trained_dir}: weights do not match method {info['method']!r}; re-run `dvc repro train`")
    return method, info
