"""Saved trained methods: only the trainable weights, plus the backbone's hash (the backbone itself
is saved by dgl/models/backbone.py), so a DGL checkpoint is a few MB instead of a whole CLIP.

model.json also holds the `model` group of params.yaml the weights were trained with, and the
method is rebuilt from it: evaluating never depends on what params.yaml says now. A model.json
written before it held that group is read with the current params.yaml's group, and says so."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from dgl.checkpoint import non_finite
from dgl.checksums import sha256_of
from dgl.errors import UserError
from dgl.files import binary_output
from dgl.models.backbone import load_backbone
from dgl.models.methods import Method, build_method
from dgl.settings import ModelConfig, merge
from dgl.typed_yaml import build

TRAINED_WEIGHTS, TRAINED_INFO = "weights.pt", "model.json"
MODEL_KEY = "model"  # model.json: the params' `model` group the weights were trained with
INFO_KEYS = ("method", "backbone_sha256", "parameters", "validation")  # what evaluate reads of model.json
REBUILD = "rebuild it with `dvc repro train`"


def save_trained(method: Method, out_dir: Path, info: dict, model_cfg: ModelConfig | None = None) -> str:
    """Save the trainable weights and `info` (with `model_cfg`, the method's configuration, as its
    `model`); returns the weights' sha256."""
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    state = {n: t for n, t in method.state_dict().items() if n in trainable}
    with binary_output(out_dir / TRAINED_WEIGHTS) as f:  # a full disk is an OSError (ENOSPC)
        torch.save(state, f)
    if model_cfg is not None:
        info = {**info, MODEL_KEY: dataclasses.asdict(model_cfg)}
    (out_dir / TRAINED_INFO).write_text(json.dumps(info, indent=2))
    return sha256_of(out_dir / TRAINED_WEIGHTS)


def load_trained(trained_dir: Path, backbone_dir: Path, model_cfg: ModelConfig, num_frames: int) -> tuple[Method, dict]:
    """The trained method and its model.json, with the weights' sha256 added (`weights_sha256`).

    The method is built from the configuration saved in model.json (`trained_config`); `model_cfg`,
    the current params' group, only fills what an older model.json lacks. A missing or damaged file
    is one line naming it and the command that rebuilds it."""
    info = _read_info(trained_dir / TRAINED_INFO)
    clip, backbone = load_backbone(backbone_dir)
    if backbone["sha256"] != info["backbone_sha256"]:
        raise UserError(
            f"{trained_dir}: trained on another backbone (sha256 {info['backbone_sha256'][:12]}, "
            f"now {backbone['sha256'][:12]}); re-run `dvc repro train`"
        )
    cfg = trained_config(trained_dir / TRAINED_INFO, info, model_cfg)
    method = build_method(info["method"], clip, cfg, num_frames)
    weights = trained_dir / TRAINED_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights}: missing; {REBUILD}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, or not tensors
        raise UserError(f"{weights}: damaged ({_reason(e)}); {REBUILD}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UserError(f"{weights}: not a state dict of tensors; {REBUILD}")
    bad = non_finite(state)
    if bad is not None:
        raise UserError(f"{weights}: the weights hold NaN or inf (e.g. {bad}); {REBUILD}")
    own = method.state_dict()
    unexpected = sorted(set(state) - set(own))
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    wrong = [n for n in sorted(set(state) & set(own)) if state[n].shape != own[n].shape]
    if unexpected or wrong or trainable - set(state):
        raise UserError(
            f"{weights}: weights do not match method {info['method']!r} as configured "
            f"(e.g. {(unexpected + wrong + sorted(trainable - set(state)))[0]}); {REBUILD}"
        )
    method.load_state_dict(state, strict=False)
    return method, {**info, "weights_sha256": sha256_of(weights)}


def trained_config(path: Path, info: dict, current: ModelConfig) -> ModelConfig:
    """The `model` group the weights were trained with, from model.json at `path` (`info`). Keys the
    code has gained since are taken from `current`; a model.json without the group (written before
    it was saved) falls back to `current` entirely, with a notice."""
    saved = info.get(MODEL_KEY)
    if saved is None:
        print(
            f"{path}: no saved model configuration (written by an older version); building the method from "
            f"params.yaml's `model` group, which must be what it was trained with ({REBUILD} to save it)",
            file=sys.stderr,
        )
        return current
    if not isinstance(saved, dict):
        raise UserError(f"{path}: damaged ({MODEL_KEY!r} is not a mapping); {REBUILD}")
    try:
        return build(ModelConfig, merge(dataclasses.asdict(current), saved), MODEL_KEY)
    except UserError as e:  # names the key, as params errors do
        raise UserError(f"{path}: the saved model configuration is not valid here ({e}); {REBUILD}") from None


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e).strip() else type(e).__name__


def _read_info(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing; {REBUILD}")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # truncated or not JSON
        raise UserError(f"{path}: damaged ({_reason(e)}); {REBUILD}") from None
    missing = [k for k in INFO_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise UserError(f"{path}: damaged (no {missing[0]!r}); {REBUILD}")
    return info
