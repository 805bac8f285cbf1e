"""Building, saving and loading the CLIP backbone (open_clip architecture, configs are data).

A model is more than its state dict: the activation (OpenAI's weights need QuickGELU), the image
size, mean/std, interpolation and resize mode, and the tokenizer decide what the weights compute.
The backbone stage saves them beside the weights (`BackboneRecipe`, in backbone.json) with the
features the model it held gives on a fixed input (probe.pt); every later stage rebuilds the model
from that record, never from the name alone, and refuses one that does not compute those features."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn

from dgl.checkpoint import non_finite
from dgl.checksums import sha256_of
from dgl.errors import UserError
from dgl.files import binary_output

CONFIG_DIR = Path(__file__).parent / "configs"
BACKBONE_WEIGHTS, BACKBONE_INFO, BACKBONE_PROBE = "clip.pt", "backbone.json", "probe.pt"
RECIPE_KEY = "open_clip"  # backbone.json: the recipe that rebuilds the same function
REBUILD = "rebuild it with `dvc repro backbone`"
PROBE_CAPTIONS = ("a red circle moves from left to right", "a photo of a dog on the grass")
PROBE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float sums in another order; an activation moves far more
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")  # what a pretrained tag may set


@functools.cache
def register_configs() -> None:
    open_clip.add_model_config(CONFIG_DIR)


class _LoadedNext(logging.Filter):
    """Drops open_clip's warning that a model built without pretrained weights is random (on the
    root logger): wrong where a checkpoint is loaded into it next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@dataclasses.dataclass(frozen=True)
class BackboneRecipe:
    """Everything but the weights that decides what the backbone computes."""

    name: str  # the open_clip model name it was built under (tokenizer: open_clip.get_tokenizer(name))
    model_cfg: dict  # open_clip's model config as built, `quick_gelu` included
    preprocess_cfg: dict  # size, mean, std, interpolation, resize_mode the images must be given with

    @property
    def context_length(self) -> int:
        return self.model_cfg["text_cfg"].get("context_length", 77)

    def as_json(self) -> dict:
        return {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}


def _is_local(pretrained: str) -> bool:
    path = Path(pretrained)
    return bool(pretrained) and (path.suffix in {".pt", ".pth", ".bin", ".safetensors"} or path.exists())


def recipe_for(name: str, pretrained: str = "") -> BackboneRecipe:
    """The recipe of open_clip model `name` with weights `pretrained` (a tag, a local file or "").

    OpenAI's weights were trained with QuickGELU; open_clip's `ViT-B-32` config uses nn.GELU and
    only warns, so a tag's own config decides. A local file cannot tell: its activation is the one
    `name` says (name OpenAI weights `ViT-B-32-quickgelu`)."""
    register_configs()
    if name not in open_clip.list_models():
        raise UserError(
            f"params: backbone.name = {name!r} is not an open_clip model; "
            f"use e.g. ViT-B-32, ViT-B-16 or one of {', '.join(p.stem for p in CONFIG_DIR.glob('*.json'))}"
        )
    model_cfg = open_clip.get_model_config(name)
    tag = {} if not pretrained or _is_local(pretrained) else open_clip.get_pretrained_cfg(name, pretrained)
    if tag.get("quick_gelu"):
        model_cfg["quick_gelu"] = True
    preprocess = dataclasses.asdict(PreprocessCfg())
    preprocess.update({k: tag[k] for k in PREPROCESS_KEYS if k in tag})
    preprocess["size"] = model_cfg["vision_cfg"]["image_size"]
    return BackboneRecipe(name, model_cfg, json.loads(json.dumps(preprocess)))  # tuples as lists, as JSON reads them


