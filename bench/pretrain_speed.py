"""Benchmark: the synthetic backbone's pretraining step, as first written (one graph through both towers,
captions at the full context length) against its two speed-ups in dgl.pretrain (captions encoded by length,
`encode_by_length`; the towers side by side, `towers_side_by_side`), and the pretraining's projected
time against its share of the default pipeline's 10 minutes on 2 cores.

Run from the repository root: `python -m bench.pretrain_speed [--steps N] [--images N]` (35 s on
a fast 2-core machine, about twice that on a slow one). Reads backbone.*, data.synthetic and
preprocess.context_length from params.yaml.
Prints JSON:
  threads                torch's CPU threads (the side-by-side towers get half each, at least one)
  matmul_gflops          a 512 x 512 float32 matrix product on all threads, timed before and after the
                         steps: the machine's speed during the run (137 to 414 GFLOPS seen on 2 cores),
                         to read the other figures against
  contrastive_step_s     median wall time of one contrastive step of backbone.pretrain.batch_size
                         frame-caption pairs: `padded` (one graph through both towers on all threads,
                         every caption at preprocess.context_length tokens), `by_length` (the same with the
                         captions encoded by length) and `side_by_side` (by length, each tower on
                         its own thread: what the stage runs); the three take turns step by step, in
                         rotating order, so all see the same machine load
  warmup_step_s          median wall time of one warm-up step (the image tower alone, all threads)
  projected_loops_s      warmup_steps x warmup_step_s + epochs x steps per epoch x the side-by-side step:
                         the stage's time less rendering, diagnostics and start-up (about 20 s)
and under "checks" ({"value", "limit", "within"}): each speed-up (by length over padded, side by side
over by length) against its limit, and the projected loops against LOOPS_LIMIT_S. The speed-ups guard
against regressions: encoding by length must win by BY_LENGTH_LIMIT (the text tower is half of a
padded step), and the towers side by side must not lose by more than the noise of a 24-step median
(on an idle machine ops use two threads well enough that the two are equal: 0.995-1.016x in five
runs; under load side by side gains more). The `dvc repro` has 10 minutes on 2 cores; its other
stages take 150 s of them (measured idle) and the backbone stage's rendering, diagnostics and
start-up 20 s, which leaves the loops 430 s; LOOPS_LIMIT_S keeps 30 s of that in hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from dgl.cache.read import normalise
from dgl.models.backbone import build_clip
from dgl.models.prompted import PromptedCLIP
from dgl.optim import adamw
from dgl.pretrain import (
    _images_and_tokens,
    _lone_object_labels,
    _unknown_tokens,
    content_ids,
    encode_by_length,
    pretrain_loss,
    pretrain_step,
    towers_side_by_side,
    warmup_classes,
    warmup_loss,
    with_unknown_words,
)
from dgl.settings import load_params

LOOPS_LIMIT_S = 400.0
BY_LENGTH_LIMIT = 1.1  # captions by length over padded, one after the other
SIDE_BY_SIDE_LIMIT = 0.97  # the towers side by side over one after the other, captions by length


def one_after_the_other(
    clip: nn.Module,
    encoder: PromptedCLIP,
    heads: nn.ModuleList,
    images,
    captions,
    content_id,
    labels,
    *,
    by_length: bool,
) -> float:
    """The step as one graph through both towers, each op on all of torch's threads; the captions
    encoded by length or all at the full context length."""
    image = clip.encode_image(normalise(images))
    text = encode_by_length(encoder, captions) if by_length else encoder.encode_text(captions)
    loss = pretrain_loss(clip, heads, image, text, content_id, labels)
    loss.backward()
    return loss.item()


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def matmul_gflops(seconds: float = 1.0) -> float:
    """Float32 GFLOP/s of repeated 512 x 512 products over about `seconds`, on torch's threads."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 512**3 * count / (time.perf_counter() - start) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=24, help="timed steps of each kind")
    ap.add_argument("--images", type=int, default=2048, help="rendered frames the batches are drawn from")
    args = ap.parse_args()
    params = load_params(args.params)
    name, pretrain = params.backbone.name, params.backbone.pretrain
    gflops_before = matmul_gflops()
    torch.manual_seed(0)
    clip = build_clip(name)
    encoder = PromptedCLIP(clip)
    images, tokens, _, contents = _images_and_tokens(
        args.images,
        0,
        params.data.synthetic,
        name,
        params.preprocess.context_length,
        frames_per_video=pretrain.frames_per_video,
    )
    labels = _lone_object_labels(contents)
    content_id = content_ids(contents)
    heads = nn.ModuleList(nn.Linear(clip.visual.output_dim, len(c)) for c in warmup_classes())
    optimizer = adamw(list(clip.named_parameters()) + list(heads.named_parameters()), pretrain.lr, 0.1)
    unknown, generator = _unknown_tokens(clip, tokens), torch.Generator().manual_seed(0)
    clip.train()

    def batch(step: int) -> tuple:
        chosen = torch.arange(step * pretrain.batch_size, (step + 1) * pretrain.batch_size) % len(images)
        return (
            images[chosen],
            with_unknown_words(tokens[chosen], unknown, generator),
            content_id[chosen],
            labels[chosen],
        )

    def serial(step: int, by_length: bool) -> float:
        optimizer.zero_grad(set_to_none=True)
        seconds = timed(lambda: one_after_the_other(clip, encoder, heads, *batch(step), by_length=by_length))
        optimizer.step()
        return seconds

    def side(step: int) -> float:
        with towers_side_by_side() as pool:
            optimizer.zero_grad(set_to_none=True)
            seconds = timed(lambda: pretrain_step(pool, clip, encoder, heads, *batch(step)))
            optimizer.step()
        return seconds

    kinds = {
        "padded": lambda step: serial(step, False),
        "by_length": lambda step: serial(step, True),
        "side_by_side": side,
    }
    for step, kind in enumerate(kinds.values()):  # first calls allocate
        kind(step)
    times = {name: [] for name in kinds}
    names = list(kinds)
    for step in range(args.steps):
        for name in names[step % 3 :] + names[: step % 3]:
            times[name].append(kinds[name](step))
    step_s = {name: statistics.median(t) for name, t in times.items()}

    lone = torch.nonzero(labels[:, 0] >= 0)[:, 0]

    def warmup_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        warmup_loss(clip, heads, images, labels, lone, pretrain.warmup_batch_size, generator).backward()
        optimizer.step()

    warmup_step()
    warmup_s = statistics.median(timed(warmup_step) for _ in range(args.steps))
    steps = pretrain.epochs * (pretrain.images // pretrain.batch_size)
    loops = pretrain.warmup_steps * warmup_s + steps * step_s["side_by_side"]
    speedups = {
        "by_length_speedup": (step_s["padded"] / step_s["by_length"], BY_LENGTH_LIMIT),
        "side_by_side_speedup": (step_s["by_length"] / step_s["side_by_side"], SIDE_BY_SIDE_LIMIT),
    }
    gflops = {"before": round(gflops_before, 1), "after": round(matmul_gflops(), 1)}
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "matmul_gflops": gflops,
                "contrastive_step_s": {k: round(v, 3) for k, v in step_s.items()},
                "warmup_step_s": round(warmup_s, 3),
                "projected_loops_s": round(loops, 1),
                "checks": {
                    **{
                        name: {"value": round(value, 3), "limit": limit, "within": value >= limit}
                        for name, (value, limit) in speedups.items()
                    },
                    "projected_loops_s": {
                        "value": round(loops, 1),
                        "limit": LOOPS_LIMIT_S,
                        "within": loops <= LOOPS_LIMIT_S,
                        "steps": {"warmup": pretrain.warmup_steps, "contrastive": steps},
                    },
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
