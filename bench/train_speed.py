"""Benchmark: training speed and memory of DGL (ULP) against full fine-tuning, with and without
activation checkpointing (train.activation_checkpointing), the data path from the cache to the
device, and the size of each method's saved model; ViT-B/32 (architecture only, random weights),
12 frames at 224 px.

Run from the repository root: `python -m bench.train_speed [--batch N] [--steps N] [--device cpu|cuda]`
(a few minutes on 2 CPU cores with the defaults). Prints JSON; every figure that has a target stands
beside its limit under "checks" ({"value", "limit", "within"}).

runs: each method trains in a child process (so its peak memory is its own): per checkpointing
setting one warm-up step, then `--steps` timed steps of the real training step
(dgl.train.contrastive_step, gradient clipping, AdamW) on random frames and captions, the settings
alternating step by step (off, on, on, off, ...: both see the same machine load); on CUDA under
train.amp=auto (bf16). Per method and setting:
  activation_mib_per_video    what autograd keeps for the backward pass, exactly: every saved tensor's
                              storage once, parameters left out (bench.memory.saved_for_backward)
  step_s                      median wall time of a step; videos_per_s = batch / step_s
  process_peak_mib_per_video  the process's peak resident size during a step (VmHWM) over its size
                              before, per video: on CPU the activations with what the backward pass
                              adds to them (one block's recomputation, the gradients: for full
                              fine-tuning 471 MiB whatever the batch); on CUDA host memory only
  cuda_peak_mib_per_video     CUDA only: the allocator's peak during a step over what was allocated before
and checkpointing_step_time_ratio: the median over adjacent pairs of steps of on over off.
memory_ratio_full_over_dgl: full fine-tuning's activation memory per video over DGL's, both without
checkpointing.
data_path: a cache of --data-batch videos of the training layout (12 segments x 3 candidate frames,
224 px, a frame store in --codec), read in batches of --data-batch videos (the paper's per-GPU batch:
MSR-VTT 512 = 128 x 4 GPUs) into normalised float frames on the device, in batches per second:
  before             the synchronous read of a memory-mapped uint8 array (fancy indexing, normalise on
                     the CPU, then .to(device)), as the cache held frames before the frame store
  after_synchronous  dgl.cache.prefetch.device_batches without prefetching (CUDA: uint8 to the GPU, normalised there)
  after_prefetch     the same, one batch read ahead in a background thread (what training uses)
beside the model's steps per second at that batch (DGL, its per-video speed from `runs`), and the
share of a step's wall time the training thread waits for data, measured in a short DGL training
loop at --batch on the same cache, before (synchronous) and after (prefetching).
saved_mib: the size of models/trained/weights.pt (trainable weights only) per method; zeroshot saves none.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from bench.memory import device_name, peak_memory, pick_device, reset_peak_memory, saved_for_backward
from dgl.artifacts import TRAINED_WEIGHTS, save_trained
from dgl.cache.prefetch import device_batches
from dgl.cache.read import CachedSplit
from dgl.frames.store import CODECS, FrameStore, codec_from, default_threads, write_arrays
from dgl.models.backbone import build_clip
from dgl.models.loss import contrastive_loss
from dgl.models.methods import build_method
from dgl.optim import adamw
from dgl.param_counts import PAPER_MODEL
from dgl.settings import METHOD_NAMES, load_group
from dgl.train import contrastive_step, parallel_features, pick_precision

BACKBONE, FRAMES, SIZE, CANDIDATES = "ViT-B-32", 12, 224, 3
METHODS = ("dgl", "full")
SETTINGS = {"checkpointing_off": False, "checkpointing_on": True}
LIMITS = {"activation": 0.3, "step_time": 1.4, "wait_share": 0.1, "data_over_model": 1.0}


def method_on(name: str, clip: torch.nn.Module):
    return build_method(name, clip, load_group("model", {**PAPER_MODEL, "method": name}), num_frames=FRAMES)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One method's real training step (AdamW, clipping) on `device`."""

    def __init__(self, name: str, device: torch.device):
        torch.manual_seed(0)
        self.device = device
        self.method = method_on(name, build_clip(BACKBONE)).to(device)
        self.params = [(n, p) for n, p in self.method.named_parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, 1e-4, 0.2)
        self.precision = pick_precision("auto", device)
        self.model = parallel_features(self.method, device)
        self.method.train()

    def step(self, tokens: torch.Tensor, frames: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        contrastive_step(self.model, tokens, frames, self.method.logit_scale, precision=self.precision)
        self.precision.step(self.optimizer, [p for _, p in self.params], 1.0)

    def activation_bytes(self, tokens: torch.Tensor, frames: torch.Tensor) -> int:
        """What one step's forward pass leaves autograd to keep for the backward pass."""
        with saved_for_backward(exclude=self.method.parameters()) as saved:
            with self.precision.autocast():
                text, video = self.model(tokens, frames)
            loss = contrastive_loss(text, video, self.method.logit_scale())
        del loss, text, video  # frees the graph without a backward pass
        return saved["bytes"]


def random_batch(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = open_clip.get_tokenizer(BACKBONE)(
        [f"a video of thing number {i}" for i in range(batch)], context_length=32
    ).to(device)
    return tokens, torch.randn(batch, FRAMES, 3, SIZE, SIZE, device=device)


def measure(name: str, batch: int, steps: int, device: torch.device) -> dict:
    """One method, both checkpointing settings, in this process."""
    trainer = Trainer(name, device)
    tokens, frames = random_batch(batch, device)
    mib = 2**20 * batch
    out = {}
    for label, on in SETTINGS.items():
        trainer.method.encoder.activation_checkpointing = on
        trainer.step(tokens, frames)  # warm-up: kernels, allocator, optimizer state
        out[label] = {"activation_mib_per_video": round(trainer.activation_bytes(tokens, frames) / mib, 1)}
    seconds = {label: [] for label in SETTINGS}
    process = {label: [] for label in SETTINGS}
    allocator = {label: [] for label in SETTINGS}
    cpu = torch.device("cpu")
    for i in range(steps):
        for label in SETTINGS if i % 2 == 0 else reversed(SETTINGS):  # off, on, then on, off: no drift
            trainer.method.encoder.activation_checkpointing = SETTINGS[label]
            trainer.optimizer.zero_grad(set_to_none=True)  # the last step's gradients leave the window
            synchronize(device)
            rss = reset_peak_memory(cpu)
            allocated = reset_peak_memory(device) if device.type == "cuda" else 0.0
            start = time.perf_counter()
            trainer.step(tokens, frames)
            synchronize(device)
            seconds[label].append(time.perf_counter() - start)
            process[label].append(peak_memory(cpu) - rss)
            if device.type == "cuda":
                allocator[label].append(peak_memory(device) - allocated)
    out["checkpointing_step_time_ratio"] = round(
        statistics.median(on / off for on, off in zip(seconds["checkpointing_on"], seconds["checkpointing_off"])), 3
    )
    for label in SETTINGS:
        step_s = statistics.median(seconds[label])
        out[label].update(
            {
                "step_s": round(step_s, 3),
                "videos_per_s": round(batch / step_s, 3),
                "process_peak_mib_per_video": round(max(process[label]) / batch, 1),
            }
        )
        if device.type == "cuda":
            out[label]["cuda_peak_mib_per_video"] = round(max(allocator[label]) / batch, 1)
    return out


# ---- the data path --------------------------------------------------------------------------------


def write_cache(folder: Path, videos: int, codec: str = "raw") -> Path:
    """A training split's frames, (V, T * K, 3, S, S) uint8, twice: memory-mapped as the cache held
    them before the frame store (pixels.npy, for `legacy_read`), and as a frame store in `codec`."""
    pixels = np.lib.format.open_memmap(
        folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(videos, FRAMES * CANDIDATES, 3, SIZE, SIZE)
    )
    pattern = np.arange(FRAMES * CANDIDATES * 3 * SIZE * SIZE, dtype=np.uint64).astype(np.uint8)
    for v in range(videos):
        pixels[v] = (pattern + v).reshape(pixels.shape[1:])
    pixels.flush()
    (folder / "store").mkdir()
    write_arrays(folder / "store", pixels, codec_from({"codec": codec, "quality": 90}))
    return folder


def cached_split(folder: Path) -> CachedSplit:
    store = FrameStore(folder / "store", "preprocess", default_threads())
    videos = len(store.videos)
    rows = np.stack([store.rows_of(str(v)) for v in range(videos)])
    tokens = open_clip.get_tokenizer(BACKBONE)(
        [f"a video of thing number {i}" for i in range(videos)], context_length=32
    )
    mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
    return CachedSplit(
        store=store,
        rows=rows,
        tokens=tokens,
        caption_video=torch.arange(videos),
        texts=[""] * videos,
        categories=["static"] * videos,
        twins=torch.full((videos,), -1),
        video_ids=[str(v) for v in range(videos)],
        mean=mean,
        std=std,
        candidates=CANDIDATES,
    )


def jobs_for(split: CachedSplit, batch: int, count: int, seed: int = 0) -> list:
    """`count` training batches of `batch` random videos, random candidate frames, their captions."""
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(count):
        videos = rng.permutation(split.num_videos)[:batch]
        jobs.append((videos, split.jitter(batch, rng), videos))
    return jobs


def legacy_read(
    pixels: np.ndarray, split: CachedSplit, videos: np.ndarray, picks: np.ndarray, device: torch.device
) -> torch.Tensor:
    """The read before device_batches, as it was: fancy indexing of the memory-mapped pixels,
    normalised on the CPU (three float arrays), then copied."""
    frame = np.arange(split.num_frames) * split.candidates + picks
    x = torch.from_numpy(np.ascontiguousarray(pixels[videos[:, None], frame])).float().div_(255)
    return ((x - split.mean[:, None, None]) / split.std[:, None, None]).to(device)


def data_rates(folder: Path, batch: int, count: int, device: torch.device) -> dict[str, float]:
    """Batches per second from the cache to normalised frames on the device, per path."""
    split, pixels = cached_split(folder), np.load(folder / "pixels.npy", mmap_mode="r")
    jobs = jobs_for(split, batch, count + 1)
    legacy_read(pixels, split, *jobs[0][:2], device)  # warm-up: page cache, allocator
    synchronize(device)
    start = time.perf_counter()
    for videos, picks, _ in jobs[1:]:
        legacy_read(pixels, split, videos, picks, device)
    synchronize(device)
    rates = {"before": count / (time.perf_counter() - start)}
    for label, prefetch in (("after_synchronous", 0), ("after_prefetch", 1)):
        start = time.perf_counter()
        with device_batches(split, jobs[1:], device, prefetch) as loader:
            for _ in loader:
                pass
        synchronize(device)
        rates[label] = count / (time.perf_counter() - start)
    return {k: round(v, 3) for k, v in rates.items()}


def wait_shares(path: Path, batch: int, steps: int, device: torch.device) -> dict:
    """A short DGL training loop on the cache at `batch`: the share of its wall time the training
    thread spends waiting for the next batch, reading synchronously (before) and prefetching (after)."""
    split = cached_split(path)
    trainer = Trainer("dgl", device)
    out = {}
    for label, prefetch in (("before", 0), ("after", 1)):
        jobs = jobs_for(split, batch, steps + 1, seed=prefetch)
        with device_batches(split, jobs[:1], device, 0) as warm:
            for frames, tokens in warm:
                trainer.step(tokens, frames)
        synchronize(device)
        start = time.perf_counter()
        with device_batches(split, jobs[1:], device, prefetch) as loader:
            for frames, tokens in loader:
                trainer.step(tokens, frames)
            synchronize(device)
            wall, waited = time.perf_counter() - start, loader.waited
        out[label] = {"wait_share": round(waited / wall, 4), "step_s": round(wall / steps, 3)}
    return out


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


def child(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.train_speed", *args]
    # A fixed mmap threshold makes glibc hand large freed blocks back, so the warm-up's activations
    # do not stay resident and hide the peak (as in tests/test_metrics.py's memory test).
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.splitlines()[-1])


def check(value: float, limit: float, at_least: bool = False, **about) -> dict:
    within = value >= limit if at_least else value <= limit
    return {"value": round(value, 3), "limit": limit, "within": within, **about}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=0, help="videos per training step; 0 = 2 on CPU, 32 on CUDA")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method and checkpointing setting")
    ap.add_argument(
        "--data-batch", type=int, default=128, help="videos per batch of the data path (the paper's per-GPU batch)"
    )
    ap.add_argument("--data-batches", type=int, default=3, help="timed batches per data path")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument(
        "--codec",
        choices=sorted(CODECS),
        default="raw",
        help="the data path's frame store (jpeg: quality 90; bench.disk measures the JPEG path on natural images)",
    )
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--child-wait", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = pick_device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 2)
    if args.child:
        print(json.dumps(measure(args.child, batch, args.steps, device)))
        return
    if args.child_wait:
        print(json.dumps(wait_shares(args.child_wait, batch, args.steps, device)))
        return
    common = ["--batch", str(batch), "--steps", str(args.steps), "--device", device.type]
    runs = {name: child(["--child", name, *common]) for name in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_cache(Path(tmp), max(args.data_batch, batch), args.codec)
        rates = data_rates(path, args.data_batch, args.data_batches, device)
        waits = child(["--child-wait", str(path), *common])
    dgl, full = runs["dgl"], runs["full"]
    model_steps = dgl["checkpointing_off"]["videos_per_s"] / args.data_batch  # at the data path's batch
    print(
        json.dumps(
            {
                "device": device_name(device),
                "backbone": BACKBONE,
                "batch": batch,
                "frames": FRAMES,
                "size": SIZE,
                "amp": str(pick_precision("auto", device).dtype or "off"),
                "runs": runs,
                "speedup_dgl_over_full": round(
                    dgl["checkpointing_off"]["videos_per_s"] / full["checkpointing_off"]["videos_per_s"], 2
                ),
                "memory_ratio_full_over_dgl": round(
                    full["checkpointing_off"]["activation_mib_per_video"]
                    / dgl["checkpointing_off"]["activation_mib_per_video"],
                    2,
                ),
                "process_peak_dgl_checkpointed_over_full": round(
                    dgl["checkpointing_on"]["process_peak_mib_per_video"]
                    / full["checkpointing_off"]["process_peak_mib_per_video"],
                    3,
                ),
                "data_path": {
                    "batch": args.data_batch,
                    "frames": FRAMES,
                    "candidates": CANDIDATES,
                    "size": SIZE,
                    "batches_per_s": rates,
                    "model_steps_per_s": round(model_steps, 5),
                    "wait": {"batch": batch, "steps": args.steps, **waits},
                },
                "checks": {
                    "dgl_over_full_activation": check(
                        dgl["checkpointing_on"]["activation_mib_per_video"]
                        / full["checkpointing_off"]["activation_mib_per_video"],
                        LIMITS["activation"],
                        compared="saved for backward per video: DGL with checkpointing over full "
                        "fine-tuning without (as users run it)",
                    ),
                    **(
                        {
                            "dgl_over_full_cuda_peak": check(
                                dgl["checkpointing_on"]["cuda_peak_mib_per_video"]
                                / full["checkpointing_off"]["cuda_peak_mib_per_video"],
                                LIMITS["activation"],
                                compared="CUDA allocator peak per video, same pair",
                            )
                        }
                        if device.type == "cuda"
                        else {}
                    ),
                    "dgl_checkpointing_step_time": check(
                        dgl["checkpointing_step_time_ratio"],
                        LIMITS["step_time"],
                        compared="DGL's step time with checkpointing over without: "
                        "the median over adjacent pairs of steps",
                    ),
                    "data_wait_share": check(
                        waits["after"]["wait_share"],
                        LIMITS["wait_share"],
                        compared=f"share of a DGL training step's wall time waiting for data, "
                        f"prefetching, batch {batch}",
                    ),
                    "data_over_model_rate": check(
                        rates["after_prefetch"] / model_steps,
                        LIMITS["data_over_model"],
                        at_least=True,
                        compared=f"batches read per second over DGL steps per second at "
                        f"batch {args.data_batch}: at least 1 keeps up",
                    ),
                },
                "saved_mib": saved_sizes(),
            }
        )
    )


if __name__ == "__main__":
    main()
