"""Pretraining of the small CLIP for the synthetic benchmark: single rendered frames with static
captions only, so the backbone knows colours, shapes and backgrounds but never sees time.

Two phases. Contrastive learning from scratch at this scale learns colour and background within
a hundred steps and shape, size and place only after thousands (the easy factors already separate
most pairs of a batch), so the image tower first learns to name the shape, size and place of a
lone object (one linear head per factor), then the whole CLIP trains contrastively on
image-caption pairs, with the heads' loss kept beside the contrastive one (without it the
contrastive phase lets shape fade: it is rarely what separates a batch's pairs). The heads are
discarded after. In the contrastive phase half the captions get a few words they never use
(`with_unknown_words`), as web captions are full of words no image shows: the text tower learns to
read the words it knows and pass over the others, such as a video caption's verbs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgl.backbone_report import (
    static_pixels,
    static_tokens,
    twin_text_report,
    zero_shot_class_accuracy,
    zero_shot_image_text_r1,
)
from dgl.cache.read import normalise
from dgl.cli import progress_bar
from dgl.data.synthetic_images import render_static_images
from dgl.data.synthetic_scenes import vocab
from dgl.determinism import seed_everything
from dgl.models.backbone import build_clip
from dgl.models.prompted import PromptedCLIP
from dgl.optim import adamw, warmup_cosine
from dgl.settings import SyntheticConfig

UNKNOWN_WORDS = 3  # at most this many unknown words inserted into a caption (`with_unknown_words`)


def _images_and_tokens(
    n: int,
    seed: int,
    synthetic: SyntheticConfig,
    backbone: str,
    context_length: int,
    *,
    frames_per_video: int = 1,
    progress: bool = False,
) -> tuple[Tensor, Tensor, list[str], list[tuple]]:
    """n rendered frames as uint8 CLIP input (N, 3, S, S) (`static_pixels`), their captions' tokens, the
    captions and what each frame shows."""
    images, captions, contents = render_static_images(
        n,
        seed,
        synthetic.resolution,  # (N, H, W, 3) uint8
        frames_per_video=frames_per_video,
        progress=progress,
    )
    return static_pixels(images, backbone), static_tokens(captions, backbone, context_length), captions, contents


def warmup_classes() -> list[list[str]]:
    """What the warm-up heads name of a lone object: its shape, size class, vertical and horizontal place."""
    return [list(vocab()["shapes"]), ["small", "", "large"], ["top", "middle", "bottom"], ["left", "middle", "right"]]


def _lone_object_labels(contents: list[tuple]) -> Tensor:
    """(N, 4): for a frame with one object, the index of its shape, size class, vertical and
    horizontal place (dgl.data.synthetic_images.object_words); -1 everywhere for other frames."""
    classes = warmup_classes()
    rows = []
    for _, objects in contents:
        if len(objects) == 1:
            _, shape, size, vertical, horizontal = objects[0]
            rows.append([c.index(v) for c, v in zip(classes, (shape, size, vertical, horizontal))])
        else:
            rows.append([-1] * len(classes))
    return torch.tensor(rows)


def with_unknown_words(
    tokens: Tensor, unknown: Tensor, generator: torch.Generator, *, most: int = 3, share: float = 0.5
) -> Tensor:
    """Tokens (N, L) of captions (start token, words, end token, padding) -> (N, L + most) where a
    `share` of the captions have 1..`most` tokens drawn from `unknown` inserted at random places
    between their start and end tokens; every other token keeps its order."""
    n, length = tokens.shape
    end = tokens.argmax(1)  # the end token has the largest id
    count = torch.randint(1, most + 1, (n,), generator=generator) * (torch.rand(n, generator=generator) < share)
    inserted = unknown[torch.randint(len(unknown), (n, most), generator=generator)]
    used = torch.arange(most)[None] < count[:, None]
    # Sort keys: a kept token's position; an inserted word goes into one of the gaps after the start
    # token 0 .. before the end token (gap g: key g + 0.5); unused slots go last, as padding.
    gap = (torch.rand(n, most, generator=generator) * end[:, None]).floor() + 0.5
    keys = torch.cat(
        [torch.arange(length, dtype=torch.float).expand(n, -1), torch.where(used, gap, torch.tensor(float("inf")))],
        dim=1,
    )
    values = torch.cat([tokens, torch.where(used, inserted, torch.zeros_like(inserted))], dim=1)
    return values.gather(1, keys.argsort(dim=1, stable=True))


def _unknown_tokens(clip: nn.Module, tokens: Tensor) -> Tensor:
    """Every token id of the text tower's vocabulary that no caption in `tokens` uses (0 is padding)."""
    unused = torch.ones(clip.token_embedding.num_embeddings, dtype=torch.bool)
    unused[tokens.unique()] = False
    unused[0] = False
    return torch.nonzero(unused)[:, 0]


