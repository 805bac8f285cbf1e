"""The evaluate stage's pictures from a tiny DGL on random frames: DGL's Figure 5 (global prompts'
attention over frames) and retrieval examples, as PNGs of the expected size, frames apart, titled
with the method and, for the attention, the block, prompts and heads it shows."""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from dgl.cache.read import CachedSplit
from dgl.figures import (
    ATTENTION_ROW,
    CELL_INCHES,
    DPI,
    FRAME_INCHES,
    MAX_WIDTH_PX,
    TITLE_INCHES,
    TOP_K,
    draw_retrieval,
    global_attention_title,
    method_title,
    strip,
    write_figures,
)
from dgl.frames.store import RawCodec, write_arrays
from dgl.models.attention import global_local_mask
from dgl.models.attention_maps import global_attention, global_frame_attention
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method
from helpers import ROOT, group, run

VIDEOS, FRAMES, SIZE = 6, 4, 64  # tiny-synthetic sees 64 x 64 images


@pytest.fixture(scope="module")
def dgl_method():
    torch.manual_seed(0)
    return build_method("dgl", build_clip("tiny-synthetic"), SimpleNamespace(dgl=group("model.dgl")), FRAMES)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> CachedSplit:
    rng = np.random.default_rng(0)
    store, rows = write_arrays(
        tmp_path_factory.mktemp("store"),
        rng.integers(0, 256, (VIDEOS, FRAMES, 3, SIZE, SIZE), dtype=np.uint8),
        RawCodec(),
    )
    return CachedSplit(
        store=store,
        rows=rows,
        tokens=torch.zeros(2 * VIDEOS, 8, dtype=torch.long),
        caption_video=torch.arange(VIDEOS).repeat_interleave(2),
        texts=[f"caption {c} of video {c // 2}" for c in range(2 * VIDEOS)],
        categories=["static"] * 2 * VIDEOS,
        twins=torch.full((VIDEOS,), -1),
        video_ids=[f"video{v}" for v in range(VIDEOS)],
        mean=torch.zeros(3),
        std=torch.ones(3),
    )


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def colour_pixels(path, rgb: tuple[int, int, int]) -> int:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return int((np.abs(pixels.astype(int) - rgb).max(1) <= 8).sum())


def test_the_retrieval_figure_fits_the_artifact_pane_and_marks_the_correct_video_and_its_twin(tmp_path):
    grey = np.full((1, TOP_K, FRAMES, 3, SIZE, SIZE), 128, np.uint8)  # no frame holds green or orange
    ranked = np.arange(TOP_K)[None]
    green, orange = (44, 160, 44), (255, 127, 14)  # matplotlib's tab:green, tab:orange
    draw_retrieval(grey, ["a caption"], ranked, np.array([3]), np.array([1]), "title", tmp_path / "twin.png")
    draw_retrieval(grey, ["a caption"], ranked, np.array([3]), np.array([-1]), "title", tmp_path / "alone.png")
    assert png_size(tmp_path / "twin.png")[0] <= MAX_WIDTH_PX
    assert colour_pixels(tmp_path / "twin.png", green) > 50 and colour_pixels(tmp_path / "twin.png", orange) > 50
    assert colour_pixels(tmp_path / "alone.png", green) > 50 and colour_pixels(tmp_path / "alone.png", orange) == 0


def test_global_prompt_attention_is_a_distribution_over_frames(dgl_method, split):
    frames = split.video_batch(np.arange(3))
    weights = global_frame_attention(dgl_method, frames)
    assert weights.shape == (3, FRAMES)
    assert (weights >= 0).all() and torch.allclose(weights.sum(1), torch.ones(3))
    # The hook is gone afterwards, and it never changed the features.
    block = dgl_method.clip.visual.transformer.resblocks[-1]
    assert not block.ln_1._forward_hooks
    _, prompts = dgl_method.prompts()
    n_global = prompts.global_.shape[0]
    tokens: list = []
    with torch.no_grad():
        plain = dgl_method.encode_video(frames, prompts)
        with global_attention(block, n_global) as captured:
            hook = block.ln_1.register_forward_hook(lambda module, args, output: tokens.append(output))
            hooked = dgl_method.encode_video(frames, prompts)
            hook.remove()
        # What was captured is the global rows of the masked single-call attention over the whole video.
        frame_len = (tokens[-1].shape[1] - n_global) // FRAMES
        _, reference = block.attn(
            tokens[-1],
            tokens[-1],
            tokens[-1],
            need_weights=True,
            attn_mask=global_local_mask(n_global, FRAMES, frame_len),
        )
    torch.testing.assert_close(hooked, plain)
    assert captured[-1].shape == (3, n_global, n_global + FRAMES * frame_len)
    torch.testing.assert_close(captured[-1], reference[:, :n_global], rtol=0, atol=1e-6)