def instantiate(recipe: BackboneRecipe) -> nn.Module:
    """The model of `recipe` with random weights: built from the recorded config itself, not from
    what open_clip's config of that name says today."""
    register_configs()
    config = {k: v for k, v in recipe.model_cfg.items() if k != "custom_text"}  # a class choice, not an argument
    quiet = _LoadedNext()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(
            recipe.name, pretrained=None, force_preprocess_cfg=recipe.preprocess_cfg, **config
        )
    finally:
        logging.getLogger().removeFilter(quiet)


def build_clip(name: str, pretrained: str = "", fix: str = "") -> nn.Module:
    """open_clip model `name` (ours: configs/*.json) with weights from an open_clip pretrained
    tag (downloads where a network exists) or a local checkpoint file; "" = random init. `fix`:
    what a one-line error about the local file says to do (load_checkpoint)."""
    recipe = recipe_for(name, pretrained)
    if not pretrained or _is_local(pretrained):
        model = instantiate(recipe)
        if pretrained:
            load_checkpoint(model, Path(pretrained), fix)
        return model
    try:
        return open_clip.create_model(
            name, pretrained=pretrained, force_quick_gelu=bool(recipe.model_cfg.get("quick_gelu"))
        )
    except RuntimeError as e:  # unknown tag or failed download
        raise UserError(
            f"backbone {name!r} with pretrained={pretrained!r}: {str(e).splitlines()[0]}; "
            "use a tag from open_clip.list_pretrained() or a local checkpoint path"
        ) from None


def load_checkpoint(model: nn.Module, path: Path, fix: str = "") -> None:
    """Load a state dict from an untrusted file: tensors only (weights_only=True). Anything else, or
    one that does not fit `model`, is one line naming the file; `fix` says what to do (by default:
    what backbone.pretrained needs)."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; {fix or 'give an existing file in backbone.pretrained'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, or pickle payloads other than tensors (refused here)
        raise UserError(
            f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}); "
            f"{fix or 'save it with torch.save(model.state_dict())'}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in state.items()
    ):
        raise UserError(
            f"{path}: holds a {type(state).__name__}, not a state dict of named tensors; "
            f"{fix or 'save it with torch.save(model.state_dict())'}"
        )
    bad = non_finite(state)
    if bad is not None:
        raise UserError(f"{path}: tensor {bad} holds NaN or inf; {fix or 'give a checkpoint of trained weights'}")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(
            f"{path}: does not match the backbone architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing + unexpected)[0]}); {fix or 'check backbone.name'}"
        )
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{path}: {len(wrong)} tensors have other shapes than the backbone's, e.g. {k} "
            f"{tuple(state[k].shape)} where {tuple(own[k].shape)} is needed; "
            f"{fix or 'check backbone.name'}"
        )
    model.load_state_dict(state)


def probe_features(clip: nn.Module, recipe: BackboneRecipe) -> dict[str, torch.Tensor]:
    """What `clip` computes on a fixed input: two seeded images at the recipe's size and two
    captions through the recipe's tokenizer (the token ids are part of the answer)."""
    size = recipe.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.get_tokenizer(recipe.name)(list(PROBE_CAPTIONS), context_length=recipe.context_length)
    was_training = clip.training
    clip.eval()
    with torch.no_grad():
        features = {"tokens": tokens, "image": clip.encode_image(images), "text": clip.encode_text(tokens)}
    clip.train(was_training)
    return features


def save_backbone(clip: nn.Module, recipe: BackboneRecipe, out_dir: Path, info: dict) -> None:
    """Weights, the recipe and the probe's features; then the model is rebuilt from what was
    written and must compute the same (load_backbone), so no stage ever reads another function."""
    with binary_output(out_dir / BACKBONE_WEIGHTS) as f:  # a full disk is an OSError (ENOSPC)
        torch.save(clip.state_dict(), f)
    with binary_output(out_dir / BACKBONE_PROBE) as f:
        torch.save(probe_features(clip.cpu(), recipe), f)
    info = {"name": recipe.name, "sha256": sha256_of(out_dir / BACKBONE_WEIGHTS), RECIPE_KEY: recipe.as_json(), **info}
    (out_dir / BACKBONE_INFO).write_text(json.dumps(info, indent=2))
    load_backbone(out_dir)


