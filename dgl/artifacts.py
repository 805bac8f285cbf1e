"""Saved trained methods: only the trainable weights, plus the backbone's hash (the backbone itself
is saved by dgl/models/backbone.py), so a DGL checkpoint is a few MB instead of a whole CLIP."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dgl.errors import UserError
from dgl.models.backbone import load_backbone, sha256_of
from dgl.models.methods import Method, build_method

TRAINED_WEIGHTS, TRAINED_INFO = "weights.pt", "model.json"


def save_trained(method: Method, out_dir: Path, info: dict) -> str:
    """Save the trainable weights and `info`; returns the weights' sha256."""
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    state = {n: t for n, t in method.state_dict().items() if n in trainable}
    torch.save(state, out_dir / TRAINED_WEIGHTS)
    (out_dir / TRAINED_INFO).write_text(json.dumps(info, indent=2))
    return sha256_of(out_dir / TRAINED_WEIGHTS)


def load_trained(trained_dir: Path, backbone_dir: Path, model_cfg, num_frames: int) -> tuple[Method, dict]:
    """The trained method and its model.json, with the weights' sha256 added (`weights_sha256`)."""
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
    return method, {**info, "weights_sha256": sha256_of(trained_dir / TRAINED_WEIGHTS)}
