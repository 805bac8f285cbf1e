"""What the synthetic backbone has learnt, reported by the backbone stage (dgl/pretrain.py): zero-shot
class accuracy and image-text R@1 on held-out single frames, and whether the text tower tells a
caption from its time-reversed twin's (`twin_text_report`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgl.cache.read import image_size_of, normalise
from dgl.data.synthetic_images import static_caption_classes
from dgl.data.synthetic_scenes import order_sensitive, plan_scenes, vocab
from dgl.data.twins import twin_wordings
from dgl.frames.store import resize_center_crop
from dgl.models.prompted import PromptedCLIP
from dgl.settings import SyntheticConfig


def static_tokens(captions: list[str], backbone: str, context_length: int) -> Tensor:
    tokens = open_clip.get_tokenizer(backbone)(captions, context_length=context_length)
    longest = int(tokens.argmax(dim=-1).max()) + 1  # static captions are short: drop the padding
    return tokens[:, :longest]


def static_pixels(images: np.ndarray, backbone: str) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, S, S) uint8, resized and centre-cropped as CLIP expects; batches are
    normalised as they are drawn (dgl.cache.read.normalise), so all of them stay 4x smaller in memory."""
    return torch.from_numpy(resize_center_crop(images, image_size_of(backbone)))


def image_features(clip: nn.Module, images: Tensor) -> Tensor:
    """uint8 (N, 3, S, S) -> L2-normalised image features (N, E)."""
    return torch.cat([F.normalize(clip.encode_image(normalise(b)), dim=-1) for b in images.split(512)])


@torch.no_grad()
def zero_shot_class_accuracy(
    clip: nn.Module, n: int, seed: int, synthetic: SyntheticConfig, backbone: str, context_length: int
) -> dict[str, float]:
    """Held-out one-object frames, each classified among the captions of every (colour, shape,
    background): the share whose whole caption wins, and the share right on each factor alone."""
    clip.eval()
    images, labels, classes, keys = static_caption_classes(n, seed, synthetic.resolution)
    text = F.normalize(PromptedCLIP(clip).encode_text(static_tokens(classes, backbone, context_length)), dim=-1)
    image = image_features(clip, static_pixels(images, backbone))
    predicted = (image @ text.t()).argmax(1).tolist()
    report = {"zeroshot_class_acc": float(np.mean([p == t for p, t in zip(predicted, labels)]))}
    for i, factor in enumerate(("colour", "shape", "background")):
        report[f"zeroshot_{factor}_acc"] = float(np.mean([keys[p][i] == keys[t][i] for p, t in zip(predicted, labels)]))
    return report


@torch.no_grad()
def zero_shot_image_text_r1(
    clip: nn.Module, images: Tensor, tokens: Tensor, captions: list[str], contents: list[tuple]
) -> float:
    """Each held-out frame ranks every distinct static caption; R@1 = share whose top caption
    describes what the frame shows (any paraphrase of it: the template is not in the pixels)."""
    clip.eval()
    distinct = sorted(set(captions))
    first = {c: captions.index(c) for c in distinct}
    text = F.normalize(PromptedCLIP(clip).encode_text(tokens[[first[c] for c in distinct]]), dim=-1)
    image = image_features(clip, images)
    predicted = (image @ text.t()).argmax(1).tolist()
    return float(np.mean([contents[first[distinct[p]]] == content for p, content in zip(predicted, contents)]))


@torch.no_grad()
def twin_text_report(clip: nn.Module, synthetic: SyntheticConfig, backbone: str, context_length: int) -> dict:
    """Can the text tower tell a caption from its time-reversed twin's? For every order-sensitive
    test video, every template of its kind is filled in for the video and for its twin, and split by
    `dgl.data.twins.twin_wordings`: `words` where the two differ in words, `order` where only in order.

    Per split, `own_closer`: over pairs of templates i != j of one video, the share where the
    video's caption i is closer to the video's caption j than to the twin's caption j. Template j
    is the same on both sides, so what decides is whether the caption carries the direction that
    separates j from its twin: exactly what a video feature can align with. (Comparing with the
    twin's caption i too would mostly measure template identity, which retrieval never compares.)
    `cosine`: the mean cosine of a caption and the twin's caption from the same template. A text
    tower that cannot tell twins apart scores 0 (ties) to 0.5 and a cosine near 1."""
    clip.eval()
    scenes = [s for s in plan_scenes(synthetic) if s.split == "test" and order_sensitive(s.kind)]
    units = []  # per video and wording: its captions and its twin's, template by template
    for scene in scenes:
        spec, look = vocab()["kinds"][scene.kind], dataclasses.asdict(scene.look)
        own_templates, twin_templates = (
            (spec["reversed_templates"], spec["templates"])
            if scene.reversed
            else (spec["templates"], spec["reversed_templates"])
        )
        own = [t.format(**look) for t in own_templates]
        twin = [t.format(**look) for t in twin_templates]
        wordings = twin_wordings(own + twin, [0] * len(own) + [1] * len(twin), [1, 0])[: len(own)]
        for wording in ("words", "order"):
            keep = [i for i in range(len(own)) if wordings[i] == wording]
            if len(keep) >= 2:
                units.append((wording, [own[i] for i in keep], [twin[i] for i in keep]))
    texts = sorted({t for _, own, twin in units for t in own + twin})
    index = {t: i for i, t in enumerate(texts)}
    encoder = PromptedCLIP(clip)
    tokens = static_tokens(texts, backbone, context_length)
    features = torch.cat([F.normalize(encoder.encode_text(t), dim=-1) for t in tokens.split(512)])
    closer, cosine = {"words": [], "order": []}, {"words": [], "order": []}
    for wording, own, twin in units:
        a, b = features[[index[t] for t in own]], features[[index[t] for t in twin]]
        own_sim, twin_sim = a @ a.t(), a @ b.t()  # (n, n): caption i vs the video's / the twin's caption j
        off_diagonal = ~torch.eye(len(own), dtype=torch.bool)
        closer[wording] += (own_sim > twin_sim)[off_diagonal].tolist()
        cosine[wording] += twin_sim.diagonal().tolist()
    report = {}
    for wording in ("words", "order"):
        if closer[wording]:
            report[f"text_twin_{wording}_own_closer"] = float(np.mean(closer[wording]))
            report[f"text_twin_{wording}_cosine"] = float(np.mean(cosine[wording]))
    return report
