"""Benchmark: time and peak memory of `evaluate_retrieval` on random features (D = 512 by default),
against the time of its matrix product alone, measured in the same run.

Run from the repository root: `python -m bench.eval_speed [--videos 1000 100000] [--device cpu|cuda]`.
Each size is V videos and V x captions-per-video captions. Prints JSON:
{"device": ..., "runs": [{"videos": V, "captions": C, "seconds": ..., "matmul_seconds": ...,
"ratio_to_matmul": ..., "limit": 1.3, "peak_extra_mib": ...}, ...]}.
matmul_seconds: the similarity matrix S = text @ video.T with every entry computed once and nothing
else done with it, the faster of two schedules: rows of `chunk_size` captions against all videos, and
the tiles evaluate_retrieval cuts S into (dgl.metrics.ranking_tiles). Each is timed half before and half
after the evaluation, so a change in the machine's load during the run weighs on both sides alike
(load_average: the 1-minute load before and after). Evaluation computes S once too (and the blocks
holding the true scores, 1024 / V of it), so the ratio is what ranking adds; the limit is for plain
cosine ranking of a large gallery (--dsl adds two passes over S for the softmax normalisers; at 1,000
videos fixed costs of a few milliseconds weigh). cpu_seconds and cpu_ratio_to_matmul: the same in
process CPU time, steadier on a machine shared with other work.
peak_extra_mib: CPU, peak resident memory over the resident size before the call (Linux /proc; glibc
may keep freed blocks resident, so it can read higher than what the code holds); CUDA, peak allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from bench.memory import device_name, peak_memory, pick_device, reset_peak_memory
from dgl.metrics import evaluate_retrieval, ranking_tiles

RATIO_LIMIT = 1.3  # evaluation time over matmul time (issue 19)


def random_features(num_videos: int, captions_per_video: int, dim: int, device: torch.device):
    """Normalised video (V, D) features, captions (C, D) near their video's, and caption_video (C,)."""
    gen = torch.Generator(device=device).manual_seed(0)
    video = F.normalize(torch.randn(num_videos, dim, generator=gen, device=device), dim=-1)
    caption_video = torch.arange(num_videos * captions_per_video, device=device) % num_videos
    noise = torch.randn(len(caption_video), dim, generator=gen, device=device)
    text = F.normalize(video[caption_video] + 0.1 * noise, dim=-1)
    return text, video, caption_video


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work) -> tuple[float, float]:
    """Wall and process CPU seconds of work()."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def half(items: list, which: int) -> list:
    return items[: len(items) // 2] if which == 0 else items[len(items) // 2 :]


def rows_product(
    text: torch.Tensor, video: torch.Tensor, caption_video: torch.Tensor, chunk_size: int, which: int
) -> None:
    """Half `which` of S = text @ video.T: `chunk_size` captions against all videos at a time."""
    buffer = torch.empty(min(len(text), chunk_size), len(video), dtype=text.dtype, device=text.device)
    for queries in half(list(text.split(chunk_size)), which):
        torch.mm(queries, video.T, out=buffer[: len(queries)])


def tiles_product(
    text: torch.Tensor, video: torch.Tensor, caption_video: torch.Tensor, chunk_size: int, which: int
) -> None:
    """Half `which` of S = text @ video.T over the tiles evaluate_retrieval ranks (dgl.metrics.ranking_tiles)."""
    order = torch.argsort(caption_video, stable=True)
    blocks, spans = ranking_tiles(caption_video, len(video), chunk_size)
    chunks = [chunk for block in blocks for chunk in block.chunks]
    buffer = torch.empty(
        max(c.rows.stop - c.rows.start for c in chunks) * max(s.stop - s.start for s in spans),
        dtype=text.dtype,
        device=text.device,
    )
    for chunk in half(chunks, which):
        queries = text[order[chunk.rows]]
        for span in spans:
            out = buffer[: len(queries) * (span.stop - span.start)]
            torch.mm(queries, video[span].T, out=out.view(len(queries), -1))


def time_one(num_videos: int, args: argparse.Namespace, device: torch.device) -> dict:
    text, video, caption_video = random_features(num_videos, args.captions_per_video, args.dim, device)
    products = (rows_product, tiles_product)

    def time_products(which: int) -> list[tuple[float, float]]:
        return [
            timed(device, lambda: product(text, video, caption_video, args.chunk_size, which)) for product in products
        ]

    load = os.getloadavg()[0]
    first = time_products(0)
    before = reset_peak_memory(device)
    seconds, cpu_seconds = timed(
        device, lambda: evaluate_retrieval(text, video, caption_video, dsl=args.dsl, chunk_size=args.chunk_size)
    )
    peak = peak_memory(device) - before
    second = time_products(1)
    totals = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(first, second)]
    limit, limit_cpu = min(totals)  # the faster schedule, by wall time
    return {
        "videos": num_videos,
        "captions": len(text),
        "seconds": round(seconds, 3),
        "matmul_seconds": round(limit, 3),
        "ratio_to_matmul": round(seconds / limit, 3),
        "limit": RATIO_LIMIT,
        "cpu_seconds": round(cpu_seconds, 3),
        "matmul_cpu_seconds": round(limit_cpu, 3),
        "cpu_ratio_to_matmul": round(cpu_seconds / limit_cpu, 3),
        "matmul_gflops": round(2 * text.numel() * len(video) / limit / 1e9, 1),
        "peak_extra_mib": round(peak, 1),
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


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
    print(
        json.dumps(
            {
                "device": device_name(device),
                "dim": args.dim,
                "chunk_size": args.chunk_size,
                "dsl": args.dsl,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