def factor_loss(heads: nn.ModuleList, feature: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each head naming its factor (`warmup_classes`) of the lone-object frames
    among `feature`'s (labels -1: not a lone object); 0 when the batch has none or there are no heads."""
    lone = labels[:, 0] >= 0
    if not lone.any():
        return feature.new_zeros(())
    return sum(
        (F.cross_entropy(head(feature[lone]), labels[lone, i]) for i, head in enumerate(heads)), feature.new_zeros(())
    )


def _duplicate_aware_loss(image: Tensor, text: Tensor, content_id: Tensor, scale: Tensor) -> Tensor:
    """Contrastive loss where every pair showing the same content is a positive (static scenes
    repeat, and paraphrases of one scene describe it equally well)."""
    logits = scale * image @ text.t()  # (B, B)
    same = (content_id[:, None] == content_id[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def pretrain_loss(
    clip: nn.Module, heads: nn.ModuleList, image: Tensor, text: Tensor, content_id: Tensor, labels: Tensor
) -> Tensor:
    """One batch's loss from the towers' outputs: duplicate-aware contrastive + the factor heads'."""
    return _duplicate_aware_loss(
        F.normalize(image, dim=-1), F.normalize(text, dim=-1), content_id, clip.logit_scale.exp()
    ) + factor_loss(heads, image, labels)


def grouped_order(n: int, group: int, generator: torch.Generator) -> Tensor:
    """A random order of n items that keeps each run of `group` consecutive items together, so a
    batch holds several moments of one video: hard negatives that differ only in place or size."""
    starts = torch.randperm(-(-n // group), generator=generator) * group
    return torch.cat([torch.arange(s, min(s + group, n)) for s in starts.tolist()])


def encode_by_length(encoder: PromptedCLIP, tokens: Tensor, runs: int = 4) -> Tensor:
    """encoder.encode_text(tokens) for captions (N, L), equal up to float rounding, at a fraction of
    the cost: under the causal mask no position after a caption's end token reaches its feature, so
    the captions, ordered by length, are encoded in `runs` runs, each cut after its longest caption."""
    end = tokens.argmax(1)  # the end token has the largest id
    order = end.argsort(stable=True)
    features = torch.cat(
        [encoder.encode_text(tokens[run, : int(end[run].max()) + 1]) for run in order.tensor_split(runs)]
    )
    return features[order.argsort()]


@contextmanager
def towers_side_by_side() -> Iterator[ThreadPoolExecutor]:
    """Two threads, one per tower, while each op runs on half of torch's threads (at least one). An
    op's bits depend on its thread count only, so they are those of running the towers one after the
    other with that count. At this scale ops use two threads poorly, so two towers side by side use
    the cores better than one after the other; bench/pretrain_speed.py measures the gain per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="tower") as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def side_by_side(pool: ThreadPoolExecutor, *calls: Callable) -> list:
    """The results of `calls`, each run on a thread of `pool` (towers_side_by_side)."""
    return [future.result() for future in [pool.submit(call) for call in calls]]


def pretrain_step(
    pool: ThreadPoolExecutor,
    clip: nn.Module,
    encoder: PromptedCLIP,
    heads: nn.ModuleList,
    images: Tensor,
    captions: Tensor,
    content_id: Tensor,
    labels: Tensor,
) -> float:
    """Accumulate the gradients of one batch's loss (duplicate-aware contrastive + the factor heads')
    and return it. The towers share no weights, so each runs its forward and then its backward on its
    own thread (side_by_side); between the two, the loss is differentiated with respect to the
    towers' outputs alone, as GradCache does."""
    image, text = side_by_side(
        pool, lambda: clip.encode_image(normalise(images)), lambda: encode_by_length(encoder, captions)
    )
    image_out, text_out = image.detach().requires_grad_(), text.detach().requires_grad_()
    loss = pretrain_loss(clip, heads, image_out, text_out, content_id, labels)
    loss.backward()  # the heads', logit scale's and the two outputs' gradients
    side_by_side(pool, lambda: image.backward(image_out.grad), lambda: text.backward(text_out.grad))
    return loss.item()


def warmup_loss(
    clip: nn.Module,
    heads: nn.ModuleList,
    images: Tensor,
    labels: Tensor,
    lone: Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """The factor heads' loss on a batch of `batch_size` lone-object frames drawn from `lone`."""
    batch = lone[torch.randint(len(lone), (batch_size,), generator=generator)]
    return factor_loss(heads, clip.encode_image(normalise(images[batch])), labels[batch])


def content_ids(contents: list[tuple]) -> Tensor:
    """One id per distinct frame content: frames that show the same thing are each other's positives."""
    return torch.tensor(np.unique([repr(c) for c in contents], return_inverse=True)[1])


def warmup(clip: nn.Module, images: Tensor, labels: Tensor, pretrain, progress: bool) -> tuple[nn.ModuleList, float]:
    """Train the image tower to name a lone object's shape, size and place (one linear head per
    factor); returns the heads and the last batch's loss."""
    lone = torch.nonzero(labels[:, 0] >= 0)[:, 0]
    heads = nn.ModuleList(nn.Linear(clip.visual.output_dim, len(c)) for c in warmup_classes())
    optimizer = adamw(list(clip.visual.named_parameters()) + list(heads.named_parameters()), pretrain.lr, 0.1)
    scheduler = warmup_cosine(optimizer, pretrain.warmup_steps, 0.1)
    generator = torch.Generator().manual_seed(pretrain.seed)
    clip.train()
    for _ in progress_bar(progress, range(pretrain.warmup_steps), desc="backbone warm-up", unit="step"):
        loss = warmup_loss(clip, heads, images, labels, lone, pretrain.warmup_batch_size, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return heads, loss.item()


def pretrain_clip(
    backbone: str, pretrain, synthetic: SyntheticConfig, context_length: int, progress: bool = True
) -> tuple[nn.Module, dict]:
    seed_everything(pretrain.seed)
    clip = build_clip(backbone)
    encoder = PromptedCLIP(clip)  # encodes text of any length up to the context (no prompts here)
    images, tokens, _, contents = _images_and_tokens(
        pretrain.images,
        pretrain.seed,
        synthetic,
        backbone,
        context_length,
        frames_per_video=pretrain.frames_per_video,
        progress=progress,
    )
    report = {}
    labels = _lone_object_labels(contents)
    heads = nn.ModuleList()
    if pretrain.warmup_steps:
        heads, report["warmup_loss"] = warmup(clip, images, labels, pretrain, progress)
    content_id = content_ids(contents)
    optimizer = adamw(list(clip.named_parameters()) + list(heads.named_parameters()), pretrain.lr, weight_decay=0.1)
    steps_per_epoch = len(images) // pretrain.batch_size
    scheduler = warmup_cosine(optimizer, pretrain.epochs * steps_per_epoch, 0.1)
    generator = torch.Generator().manual_seed(pretrain.seed)
    unknown = _unknown_tokens(clip, tokens)
    most_unknown = min(UNKNOWN_WORDS, context_length - tokens.shape[1])
    losses = []
    bar = progress_bar(progress, total=pretrain.epochs * steps_per_epoch, desc="pretrain backbone", unit="step")
    with towers_side_by_side() as pool:
        for epoch in range(pretrain.epochs):
            clip.train()
            order = grouped_order(len(images), pretrain.frames_per_video, generator)
            for step in range(steps_per_epoch):
                batch = order[step * pretrain.batch_size : (step + 1) * pretrain.batch_size]
                captions = with_unknown_words(tokens[batch], unknown, generator, most=most_unknown)
                optimizer.zero_grad(set_to_none=True)
                loss = pretrain_step(
                    pool, clip, encoder, heads, images[batch], captions, content_id[batch], labels[batch]
                )
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    clip.logit_scale.clamp_(0, np.log(100))
                bar.update()
            losses.append(loss)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
    bar.close()
    held_out = _images_and_tokens(
        pretrain.eval_images, pretrain.seed + 1_000_003, synthetic, backbone, context_length, progress=progress
    )
    report |= {
        "zeroshot_image_text_R1": zero_shot_image_text_r1(clip, *held_out),
        **zero_shot_class_accuracy(
            clip, pretrain.eval_images, pretrain.seed + 2_000_003, synthetic, backbone, context_length
        ),
        **twin_text_report(clip, synthetic, backbone, context_length),
        "final_loss": losses[-1],
        "logit_scale": clip.logit_scale.exp().item(),
    }
    return clip, report
