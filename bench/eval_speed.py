"""Benchmark: time and peak memory of `evaluate_retrieval` on random features (D = 512 by default).

Run from the repository root: `python -m bench.eval_speed [--videos 1000 100000] [--device cpu|cuda]`.
Each size is V videos and V x captions-per-video captions. Prints JSON:
{"device": ..., "runs": [{"videos": V, "captions": C, "seconds": ..., "peak_extra_mib": ...}, ...]}.
peak_extra_mib: CPU, peak resident memory over the resident size before the call (Linux /proc; glibc
may keep freed blocks resident, so it can read higher than what the code holds); CUDA, peak allocated.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from bench.memory import device_name, peak_memory, pick_device, reset_peak_memory
from dgl.metrics import evaluate_retrieval

def random_features(num_videos: int, captions_per_video: int, dim: int, device: torch.device):
    """Normalised video (V, D) features, captions (C, D) near their video's, and caption_video (C,)."""
    gen = torch.Generator(device=device).manual_seed(0)
    video = F.normalize(torch.randn(num_videos, dim, generator=gen, device=device), dim=-1)
    caption_video = torch.arange(num_videos * captions_per_video, device=device) % num_videos
    noise = torch.randn(len(caption_video), dim, generator=gen, device=device)
    text = F.normalize(video[caption_video] + 0.1 * noise, dim=-1)
    return text, video, caption_video


def time_one(num_videos: int, args: argparse.Namespace, device: torch.device) -> dict:
    text, video, caption_video = random_features(num_videos, args.captions_per_video, args.dim, device)
    before = reset_peak_memory(device)
    start = time.perf_counter()
    evaluate_retrieval(text, video, caption_video, dsl=args.dsl, chunk_size=args.chunk_size)
    seconds = time.perf_counter() - start  # ranks come back as numpy: the device has finished
    return {"videos": num_videos, "captions": len(text), "seconds": round(seconds, 3),
            "peak_extra_mib": round(peak_memory(device) - before, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, nargs="+", default=[1000, 100_000], help="gallery sizes V")
    ap.add_argument("--captions-per-video", type=int, default=1)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--dsl", action="store_true", help="time the dual-softmax re-weighting too")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    time_one(100, args, device)  # warm up: kernels, threads, CUDA context
    runs = [time_one(v, args, device) for v in args.videos]
    print(json.dumps({"device": device_name(device), "dim": args.dim, "chunk_size": args.chunk_size, "dsl": args.dsl,
                      "runs": runs}))


if __name__ == "__main__":
    main()
