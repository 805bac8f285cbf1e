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
from dgl.data.synthetic import SyntheticConfig, render_static_images, static_caption_classes
from dgl.models.backbone import build_clip
from dgl.models.prompted import PromptedCLIP
from dgl.optim import adamw, warmup_cosine


def _clip_input(images: np.ndarray, backbone: str) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, S, S) resized, cropped and normalised as CLIP expects."""
    x = torch.from_numpy(resize_center_crop(images, image_size_of(backbone))).float().div_(255)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
    return (x - mean[:, None, None]) / std[:, None, None]


def _tokens(captions: list[str], backbone: str, context_length: int) -> Tensor:
    tokens = open_clip.get_tokenizer(backbone)(captions, context_length=context_length)
    longest = int(tokens.argmax(dim=-1).max()) + 1  # static captions are short: drop the padding
    return tokens[:, :longest]


def _images_and_tokens(n: int, seed: int, synthetic: SyntheticConfig, backbone: str,
                       context_length: int, progress: bool = False) -> tuple[Tensor, Tensor, list[str]]:
    images, captions = render_static_images(n, seed, synthetic.resolution, progress)  # (N, H, W, 3) uint8
    return _clip_input(images, backbone), _tokens(captions, backbone, context_length), captions


def _duplicate_aware_loss(image: Tensor, text: Tensor, caption_id: Tensor, scale: Tensor) -> Tensor:
    """Contrastive loss where every pair with the same caption is a positive (static captions repeat)."""
    logits = scale * image @ text.t()  # (B, B)
    same = (caption_id[:, None] == caption_id[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _image_features(clip: nn.Module, images: Tensor) -> Tensor:
    return torch.cat([F.normalize(clip.encode_image(b), dim=-1) for b in images.split(512)])


@torch.no_grad()
def zero_shot_class_accuracy(clip: nn.Module, n: int, seed: int, synthetic: SyntheticConfig, backbone: str,
                             context_length: int) -> dict[str, float]:
    """Held-out one-object frames, each classified among the captions of every (colour, shape,
    background): the share whose whole caption wins, and the share right on each factor alone."""
    clip.eval()
    images, labels, classes, keys = static_caption_classes(n, seed, synthetic.resolution)
    text = F.normalize(PromptedCLIP(clip).encode_text(_tokens(classes, backbone, context_length)), dim=-1)
    image = _image_features(clip, _clip_input(images, backbone))
    predicted = (image @ text.t()).argmax(1).tolist()
    report = {"zeroshot_class_acc": float(np.mean([p == t for p, t in zip(predicted, labels)]))}
    for i, factor in enumerate(("colour", "shape", "background")):
        report[f"zeroshot_{factor}_acc"] = float(np.mean([keys[p][i] == keys[t][i] for p, t in zip(predicted, labels)]))
    return report


@torch.no_grad()
def zero_shot_image_text_r1(clip: nn.Module, images: Tensor, tokens: Tensor, captions: list[str]) -> float:
    """Each held-out frame ranks every distinct static caption; R@1 = share whose own caption wins."""
    clip.eval()
    distinct = sorted(set(captions))
    first = {c: captions.index(c) for c in distinct}
    text = F.normalize(PromptedCLIP(clip).encode_text(tokens[[first[c] for c in distinct]]), dim=-1)
    image = _image_features(clip, images)
    predicted = (image @ text.t()).argmax(1)
    truth = torch.tensor([distinct.index(c) for c in captions])
    return (predicted == truth).float().mean().item()


def pretrain_clip(backbone: str, pretrain, synthetic: SyntheticConfig, context_length: int,
                  progress: bool = True) -> tuple[nn.Module, dict]:
    torch.manual_seed(pretrain.seed)
    clip = build_clip(backbone)
    encoder = PromptedCLIP(clip)  # encodes text of any length up to the context (no prompts here)
    images, tokens, captions = _images_and_tokens(pretrain.images, pretrain.seed, synthetic, backbone, context_length,
                                                  progress)
    caption_id = torch.tensor(np.unique(captions, return_inverse=True)[1])
    optimizer = adamw(list(clip.named_parameters()), pretrain.lr, weight_decay=0.1)
    steps_per_epoch = len(images) // pretrain.batch_size
    scheduler = warmup_cosine(optimizer, pretrain.epochs * steps_per_epoch, 0.1)
    generator = torch.Generator().manual_seed(pretrain.seed)
    losses = []
    bar = tqdm(total=pretrain.epochs * steps_per_epoch, desc="pretrain backbone", disable=not progress, unit="step")
    for epoch in range(pretrain.epochs):
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
            bar.update()
        losses.append(loss.item())
        bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
    bar.close()
    held_out = _images_and_tokens(pretrain.eval_images, pretrain.seed + 1_000_003, synthetic, backbone, context_length,
                                  progress)
    report = {"zeroshot_image_text_R1": zero_shot_image_text_r1(clip, *held_out),
              **zero_shot_class_accuracy(clip, pretrain.eval_images, pretrain.seed + 2_000_003, synthetic, backbone,
                                         context_length),
              "final_loss": losses[-1], "logit_scale": clip.logit_scale.exp().item()}
    return clip, report
