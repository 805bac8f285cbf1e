"""Benchmark: the disk each stage keeps per frame and per dataset, every copy counted, and how fast
the frames decode.

Run from the repository root: `python -m bench.disk [--quality 90] [--gpu-step-s 0.5]` (about a
minute on 2 CPU cores). Prints JSON; every figure that has a target stands beside its limit under
"checks" ({"value", "limit", "within"}).

Content: natural photographs, the two sample images scikit-learn ships (`load_sample_images`: a
temple in China, a flower; 640x427), filmed by a panning camera: each video is a window of the
recipe's shape (320x240 for MSR-VTT, VATEX and LSMDC; 426x240, 16:9, for ActivityNet) moving across
one photo at 15 fps, encoded losslessly by the pinned ffmpeg (a lossy source would give smaller
JPEGs). Not synthetic flat shapes: these frames are as hard for JPEG as web video.

per_recipe: the real stages on those videos with the recipe's frames params (frames per video,
3 training candidates, 3 fps, 224 px, frames.codec jpeg at --quality): `dgl.frames.extract.extract_frames`
into data/frames, `dgl.cache.write.build_cache` into data/cache, then `dvc add` of data/raw, data/frames
and data/cache in a git + DVC repo with this project's `cache.type`; bytes are summed over distinct
inodes of data/ and .dvc/cache, so a linked file counts once and a copy twice.
  kib_per_frame_kept      per stored frame (training: all 3 candidates of a segment are stored):
                          the frames stage's folder, what the cache adds to it (its links add
                          nothing; its rows and tokens), what DVC's cache adds to data/
  kib_per_frame_after     their sum
  kib_per_frame_before    the layout before the frame store, computed from its uint8 array shapes:
                          frames at short side 224 (.npy), the cache's 224x224 crops, DVC copying both
projections: per dataset, stored frames = train videos x frames x 3 + test videos x frames, from the
published split sizes, times kib_per_frame_after; MSR-VTT's total adds its videos (about 7 GB, the
archive's size) once (data/raw, linked by DVC, measured above) and the archive in data/downloads/
as kept by the download stage, or deleted by hand once extracted (README, "Real data": its sha256
record stays, so a fetched-again copy is recognised); the check is on the latter.
decode: frames per second on one thread at 224 px, per JPEG quality and for raw frames (a copy from
the memory map), in the same run: per second of that thread's CPU time (one core's worth of work,
whatever else the machine runs) and per second of wall time (which a loaded machine lowers);
cores_per_gpu: frames of the paper's per-GPU batch (MSR-VTT: 128 videos x 12 frames) over one
core's rate and the stated GPU step time (--gpu-step-s, not measured here). data_wait: a short DGL
(ViT-B/32, random weights) training loop on CPU reading a JPEG store of these frames
(bench.train_speed --child-wait): the share of its wall time spent waiting for data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_sample_images

from dgl.cache.write import build_cache
from dgl.data.annotations import Annotations, Caption
from dgl.data.synthetic import encode_mp4
from dgl.frames.extract import extract_frames
from dgl.frames.store import FrameStore, JpegCodec, RawCodec, write_arrays
from dgl.settings import load_group

ROOT = Path(__file__).resolve().parents[1]
GB, KIB = 1e9, 1024
SIZE, CANDIDATES, FPS, SOURCE_FPS = 224, 3, 3, 15
# recipe: source shape (width, height), frames per video, published videos (train, test) and the
# projected limit of its derived data (GB; None: no limit set)
RECIPES = {
    "msrvtt": {"shape": (320, 240), "frames": 12, "videos": (9000, 1000), "limit_gb": 10},
    "vatex": {"shape": (320, 240), "frames": 12, "videos": (25991, 1500), "limit_gb": 30},
    "lsmdc": {"shape": (320, 240), "frames": 12, "videos": (101079, 1000), "limit_gb": None},
    "activitynet": {"shape": (426, 240), "frames": 64, "videos": (10009, 4917), "limit_gb": 60},
}
MSRVTT_VIDEOS_GB = 7.0  # the videos of MSR-VTT (the archive of CLIP4Clip's release is about this size)
LIMITS = {"kib_per_frame": 25, "msrvtt_total_over_archive": 2.5, "decode_per_core": 600, "wait_share": 0.1}
PAPER_BATCH_FRAMES = 128 * 12  # MSR-VTT's global batch of 512 on 4 GPUs, 12 frames each


def panning_video(photo: np.ndarray, width: int, height: int, seconds: float) -> np.ndarray:
    """(N, height, width, 3): a window sliding across `photo` (left to right, a little down) at SOURCE_FPS."""
    count = round(seconds * SOURCE_FPS)
    xs = np.linspace(0, photo.shape[1] - width, count).round().astype(int)
    ys = np.linspace(0, (photo.shape[0] - height) // 2, count).round().astype(int)
    return np.stack([photo[y : y + height, x : x + width] for x, y in zip(xs, ys)])


def check(value: float, limit: float, at_least: bool = False) -> dict:
    return {"value": round(value, 3), "limit": limit, "within": value >= limit if at_least else value <= limit}


def disk_bytes(*folders: Path) -> int:
    """Bytes of the files under `folders`, each inode once (a hard link is no copy)."""
    seen: dict[tuple[int, int], int] = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                seen[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(seen.values())


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


def measure_recipe(name: str, recipe: dict, quality: int, photos: list[np.ndarray], tmp: Path) -> dict:
    width, height = recipe["shape"]
    project = tmp / name
    raw = project / "data/raw"
    (raw / "videos").mkdir(parents=True)
    seconds = recipe["frames"] * CANDIDATES / FPS + 2  # every pick a distinct frame at 3 fps
    videos = {}
    for i, photo in enumerate(photos):
        encode_mp4(panning_video(photo, width, height, seconds), SOURCE_FPS, raw / "videos" / f"v{i}.mp4")
        videos[f"v{i}"] = f"videos/v{i}.mp4"
    annotations = Annotations(
        videos=videos, train=tuple(Caption(v, f"a camera pans over photo {v}") for v in videos), test=()
    )
    cfg = load_group(
        "frames",
        {
            "num_frames": recipe["frames"],
            "train_candidates": CANDIDATES,
            "size": SIZE,
            "reencode_fps": FPS,
            "codec": "jpeg",
            "jpeg_quality": quality,
            "workers": 1,
        },
        ROOT / "params.yaml",
    )
    for folder in ("frames", "cache"):
        (project / "data" / folder).mkdir()
    extract_frames(raw, annotations, project / "data/frames", cfg, ffmpeg="pinned", image_size=SIZE, progress=False)
    # the cache's test split needs a video: the first, as a test video would be (its centres)
    annotations = Annotations(videos=videos, train=annotations.train, test=annotations.train[:1])
    build_cache(annotations, project / "data/frames", project / "data/cache", backbone="ViT-B-32", context_length=32)
    frames = len(FrameStore(project / "data/frames", "frames").index)
    git_dvc = (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "config", "cache.type", dvc_cache_type()],
    )
    for cmd in git_dvc:
        run(cmd, project)
    run([sys.executable, "-m", "dvc", "add", "-q", "data/raw", "data/frames", "data/cache"], project)
    data, frames_dir, cache_dir = project / "data", project / "data/frames", project / "data/cache"
    kept = {
        "frames_stage": disk_bytes(frames_dir),
        "preprocess_adds": disk_bytes(frames_dir, cache_dir) - disk_bytes(frames_dir),
        "dvc_cache_adds": disk_bytes(data, project / ".dvc/cache") - disk_bytes(data),
    }
    short_side = (round(SIZE * width / height), SIZE)
    before = 2 * (short_side[0] * short_side[1] * 3 + SIZE * SIZE * 3)  # .npy frames + crops, each copied by DVC
    return {
        "source": f"{width}x{height}",
        "frames_stored": frames,
        "kib_per_frame_kept": {k: round(v / frames / KIB, 3) for k, v in kept.items()},
        "kib_per_frame_after": round(sum(kept.values()) / frames / KIB, 2),
        "kib_per_frame_before": round(before / KIB, 1),
    }


def dvc_cache_type() -> str:
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config["cache"]["type"].strip('"')


def natural_frames(photos: list[np.ndarray], count: int) -> np.ndarray:
    """(count, 3, 224, 224) crops of the photos at positions spread over them."""
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = (i * 37) % (photo.shape[0] - SIZE)
        x = (i * 53) % (photo.shape[1] - SIZE)
        crops.append(photo[y : y + SIZE, x : x + SIZE].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(crops))


def decode_rates(frames: np.ndarray, qualities: list[int], tmp: Path, seconds: float = 3.0) -> dict:
    """Frames per second on one thread, per codec, each timed for about `seconds`, in one run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for label, codec in [("raw", RawCodec())] + [(f"jpeg_q{q}", JpegCodec(q)) for q in qualities]:
            folder = tmp / f"decode_{label}"
            folder.mkdir()
            store, rows = write_arrays(folder, frames[None], codec)
            rows = rows.ravel()
            store.read(rows)  # warm-up: page cache
            done, start, cpu = 0, time.perf_counter(), time.thread_time()
            while time.perf_counter() - start < seconds:
                store.read(rows)  # on this thread (the store's threads: 1)
                done += len(rows)
            out[label] = {
                "frames_per_cpu_s": round(done / (time.thread_time() - cpu)),
                "frames_per_wall_s": round(done / (time.perf_counter() - start)),
                "kib_per_frame": round(disk_bytes(folder) / len(rows) / KIB, 2),
            }
    finally:
        torch.set_num_threads(threads)
    return out