def load_backbone(backbone_dir: Path) -> tuple[nn.Module, dict]:
    """The model the backbone stage saved, rebuilt from its recipe, and backbone.json. One that
    does not compute the probe's features (another activation, tokenizer or open_clip) is refused."""
    info = backbone_info(backbone_dir)
    recipe = BackboneRecipe(info["name"], info[RECIPE_KEY]["model_cfg"], info[RECIPE_KEY]["preprocess_cfg"])
    info_path = backbone_dir / BACKBONE_INFO
    try:
        clip = instantiate(recipe)
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{info_path}: its model configuration does not build ({type(e).__name__}); {REBUILD}"
        ) from None
    load_checkpoint(clip, backbone_dir / BACKBONE_WEIGHTS, fix=REBUILD)
    _check_probe(clip, recipe, backbone_dir / BACKBONE_PROBE)
    return clip, info


def backbone_info(backbone_dir: Path) -> dict:
    """backbone.json: the name, the weights' sha256 and the recipe; one line where it is absent,
    damaged or written before the recipe was saved."""
    info_path = backbone_dir / BACKBONE_INFO
    if not info_path.exists():
        raise UserError(f"{backbone_dir}: no backbone here; run `dvc repro backbone` first")
    try:
        info = json.loads(info_path.read_text())
        _, _ = info["name"], info["sha256"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):  # truncated or edited by hand
        raise UserError(f"{info_path}: damaged; {REBUILD}") from None
    saved = info.get(RECIPE_KEY)
    if not isinstance(saved, dict) or not {"model_cfg", "preprocess_cfg"} <= saved.keys():
        raise UserError(
            f"{info_path}: written by an older version, without the model's configuration "
            f"(activation, preprocessing); {REBUILD}"
        )
    return info


def _check_probe(clip: nn.Module, recipe: BackboneRecipe, path: Path) -> None:
    try:
        expected = torch.load(path, map_location="cpu", weights_only=True)
        expected = {k: expected[k] for k in ("tokens", "image", "text")}
    except Exception:  # missing, truncated, or not the probe's tensors
        raise UserError(f"{path}: missing or damaged; {REBUILD}") from None
    got = probe_features(clip, recipe)
    if not torch.equal(got["tokens"], expected["tokens"]):
        raise UserError(
            f"{path.parent}: open_clip's {recipe.name!r} tokenizer now gives other tokens than when "
            f"the backbone was built; {REBUILD}"
        )
    for tower in ("image", "text"):
        if got[tower].shape != expected[tower].shape or not torch.allclose(
            got[tower], expected[tower], **PROBE_TOLERANCE
        ):
            diff = (
                (got[tower] - expected[tower]).abs().max().item()
                if got[tower].shape == expected[tower].shape
                else float("nan")
            )
            raise UserError(
                f"{path.parent}: the backbone rebuilt from its files does not compute what the backbone "
                f"stage saved ({tower} features differ by up to {diff:.3g}); {REBUILD}"
            )


def check_preprocessing(backbone: dict, cache: dict, cache_dir: Path) -> None:
    """The cache's images were prepared as the backbone's weights expect (size, mean/std,
    interpolation, resize mode); otherwise one line naming the difference."""
    expected = backbone[RECIPE_KEY]["preprocess_cfg"]
    for key, value in cache.items():
        want = expected[key]
        same = (
            value == want
            if isinstance(value, str)
            else torch.allclose(torch.as_tensor(value, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64))
        )
        if not same:
            raise UserError(
                f"{cache_dir}: frames were preprocessed with {key} {value}, but backbone "
                f"{backbone['name']!r} expects {want}; rebuild the cache with `dvc repro preprocess`"
            )
