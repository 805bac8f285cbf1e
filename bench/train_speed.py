"""Benchmark: training throughput and peak memory of DGL (ULP) against full fine-tuning, and the size
of each method's saved model, on ViT-B/32 (architecture only, random weights) with 12 frames at 224 px.

Run from the repository root: `python -m bench.train_speed [--batch N] [--steps N] [--device cpu|cuda]`.
Each method trains in a child process (so CPU peak memory is its own): one warm-up step (which also
allocates the optimizer state), then `--steps` timed steps of the real training step
(dgl.train.contrastive_step, gradient clipping, AdamW), on random frames and captions; on CUDA under
train.amp=auto (bf16). Prints JSON:
{"device": ..., "batch": B, "frames": 12, "runs": {method: {"videos_per_s", "peak_mib", "peak_mib_per_video"}},
 "speedup_dgl_over_full": ..., "memory_ratio_full_over_dgl": ..., "saved_mib": {method: MiB}}.
peak_mib_per_video: the peak over the memory in use before the timed steps (CPU: resident size from
/proc, VmHWM reset after the warm-up; CUDA: allocated), divided by the batch size.
saved_mib: the size of models/trained/weights.pt (trainable weights only) per method; zeroshot saves none.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from bench.memory import device_name, peak_memory, pick_device, reset_peak_memory
from dgl.artifacts import TRAINED_WEIGHTS, save_trained
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method
from dgl.params import PAPER_MODEL
from dgl.settings import METHOD_NAMES, load_group
from dgl.optim import adamw
from dgl.train import contrastive_step, parallel_features, pick_precision

BACKBONE, FRAMES, SIZE = "ViT-B-32", 12, 224
METHODS = ("dgl", "full")


def method_on(name: str, clip: torch.nn.Module):
    return build_method(name, clip, load_group("model", {**PAPER_MODEL, "method": name}), num_frames=FRAMES)


def measure(name: str, batch: int, steps: int, device: torch.device) -> dict:
    """One method's training steps, in this process."""
    torch.manual_seed(0)
    method = method_on(name, build_clip(BACKBONE)).to(device)
    params = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    optimizer = adamw(params, 1e-4, 0.2)
    precision = pick_precision("auto", device)
    model = parallel_features(method, device)
    tokens = open_clip.get_tokenizer(BACKBONE)([f"a video of thing number {i}" for i in range(batch)],
                                               context_length=32).to(device)
    frames = torch.randn(batch, FRAMES, 3, SIZE, SIZE, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        contrastive_step(model, tokens, frames, method.logit_scale, precision=precision)
        precision.step(optimizer, [p for _, p in params], 1.0)

    method.train()
    step()  # warm-up: kernels, allocator, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
    before = reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_memory(device)
    return {"videos_per_s": round(batch * steps / seconds, 3), "peak_mib": round(peak, 1),
            "peak_mib_per_video": round((peak - before) / batch, 1)}


def saved_sizes() -> dict[str, float]:
    """MiB of the saved trainable weights per method (zeroshot trains and saves nothing)."""
    clip = build_clip(BACKBONE)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in METHOD_NAMES:
            if name == "zeroshot":
                continue
            save_trained(method_on(name, copy.deepcopy(clip)), Path(tmp), {})
            sizes[name] = round((Path(tmp) / TRAINED_WEIGHTS).stat().st_size / 2**20, 2)
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=0, help="videos per step; 0 = 2 on CPU, 32 on CUDA")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per method")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = pick_device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 2)
    if args.child:
        print(json.dumps(measure(args.child, batch, args.steps, device)))
        return
    runs = {}
    for name in METHODS:
        cmd = [sys.executable, "-m", "bench.train_speed", "--child", name, "--batch", str(batch),
               "--steps", str(args.steps), "--device", device.type]
        # A fixed mmap threshold makes glibc hand large freed blocks back, so the warm-up's activations
        # do not stay resident and hide the peak (as in tests/test_metrics.py's memory test).
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
        if out.returncode != 0:
            sys.exit(f"{name}: {out.stderr.strip().splitlines()[-1]}")
        runs[name] = json.loads(out.stdout.splitlines()[-1])
    print(json.dumps({
        "device": device_name(device), "backbone": BACKBONE, "batch": batch, "frames": FRAMES, "size": SIZE,
        "amp": str(pick_precision("auto", device).dtype or "off"), "runs": runs,
        "speedup_dgl_over_full": round(runs["dgl"]["videos_per_s"] / runs["full"]["videos_per_s"], 2),
        "memory_ratio_full_over_dgl": round(runs["full"]["peak_mib_per_video"] / runs["dgl"]["peak_mib_per_video"], 2),
        "saved_mib": saved_sizes(),
    }))


if __name__ == "__main__":
    main()