def data_wait(frames: np.ndarray, quality: int, tmp: Path, steps: int) -> dict:
    """bench.train_speed's DGL loop (batch 2, CPU) on a JPEG store of natural frames (12 segments x 3)."""
    folder = tmp / "wait"
    (folder / "store").mkdir(parents=True)
    per_video = 12 * CANDIDATES
    videos = len(frames) // per_video
    write_arrays(
        folder / "store", frames[: videos * per_video].reshape(videos, per_video, *frames.shape[1:]), JpegCodec(quality)
    )
    cmd = [
        sys.executable,
        "-m",
        "bench.train_speed",
        "--child-wait",
        str(folder),
        "--batch",
        "2",
        "--steps",
        str(steps),
        "--device",
        "cpu",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", type=int, default=load_group("frames", {}, ROOT / "params.yaml").jpeg_quality)
    ap.add_argument(
        "--gpu-step-s",
        type=float,
        default=0.5,
        help="the GPU's DGL step time at the paper's per-GPU batch (stated, not measured here)",
    )
    ap.add_argument("--wait-steps", type=int, default=2, help="timed DGL steps of the data-wait loop")
    args = ap.parse_args()
    photos = list(load_sample_images().images)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per_recipe = {name: measure_recipe(name, recipe, args.quality, photos, tmp) for name, recipe in RECIPES.items()}
        frames = natural_frames(photos, 144)
        decode = decode_rates(frames, sorted({85, 90, 95, args.quality}), tmp)
        wait = data_wait(frames, args.quality, tmp, args.wait_steps)
    projections = {}
    for name, recipe in RECIPES.items():
        train, test = recipe["videos"]
        stored = (train * CANDIDATES + test) * recipe["frames"]
        after = stored * per_recipe[name]["kib_per_frame_after"] * KIB / GB
        before = stored * per_recipe[name]["kib_per_frame_before"] * KIB / GB
        projections[name] = {
            "videos": train + test,
            "frames_stored": stored,
            "derived_gb_before": round(before, 1),
            "derived_gb_after": round(after, 2),
            "limit_gb": recipe["limit_gb"],
        }
    rate = decode[f"jpeg_q{args.quality}"]["frames_per_cpu_s"]
    msrvtt_total = MSRVTT_VIDEOS_GB + projections["msrvtt"]["derived_gb_after"]  # archive deleted by hand
    checks = {
        f"{name}_kib_per_frame": check(r["kib_per_frame_after"], LIMITS["kib_per_frame"])
        for name, r in per_recipe.items()
    }
    checks |= {
        f"{name}_derived_gb": check(p["derived_gb_after"], p["limit_gb"])
        for name, p in projections.items()
        if p["limit_gb"] is not None
    }
    checks["msrvtt_total_over_archive"] = check(msrvtt_total / MSRVTT_VIDEOS_GB, LIMITS["msrvtt_total_over_archive"])
    checks["decode_frames_per_s_per_core"] = check(rate, LIMITS["decode_per_core"], at_least=True)
    checks["data_wait_share"] = check(wait["after"]["wait_share"], LIMITS["wait_share"])
    print(
        json.dumps(
            {
                "quality": args.quality,
                "cores": len(os.sched_getaffinity(0)),
                "load_average": os.getloadavg()[0],
                "dvc_cache_type": dvc_cache_type(),
                "per_recipe": per_recipe,
                "projections": projections,
                "msrvtt_total_gb": {
                    "videos": MSRVTT_VIDEOS_GB,
                    "derived": projections["msrvtt"]["derived_gb_after"],
                    "total_archive_deleted": round(msrvtt_total, 2),
                    "total_archive_kept": round(msrvtt_total + MSRVTT_VIDEOS_GB, 2),
                },
                "decode": decode,
                "cores_per_gpu": {
                    "frames_per_step": PAPER_BATCH_FRAMES,
                    "gpu_step_s": args.gpu_step_s,
                    "cores": round(PAPER_BATCH_FRAMES / args.gpu_step_s / rate, 1),
                },
                "data_wait": wait,
                "checks": checks,
            }
        )
    )


if __name__ == "__main__":
    main()
