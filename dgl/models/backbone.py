"""Building, saving and loading the CLIP backbone (open_clip architecture, configs are data)."""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import open_clip
import torch
from torch import nn

from dgl.checkpoint import non_finite
from dgl.checksums import sha256_of
from dgl.cli import binary_output
from dgl.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
BACKBONE_WEIGHTS, BACKBONE_INFO = "clip.pt", "backbone.json"


@functools.cache
def register_configs() -> None:
    open_clip.add_model_config(CONFIG_DIR)


class _LoadedNext(logging.Filter):
    """Drops open_clip's warning that a model built without pretrained weights is random (on the
    root logger): wrong where a checkpoint is loaded into it next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def build_clip(name: str, pretrained: str = "", fix: str = "") -> nn.Module:
    """open_clip model `name` (ours: configs/*.json) with weights from an open_clip pretrained
    tag (downloads where a network exists) or a local checkpoint file; "" = random init. `fix`:
    what a one-line error about the local file says to do (load_checkpoint)."""
    register_configs()
    if name not in open_clip.list_models():
        raise UserError(f"params: backbone.name = {name!r} is not an open_clip model; "
                        f"use e.g. ViT-B-32, ViT-B-16 or one of {', '.join(p.stem for p in CONFIG_DIR.glob('*.json'))}")
    local = Path(pretrained) if pretrained else None
    if local is not None and (local.suffix in {".pt", ".pth", ".bin", ".safetensors"} or local.exists()):
        quiet = _LoadedNext()
        logging.getLogger().addFilter(quiet)
        try:
            model = open_clip.create_model(name, pretrained=None)
        finally:
            logging.getLogger().removeFilter(quiet)
        load_checkpoint(model, local, fix)
        return model
    # OpenAI's weights were trained with QuickGELU; open_clip's `ViT-B-32` config uses nn.GELU and only
    # warns, so the tag's own config decides (a local file cannot tell: name `ViT-B-32-quickgelu`).
    quick_gelu = bool(pretrained and open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu"))
    try:
        return open_clip.create_model(name, pretrained=pretrained or None, force_quick_gelu=quick_gelu)
    except RuntimeError as e:  # unknown tag or failed download
        raise UserError(f"backbone {name!r} with pretrained={pretrained!r}: {str(e).splitlines()[0]}; "
                        "use a tag from open_clip.list_pretrained() or a local checkpoint path") from None


def load_checkpoint(model: nn.Module, path: Path, fix: str = "") -> None:
    """Load a state dict from an untrusted file: tensors only (weights_only=True). Anything else, or
    one that does not fit `model`, is one line naming the file; `fix` says what to do (by default:
    what backbone.pretrained needs)."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; {fix or 'give an existing file in backbone.pretrained'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, or pickle payloads other than tensors (refused here)
        raise UserError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}); "
                        f"{fix or 'save it with torch.save(model.state_dict())'}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                              for k, t in state.items()):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors; "
                        f"{fix or 'save it with torch.save(model.state_dict())'}")
    bad = non_finite(state)
    if bad is not None:
        raise UserError(f"{path}: tensor {bad} holds NaN or inf; {fix or 'give a checkpoint of trained weights'}")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{path}: does not match the backbone architecture "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                        f"{(missing + unexpected)[0]}); {fix or 'check backbone.name'}")
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(f"{path}: {len(wrong)} tensors have other shapes than the backbone's, e.g. {k} "
                        f"{tuple(state[k].shape)} where {tuple(own[k].shape)} is needed; "
                        f"{fix or 'check backbone.name'}")
    model.load_state_dict(state)


def save_backbone(clip: nn.Module, name: str, out_dir: Path, info: dict) -> None:
    with binary_output(out_dir / BACKBONE_WEIGHTS) as f:  # a full disk is an OSError (ENOSPC)
        torch.save(clip.state_dict(), f)
    info = {"name": name, "sha256": sha256_of(out_dir / BACKBONE_WEIGHTS), **info}
    (out_dir / BACKBONE_INFO).write_text(json.dumps(info, indent=2))


def load_backbone(backbone_dir: Path) -> tuple[nn.Module, dict]:
    info_path = backbone_dir / BACKBONE_INFO
    if not info_path.exists():
        raise UserError(f"{backbone_dir}: no backbone here; run `dvc repro backbone` first")
    try:
        info = json.loads(info_path.read_text())
        name, _ = info["name"], info["sha256"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):  # truncated or edited by hand
        raise UserError(f"{info_path}: damaged; rebuild it with `dvc repro backbone`") from None
    clip = build_clip(name, str(backbone_dir / BACKBONE_WEIGHTS), fix="rebuild it with `dvc repro backbone`")
    return clip, info
