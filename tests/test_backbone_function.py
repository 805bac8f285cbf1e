"""The model `train` and `evaluate` rebuild computes what the backbone stage held: features on a
fixed input, not only equal tensors (a random-weight model has no accuracy to lose, but its
features move with the activation, the tokenizer or the preprocessing)."""

from __future__ import annotations

import json
import sys

import open_clip
import pytest
import torch
import yaml

from dgl.errors import UserError
from dgl.models.backbone import (
    BACKBONE_INFO,
    BACKBONE_PROBE,
    RECIPE_KEY,
    build_clip,
    check_preprocessing,
    load_backbone,
    recipe_for,
    save_backbone,
)
from helpers import tiny_params

CAPTIONS = ["a blue square turns green", "the triangle appears on the left"]  # not the probe's


def features(clip, size: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text features on an input of this test's own (other seed, other captions)."""
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(7)) * 4 - 2
    tokens = open_clip.get_tokenizer(name)(CAPTIONS)
    clip.eval()
    with torch.no_grad():
        return clip.encode_image(images), clip.encode_text(tokens)


def assert_same_function(rebuilt, held, size: int, name: str) -> None:
    for got, want in zip(features(rebuilt, size, name), features(held, size, name)):
        torch.testing.assert_close(got, want)
    act = type(held.visual.transformer.resblocks[0].mlp.gelu)
    assert type(rebuilt.visual.transformer.resblocks[0].mlp.gelu) is act


def quick_gelu_vit(seed: int = 0):
    """ViT-B/32 as OpenAI's weights need it (QuickGELU), with random weights."""
    torch.manual_seed(seed)
    return build_clip("ViT-B-32-quickgelu")


def run_backbone_stage(tmp_path, monkeypatch, name: str, pretrained: str):
    """pipelines/backbone.py in process, on the tiny params with backbone.name/pretrained set."""
    from pipelines import backbone as stage

    params = tiny_params()
    params["backbone"].update(name=name, pretrained=pretrained)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "models/backbone"
    monkeypatch.setattr(sys, "argv", ["backbone", "--params", str(tmp_path / "params.yaml"), "--out", str(out)])
    stage.main()
    return out


def test_the_synthetic_backbone_is_rebuilt_as_it_was_held(tmp_path):
    torch.manual_seed(0)
    held = build_clip("tiny-synthetic")
    save_backbone(held, recipe_for("tiny-synthetic"), tmp_path, {})
    rebuilt, info = load_backbone(tmp_path)
    assert info[RECIPE_KEY]["model_cfg"]["quick_gelu"] is True
    assert_same_function(rebuilt, held, 64, "tiny-synthetic")


@pytest.mark.slow
def test_a_tag_built_backbone_keeps_its_tags_activation_in_every_later_stage(tmp_path, monkeypatch):
    """`backbone.pretrained: openai` builds QuickGELU; the stages after it rebuilt plain GELU from the
    name `ViT-B-32` alone. The weights cannot download here: open_clip's download answers with a
    file of random weights, everything else is the stage's own route."""
    held = quick_gelu_vit()
    weights = tmp_path / "openai.pt"
    torch.save(held.state_dict(), weights)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kw: str(weights))
    out = run_backbone_stage(tmp_path, monkeypatch, "ViT-B-32", "openai")
    rebuilt, info = load_backbone(out)
    assert info["name"] == "ViT-B-32" and info[RECIPE_KEY]["model_cfg"]["quick_gelu"] is True
    assert_same_function(rebuilt, held, 224, "ViT-B-32")


@pytest.mark.slow
def test_a_local_checkpoint_is_rebuilt_with_the_activation_its_name_gave(tmp_path, monkeypatch):
    held = quick_gelu_vit(seed=1)
    weights = tmp_path / "ViT-B-32-openai.pt"
    torch.save(held.state_dict(), weights)
    out = run_backbone_stage(tmp_path, monkeypatch, "ViT-B-32-quickgelu", str(weights))
    rebuilt, _ = load_backbone(out)
    assert_same_function(rebuilt, held, 224, "ViT-B-32-quickgelu")


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    save_backbone(build_clip("tiny-synthetic"), recipe_for("tiny-synthetic"), tmp_path, {})
    return tmp_path


def test_a_backbone_written_before_the_recipe_was_saved_is_refused(saved):
    info = json.loads((saved / BACKBONE_INFO).read_text())
    del info[RECIPE_KEY]
    (saved / BACKBONE_INFO).write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"older version.*dvc repro backbone"):
        load_backbone(saved)


def test_a_recipe_edited_to_another_activation_is_refused_not_run(saved):
    info = json.loads((saved / BACKBONE_INFO).read_text())
    info[RECIPE_KEY]["model_cfg"]["quick_gelu"] = False
    (saved / BACKBONE_INFO).write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"does not compute what the backbone stage saved.*dvc repro backbone"):
        load_backbone(saved)


def test_a_missing_probe_is_one_line(saved):
    (saved / BACKBONE_PROBE).unlink()
    with pytest.raises(UserError, match=rf"{BACKBONE_PROBE}: missing or damaged; rebuild it"):
        load_backbone(saved)


def test_a_cache_prepared_for_other_weights_is_refused(saved):
    info = json.loads((saved / BACKBONE_INFO).read_text())
    pre = info[RECIPE_KEY]["preprocess_cfg"]
    same = {k: pre[k] for k in ("size", "mean", "std", "interpolation", "resize_mode")}
    check_preprocessing(info, same, saved)
    with pytest.raises(UserError, match=r"preprocessed with mean \[0\.5, 0\.5, 0\.5\].*dvc repro preprocess"):
        check_preprocessing(info, {**same, "mean": [0.5, 0.5, 0.5]}, saved)
    with pytest.raises(UserError, match=r"size 32, but backbone 'tiny-synthetic' expects 64"):
        check_preprocessing(info, {**same, "size": 32}, saved)
