"""The evaluate stage's pictures from a tiny DGL on random frames: DGL's Figure 5 (global prompts'
attention over frames) and retrieval examples, as PNGs of the expected size."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import group
from dgl.cache import CachedSplit
from dgl.figures import CELL_INCHES, DPI, FRAME_INCHES, TOP_K, write_figures
from dgl.models.attention import global_local_mask
from dgl.models.attention_maps import global_attention, global_frame_attention
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method

VIDEOS, FRAMES, SIZE = 6, 4, 64  # tiny-synthetic sees 64 x 64 images


@pytest.fixture(scope="module")
def dgl_method():
    torch.manual_seed(0)
    return build_method("dgl", build_clip("tiny-synthetic"), SimpleNamespace(dgl=group("model.dgl")), FRAMES)


@pytest.fixture(scope="module")
def split() -> CachedSplit:
    rng = np.random.default_rng(0)
    return CachedSplit(
        frames=rng.integers(0, 256, (VIDEOS, FRAMES, 3, SIZE, SIZE), dtype=np.uint8),
        tokens=torch.zeros(2 * VIDEOS, 8, dtype=torch.long),
        caption_video=torch.arange(VIDEOS).repeat_interleave(2),
        texts=[f"caption {c} of video {c // 2}" for c in range(2 * VIDEOS)],
        categories=["static"] * 2 * VIDEOS,
        twins=torch.full((VIDEOS,), -1),
        video_ids=[f"video{v}" for v in range(VIDEOS)],
        mean=torch.zeros(3), std=torch.ones(3),
    )


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


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
        _, reference = block.attn(tokens[-1], tokens[-1], tokens[-1], need_weights=True,
                                  attn_mask=global_local_mask(n_global, FRAMES, frame_len))
    torch.testing.assert_close(hooked, plain)
    assert captured[-1].shape == (3, n_global, n_global + FRAMES * frame_len)
    torch.testing.assert_close(captured[-1], reference[:, :n_global], rtol=0, atol=1e-6)


def test_figures_are_pngs_of_the_expected_size(dgl_method, split, tmp_path):
    text = F.normalize(torch.randn(2 * VIDEOS, 16), dim=-1)
    video = F.normalize(torch.randn(VIDEOS, 16), dim=-1)
    write_figures(tmp_path, dgl_method, split, text, video, torch.device("cpu"), count=4)
    assert png_size(tmp_path / "retrieval.png") == (TOP_K * CELL_INCHES[0] * DPI, 4 * CELL_INCHES[1] * DPI)
    assert png_size(tmp_path / "attention.png") == (FRAMES * FRAME_INCHES * DPI, 4 * 2 * FRAME_INCHES * DPI)

    zeroshot = build_method("zeroshot", dgl_method.clip, SimpleNamespace(), FRAMES)
    (tmp_path / "zeroshot").mkdir()
    write_figures(tmp_path / "zeroshot", zeroshot, split, text, video, torch.device("cpu"), count=2)
    assert sorted(p.name for p in (tmp_path / "zeroshot").iterdir()) == ["retrieval.png"]
