"""Pretraining of the small CLIP for the synthetic benchmark: single rendered frames with static
captions only, so the backbone knows colours, shapes and backgrounds but never sees time."""
from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn
from tqdm import tqdm

from dgl.cache import image_size_of, resize_center_crop
from dgl.data.synthetic import SyntheticConfig, render_static_images
from dgl.models.backbone import build_clip
from dgl.models.prompted import PromptedCLIP
from dgl.optim import adamw, warmup_cosine


def _images_and_tokens(n: int, seed: int, synthetic: SyntheticConfig, backbone: str,
                       context_length: int) -> tuple[Tensor, Tensor, list[str]]:
    images, captions = render_static_images(n, seed, synthetic.resolution)  # (N, H, W, 3) uint8
    size = image_size_of(backbone)
    x = torch.from_numpy(resize_center_crop(images, size)).float().div_(255)  # (N, 3, S, S)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
    x = (x - mean[:, None, None]) / std[:, None, None]
    tokens = open_clip.get_tokenizer(backbone)(captions, context_length=context_length)
    longest = int(tokens.argmax(dim=-1).max()) + 1  # static captions are short: drop the padding
    return x, tokens[:, :longest], captions


def _duplicate_aware_loss(image: Tensor, text: Tensor, caption_id: Tensor, scale: Tensor) -> Tensor:
    """Contrastive loss where every pair with the same caption is a positive (static captions repeat)."""
    logits = scale * image @ text.t()  # (B, B)
    same = (caption_id[:, None] == caption_id[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


@torch.no_grad()
def zero_shot_image_text_r1(clip: nn.Module, images: Tensor, tokens: Tensor, captions: list[str]) -> float:
    """Each held-out frame ranks every distinct static caption; R@1 = share whose own caption wins."""
    clip.eval()
    distinct = sorted(set(captions))
    first = {c: captions.index(c) for c in distinct}
    text = F.normalize(PromptedCLIP(clip).encode_text(tokens[[first[c] for c in distinct]]), dim=-1)
    image = torch.cat([F.normalize(clip.encode_image(b), dim=-1) for b in images.split(512)])
    predicted = (image @ text.t()).argmax(1)
    truth = torch.tensor([distinct.index(c) for c in captions])
    return (predicted == truth).float().mean().item()


def pretrain_clip(backbone: str, pretrain, synthetic: SyntheticConfig, context_length: int,
                  progress: bool = True) -> tuple[nn.Module, dict]:
    torch.manual_seed(pretrain.seed)
    clip = build_clip(backbone)
    encoder = PromptedCLIP(clip)  # encodes text of any length up to the context (no prompts here)
    images, tokens, captions = _images_and_tokens(pretrain.images, pretrain.seed, synthetic, backbone, context_length)
    caption_id = torch.tensor(np.unique(captions, return_inverse=True)[1])
    optimizer = adamw(list(clip.named_parameters()), pretrain.lr, weight_decay=0.1)
    steps_per_epoch = len(images) // pretrain.batch_size
    scheduler = warmup_cosine(optimizer, pretrain.epochs * steps_per_epoch, 0.1)
    generator = torch.Generator().manual_seed(pretrain.seed)
    losses = []
    for epoch in tqdm(range(pretrain.epochs), desc="pretrain backbone", disable=not progress, unit="epoch"):
        clip.train()
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * pretrain.batch_size : (step + 1) * pretrain.batch_size]
            image = F.normalize(clip.encode_image(images[batch]), dim=-1)
            text = F.normalize(encoder.encode_text(tokens[batch]), dim=-1)
            loss = _duplicate_aware_loss(image, text, caption_id[batch], clip.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
    held_out = _images_and_tokens(pretrain.eval_images, pretrain.seed + 1_000_003, synthetic, backbone, context_length)
    report = {"zeroshot_image_text_R1": zero_shot_image_text_r1(clip, *held_out), "final_loss": losses[-1],
              "logit_scale": clip.logit_scale.exp().item()}
    return clip, report
