"""Benchmark: the synthetic backbone's pretraining step, its two towers one after the other against side
by side (dgl.pretrain.towers_side_by_side), and the pretraining's projected time against its share of
the default pipeline's 10 minutes on 2 cores.

Run from the repository root: `python -m bench.pretrain_speed [--steps N] [--images N]` (about 20 s
on 2 cores). Reads backbone.*, data.synthetic and preprocess.context_length from params.yaml.
Prints JSON:
  threads                torch's CPU threads (the side-by-side towers get half each, at least one)
  contrastive_step_s     median wall time of one contrastive step of backbone.pretrain.batch_size
                         frame-caption pairs: `one_after_the_other` (one graph through both towers on
                         all threads) and `side_by_side` (what the stage runs), captions encoded by
                         length in both, so the ratio is the towers' threads alone; the
                         two alternate step by step, so both see the same machine load
  warmup_step_s          median wall time of one warm-up step (the image tower alone, all threads)
  projected_loops_s      warmup_steps x warmup_step_s + epochs x steps per epoch x the side-by-side step:
                         the stage's time less rendering, diagnostics and start-up (about 35 s)
and under "checks" ({"value", "limit", "within"}): the speed-up of side by side over one after the
other, and the projected loops against LOOPS_LIMIT_S. The limit: the default `dvc repro` has 10
minutes on 2 cores; its other stages take 2.5 of them and the backbone stage's rendering, diagnostics
and start-up about 0.6, which leaves the loops 6.9 minutes; LOOPS_LIMIT_S keeps 30 s of that in hand.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from dgl.cache import normalise
from dgl.models.backbone import build_clip
from dgl.models.prompted import PromptedCLIP
from dgl.optim import adamw
from dgl.pretrain import (_images_and_tokens, _lone_object_labels, _unknown_tokens, content_ids, contrastive_step,
                          encode_by_length, pretrain_loss, towers_side_by_side, warmup_classes, warmup_loss,
                          with_unknown_words)
from dgl.settings import load_params

LOOPS_LIMIT_S = 385.0
SPEEDUP_LIMIT = 1.3  # side by side over one after the other, on 2 cores


def one_after_the_other(clip: nn.Module, encoder: PromptedCLIP, heads: nn.ModuleList, images, captions,
                        content_id, labels) -> float:
    """The step as one graph through both towers, each op on all of torch's threads."""
    image = clip.encode_image(normalise(images))
    text = encode_by_length(encoder, captions)
    loss = pretrain_loss(clip, heads, image, text, content_id, labels)
    loss.backward()
    return loss.item()


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    ap.add_argument("--images", type=int, default=2048, help="rendered frames the batches are drawn from")
    args = ap.parse_args()
    params = load_params(args.params)
    name, pretrain = params.backbone.name, params.backbone.pretrain
    torch.manual_seed(0)
    clip = build_clip(name)
    encoder = PromptedCLIP(clip)
    images, tokens, _, contents = _images_and_tokens(args.images, 0, params.data.synthetic, name,
                                                     params.preprocess.context_length,
                                                     frames_per_video=pretrain.frames_per_video)
    labels = _lone_object_labels(contents)
    content_id = content_ids(contents)
    heads = nn.ModuleList(nn.Linear(clip.visual.output_dim, len(c)) for c in warmup_classes())
    optimizer = adamw(list(clip.named_parameters()) + list(heads.named_parameters()), pretrain.lr, 0.1)
    unknown, generator = _unknown_tokens(clip, tokens), torch.Generator().manual_seed(0)
    clip.train()

    def batch(step: int) -> tuple:
        chosen = torch.arange(step * pretrain.batch_size, (step + 1) * pretrain.batch_size) % len(images)
        return (images[chosen], with_unknown_words(tokens[chosen], unknown, generator), content_id[chosen],
                labels[chosen])

    def serial(step: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        seconds = timed(lambda: one_after_the_other(clip, encoder, heads, *batch(step)))
        optimizer.step()
        return seconds

    def side(step: int) -> float:
        with towers_side_by_side() as pool:
            optimizer.zero_grad(set_to_none=True)
            seconds = timed(lambda: contrastive_step(pool, clip, encoder, heads, *batch(step)))
            optimizer.step()
        return seconds

    serial(0), side(1)  # first calls allocate
    times = {"one_after_the_other": [], "side_by_side": []}
    for step in range(args.steps):
        order = (serial, side) if step % 2 == 0 else (side, serial)
        for kind in order:
            times["one_after_the_other" if kind is serial else "side_by_side"].append(kind(step))
    step_s = {kind: statistics.median(t) for kind, t in times.items()}

    lone = torch.nonzero(labels[:, 0] >= 0)[:, 0]

    def warmup_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        warmup_loss(clip, heads, images, labels, lone, pretrain.warmup_batch_size, generator).backward()
        optimizer.step()

    warmup_step()
    warmup_s = statistics.median(timed(warmup_step) for _ in range(args.steps))
    steps = pretrain.epochs * (pretrain.images // pretrain.batch_size)
    loops = pretrain.warmup_steps * warmup_s + steps * step_s["side_by_side"]
    speedup = step_s["one_after_the_other"] / step_s["side_by_side"]
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "contrastive_step_s": {k: round(v, 3) for k, v in step_s.items()},
        "warmup_step_s": round(warmup_s, 3),
        "projected_loops_s": round(loops, 1),
        "checks": {
            "side_by_side_speedup": {"value": round(speedup, 3), "limit": SPEEDUP_LIMIT, "within": speedup >= SPEEDUP_LIMIT},
            "projected_loops_s": {"value": round(loops, 1), "limit": LOOPS_LIMIT_S, "within": loops <= LOOPS_LIMIT_S,
                                  "steps": {"warmup": pretrain.warmup_steps, "contrastive": steps}},
        },
    }, indent=1))


if __name__ == "__main__":
    main()
