"""Building, saving and loading the CLIP backbone (open_clip architecture, configs are data)."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import open_clip
import torch
from torch import nn

from dgl.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
BACKBONE_WEIGHTS, BACKBONE_INFO = "clip.pt", "backbone.json"


@functools.cache
def register_configs() -> None:
    open_clip.add_model_config(CONFIG_DIR)


def build_clip(name: str, pretrained: str = "") -> nn.Module:
    """open_clip model `name` (ours: configs/*.json) with weights from an open_clip pretrained
    tag (downloads where a network exists) or a local checkpoint file; "" = random init."""
    register_configs()
    if name not in open_clip.list_models():
        raise UserError(f"params: backbone.name = {name!r} is not an open_clip model; "
                        f"use e.g. ViT-B-32, ViT-B-16 or one of {', '.join(p.stem for p in CONFIG_DIR.glob('*.json'))}")
    local = Path(pretrained) if pretrained else None
    if local is not None and (local.suffix in {".pt", ".pth", ".bin", ".safetensors"} or local.exists()):
        model = open_clip.create_model(name, pretrained=None)
        load_checkpoint(model, local)
        return model
    try:
        return open_clip.create_model(name, pretrained=pretrained or None)
    except RuntimeError as e:  # unknown tag or failed download
        raise UserError(f"backbone {name!r} with pretrained={pretrained!r}: {str(e).splitlines()[0]}; "
                        "use a tag from open_clip.list_pretrained() or a local checkpoint path") from None


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a state dict from an untrusted file: tensors only (weights_only=True)."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; give an existing file in backbone.pretrained")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle payloads other than tensors are refused here
        raise UserError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}); "
                        "save it with torch.save(model.state_dict())") from None
    state = state.get("state_dict", state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: does not match the backbone architecture "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                        f"{(missing + unexpected)[0]}); check backbone.name")


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