def test_figures_are_pngs_of_the_expected_size(dgl_method, split, tmp_path):
    text = F.normalize(torch.randn(2 * VIDEOS, 16), dim=-1)
    video = F.normalize(torch.randn(VIDEOS, 16), dim=-1)
    write_figures(tmp_path, dgl_method, split, text, video, torch.device("cpu"), count=4, title="dgl (ULP generator)")
    # inches x DPI, to the pixel (matplotlib truncates)
    assert png_size(tmp_path / "retrieval.png") == pytest.approx(
        (TOP_K * CELL_INCHES[0] * DPI, (4 * CELL_INCHES[1] + TITLE_INCHES) * DPI), abs=1
    )
    assert png_size(tmp_path / "attention.png") == pytest.approx(
        (max(FRAMES, 6) * FRAME_INCHES * DPI, (4 * ATTENTION_ROW * FRAME_INCHES + TITLE_INCHES) * DPI), abs=1
    )

    zeroshot = build_method("zeroshot", dgl_method.clip, SimpleNamespace(), FRAMES)
    (tmp_path / "zeroshot").mkdir()
    write_figures(tmp_path / "zeroshot", zeroshot, split, text, video, torch.device("cpu"), count=2)
    assert sorted(p.name for p in (tmp_path / "zeroshot").iterdir()) == ["retrieval.png"]


def test_frames_stand_apart_and_titles_say_what_is_shown(dgl_method):
    frames = np.zeros((3, 3, SIZE, SIZE), np.uint8)
    shown = strip(frames)
    gap = (shown.shape[1] - 3 * SIZE) // 2
    assert shown.shape == (SIZE, 3 * SIZE + 2 * gap, 3) and gap >= SIZE // 10
    assert (shown[:, SIZE : SIZE + gap] == 255).all() and (shown[:, :SIZE] == 0).all()  # white between frames

    title = global_attention_title(dgl_method)
    blocks = len(dgl_method.clip.visual.transformer.resblocks)
    heads = dgl_method.clip.visual.transformer.resblocks[-1].attn.num_heads
    n_global = group("model.dgl").global_prompt_len
    assert f"({blocks} of {blocks})" in title and f"{n_global} global prompts" in title and f"{heads} heads" in title
    assert method_title(SimpleNamespace(method="dgl", dgl=group("model.dgl", generator="upt"))) == "dgl (UPT generator)"
    assert method_title(SimpleNamespace(method="vop_f")) == "vop_f"


@pytest.mark.slow
def test_dvc_plots_render_offline_with_the_shipped_template(tmp_path):
    """`dvc plots show`, and `dvc plots diff` against the committed baseline, with the project's
    .dvc/config template: vega, vega-lite and vega-embed are in the page, in the versions dvc-render
    would fetch, and nothing is loaded from another machine."""
    from dgl.offline_plots import LIBRARIES, TEMPLATE, pinned_versions

    repo = tmp_path / "repo"
    (repo / "plots" / "figures").mkdir(parents=True)
    (repo / "plots" / "train.json").write_text(
        json.dumps([{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.0}])
    )
    Image.new("RGB", (8, 8), "red").save(repo / "plots" / "figures" / "retrieval.png")
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"plots": [{"Training loss": {"x": "epoch", "y": {"plots/train.json": "train_loss"}}}, "plots/figures"]}
        )
    )
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / TEMPLATE).parent.mkdir(parents=True)
    shutil.copy(ROOT / TEMPLATE, repo / TEMPLATE)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # names the template
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "baseline"], repo)
    (repo / "plots" / "train.json").write_text(
        json.dumps([{"epoch": 1, "train_loss": 3.0}, {"epoch": 2, "train_loss": 0.5}])
    )

    versions = pinned_versions()
    for command in (["show"], ["diff", "HEAD"]):
        out = tmp_path / command[0]
        run(["dvc", "plots", *command, "-o", str(out)], repo)
        page = (out / "index.html").read_text()
        assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page), "a remote load"
        assert "cdn." not in page and "vegaEmbed('#" in page
        for name in LIBRARIES:
            assert f"/* {name}@{versions[name]} */" in page
        assert re.search(r'<img src="(?!https?:)[^"]*retrieval\.png"', page)
    assert page.count("vegaEmbed('#") == 1 and "3.0" in page and "2.0" in page  # both revisions in one chart
