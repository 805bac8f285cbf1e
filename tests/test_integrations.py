"""Small seams the rest of the suite covers only through whole-pipeline runs: the shared helpers give
the bytes the code they replaced gave, a trained method is rebuilt from the configuration saved with
its weights, tracking touches no environment at import, and a foreign `dgl` is one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from dgl.artifacts import TRAINED_INFO, load_trained, save_trained
from dgl.cache.read import normalise
from dgl.checksums import file_checksums, sha256_of, write_manifest
from dgl.errors import UserError
from dgl.models.backbone import BACKBONE_WEIGHTS, build_clip, recipe_for, save_backbone
from dgl.models.methods import build_method
from helpers import ROOT, group

FRAMES = 4


def test_sha256_and_manifest_match_what_the_stages_wrote_before(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "b.mp4").write_bytes(b"\x00" * 3_000_000)  # more than one read
    (tmp_path / "a.csv").write_text("video_id\n")
    (tmp_path / "manifest.json").write_text("old\n")  # a manifest never lists itself
    assert sha256_of(tmp_path / "a.csv") == hashlib.sha256(b"video_id\n").hexdigest()
    files = file_checksums(tmp_path)
    assert list(files) == ["a.csv", "videos/b.mp4"]
    assert files["videos/b.mp4"] == hashlib.sha256(b"\x00" * 3_000_000).hexdigest()
    manifest = {"files": files, "downloads": {"x.zip": {"url": "u", "sha256": "s", "checked": "pinned"}}}
    write_manifest(tmp_path, manifest, sort_keys=True)
    assert (tmp_path / "manifest.json").read_text() == json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def test_normalise_is_the_formula_both_readers_used():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 8, 8), dtype=np.uint8)
    x = torch.from_numpy(pixels).float().div_(255)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
    assert torch.equal(normalise(pixels), (x - mean[:, None, None]) / std[:, None, None])
    from_meta = torch.tensor(json.loads(json.dumps(list(OPENAI_DATASET_MEAN))))  # as CachedSplit reads it
    assert torch.equal(normalise(pixels, from_meta, std), (x - from_meta[:, None, None]) / std[:, None, None])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny backbone and a DGL trained with 2 frame prompts, saved with its configuration."""
    root = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    clip = build_clip("tiny-synthetic")
    save_backbone(clip, recipe_for("tiny-synthetic"), root, {})
    cfg = group("model", method="dgl", dgl={"local_prompt_len": 2})
    method = build_method("dgl", clip, cfg, num_frames=FRAMES)
    info = {"method": "dgl", "backbone_sha256": sha256_of(root / BACKBONE_WEIGHTS), "parameters": {}, "validation": {}}
    return root, method, cfg, info


def test_a_trained_method_is_rebuilt_from_its_saved_configuration(trained, tmp_path, capsys):
    root, method, cfg, info = trained
    save_trained(method, tmp_path, info, cfg)
    assert json.loads((tmp_path / TRAINED_INFO).read_text())["model"]["dgl"]["local_prompt_len"] == 2
    now = group("model", method="dgl", dgl={"local_prompt_len": 4})  # params.yaml edited since
    loaded, _ = load_trained(tmp_path, root, now, num_frames=FRAMES)
    assert loaded.generator.latent.shape == method.generator.latent.shape
    for name, value in method.state_dict().items():
        if name.startswith(("generator.", "global_prompts")):
            assert torch.equal(loaded.state_dict()[name], value), name
    for got, want in zip(method_features(loaded), method_features(method)):  # and it computes the same
        torch.testing.assert_close(got, want)
    assert capsys.readouterr().err == ""


def method_features(method) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and video features of `method` on a fixed input, prompts included."""
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 400, (2, 32), generator=g)
    frames = torch.randn(2, FRAMES, 3, 64, 64, generator=g)
    method.eval()
    with torch.no_grad():
        text_prompts, video_prompts = method.prompts()
        return method.encode_text(tokens, text_prompts), method.encode_video(frames, video_prompts)


def test_an_older_model_json_without_the_configuration_falls_back_to_params_with_a_notice(trained, tmp_path, capsys):
    root, method, cfg, info = trained
    save_trained(method, tmp_path, info)  # no configuration saved
    assert "model" not in json.loads((tmp_path / TRAINED_INFO).read_text())
    loaded, _ = load_trained(tmp_path, root, cfg, num_frames=FRAMES)
    assert loaded.generator.latent.shape == method.generator.latent.shape
    assert "no saved model configuration" in capsys.readouterr().err
    with pytest.raises(UserError, match="weights do not match"):  # and params.yaml must then be right
        load_trained(tmp_path, root, group("model", method="dgl", dgl={"local_prompt_len": 4}), num_frames=FRAMES)


def test_a_damaged_saved_configuration_is_one_line(trained, tmp_path):
    root, method, cfg, info = trained
    save_trained(method, tmp_path, info, cfg)
    saved = json.loads((tmp_path / TRAINED_INFO).read_text())
    saved["model"]["dgl"]["generator"] = "gru"
    (tmp_path / TRAINED_INFO).write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"model\.json: the saved model configuration .*model\.dgl\.generator"):
        load_trained(tmp_path, root, cfg, num_frames=FRAMES)


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
    )


def test_importing_tracking_leaves_the_environment_alone_until_the_store_is_reached(tmp_path):
    code = (
        "import os, dgl.tracking.store as t; before = os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES'); "
        "t.fail_fast(); print(before, os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'], "
        "os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT'])"
    )
    assert _python(code, ROOT).stdout.split() == ["None", "1", "10"]
    assert _python(code, ROOT, MLFLOW_HTTP_REQUEST_TIMEOUT="60").stdout.split() == ["None", "1", "60"]


@pytest.mark.parametrize("entry", ["pipelines.params", "experiments.report", "bench.disk"])
def test_a_dgl_that_is_not_this_project_is_one_line(tmp_path, entry):
    """Every entry package checks where `dgl` comes from (dgl_guard.py) without importing it: the other
    package's import would crash here, before a line could be printed."""
    (tmp_path / "dgl").mkdir()
    (tmp_path / "dgl" / "__init__.py").write_text("import os\nos.abort()  # another package called dgl\n")
    out = _python(f"import {entry}", tmp_path)  # the current folder comes first on the path
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: `dgl` resolves to ")
    assert str(tmp_path / "dgl") in out.stderr and "Deep Graph Library" in out.stderr
    assert _python(f"import {entry}", ROOT).returncode == 0
