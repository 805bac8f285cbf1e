"""Rehearse the real-data route at the paper's shapes on CPU, in minutes (`make rehearse`).

What a user does with MSR-VTT, VATEX or ActivityNet and CLIP weights, at a size a CPU runs. In a
temporary folder, a git copy of this working tree gets, per dataset, short videos rendered at
320x240 by the synthetic renderer and the pinned ffmpeg, written with the dataset's published
annotation files into data/manual/<dataset>/, as a user places a dataset fetched by hand, and a
ViT-B/32 with random weights saved as a local checkpoint for backbone.pretrained, under the name
README advises for OpenAI's weights in a file (`ViT-B-32-quickgelu`). Then the
dataset's paper recipe (experiments/recipes/<dataset>.yaml) runs as `dvc exp run`, with only the
epochs (1), the batch and the checkpoint changed: frames at 224 px re-encoded at 3 fps (12 per
video, 64 for ActivityNet), 32 or 64 tokens, the weights-only loading of the checkpoint,
training, evaluation (MSR-VTT's 1k-A list, VATEX's every-caption queries, ActivityNet's
paragraphs) and the MLflow run are the real ones. Each step's outputs are then checked against
what was written, and the models by what they compute: the backbone train and evaluate rebuild
gives the features of a reference build of the checkpoint, and the trained method rebuilt from
its files gives evaluate's R@1 again. A mismatch is one line, and the command exits with 2.

    python -m experiments.rehearse                                   # msrvtt (UPT and ULP), vatex, activitynet
    python -m experiments.rehearse --datasets msrvtt --keep /tmp/rh  # keep the folder to look inside
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgl.cli import entry_point
from dgl.data.adapters import dataset_format, name_of_test_split
from dgl.data.synthetic import encode_mp4
from dgl.data.synthetic_render import render_frames
from dgl.data.synthetic_scenes import Scene, plan_scenes
from dgl.errors import UserError
from dgl.frames.store import FrameStore
from dgl.settings import Params, SyntheticConfig
from dgl.typed_yaml import build, flatten, read_yaml
from experiments.recipe import applied, command, overrides

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "ViT-B-32-quickgelu"  # OpenAI's ViT-B/32 in a local file (README, "Real data")
WIDTH, HEIGHT = 320, 240  # a web video's size: the renderer's square frames, cut to 4:3
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class Video:
    video_id: str
    split: str  # train | test
    scenes: tuple[Scene, ...]  # one per event, played one after the other
    seconds: float  # per scene

    @property
    def duration(self) -> float:
        return len(self.scenes) * self.seconds

    def captions(self) -> list[str]:
        return self.scenes[0].captions()


Texts = dict[str, list[str]]  # split -> the captions (queries) its cache must hold


# --- the published annotation formats (dgl/data/adapters.py reads them) ------------------------


def _write_msrvtt(folder: Path, videos: list[Video]) -> Texts:
    """CLIP4Clip's release: every caption in MSRVTT_data.json, the 9k train list, and the 1k-A test
    list (JSFusion): one caption per test video, the only test queries."""
    entries = [
        {
            "category": i % 20,
            "url": f"https://www.youtube.com/watch?v=rehearse{i:03d}",
            "video_id": v.video_id,
            "start time": 0.0,
            "end time": v.duration,
            "split": v.split,
            "id": i,
        }
        for i, v in enumerate(videos)
    ]
    captions = [(v.video_id, c) for v in videos for c in v.captions()]
    sentences = [{"caption": c, "video_id": v, "sen_id": i} for i, (v, c) in enumerate(captions)]
    info = {"contributor": "dgl rehearsal", "data_created": "2016-04-01 12:00:00", "version": "1.0"}
    (folder / "MSRVTT_data.json").write_text(json.dumps({"info": info, "videos": entries, "sentences": sentences}))
    train = [v for v in videos if v.split == "train"]
    test = [v for v in videos if v.split == "test"]
    (folder / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v.video_id}\n" for v in train))
    rows = [
        f"ret{i},msr{v.video_id.removeprefix('video')},{v.video_id},{v.captions()[0]}\n" for i, v in enumerate(test)
    ]
    (folder / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + "".join(rows))
    return {"train": [c for v in train for c in v.captions()], "test": [v.captions()[0] for v in test]}


def _write_vatex(folder: Path, videos: list[Video]) -> Texts:
    """VATEX's official English captions as fetched by hand: training set (train), validation set (test);
    every caption of a video is a query."""
    for split, name in (("train", "vatex_training_v1.0.json"), ("test", "vatex_validation_v1.0.json")):
        entries = [{"videoID": v.video_id, "enCap": v.captions(), "chCap": []} for v in videos if v.split == split]
        (folder / name).write_text(json.dumps(entries))
    return {split: [c for v in videos if v.split == split for c in v.captions()] for split in ("train", "test")}


def _write_activitynet(folder: Path, videos: list[Video]) -> Texts:
    """ActivityNet Captions: one sentence per event with its timestamps; a video's paragraph is the query."""
    texts: Texts = {"train": [], "test": []}
    for split, name in (("train", "train.json"), ("test", "val_1.json")):
        items = {}
        for v in videos:
            if v.split == split:
                sentences = [scene.captions()[0] for scene in v.scenes]
                timestamps = [[i * v.seconds, (i + 1) * v.seconds] for i in range(len(sentences))]
                items[v.video_id] = {"duration": v.duration, "timestamps": timestamps, "sentences": sentences}
                texts[split].append(" ".join(sentences))
        (folder / name).write_text(json.dumps(items))
    return texts


@dataclass(frozen=True)
class Dataset:
    """One dataset's rehearsal: its published layout at a reduced size, and its recipe's runs."""

    train_videos: int
    test_videos: int  # even: the renderer's test scenes come in pairs
    captions: int  # per scene: MSR-VTT's and VATEX's videos have several; ActivityNet's a sentence per event
    events: int  # scenes per video
    seconds: float  # per scene
    fps: int
    batch_size: int  # the recipe's global batch, made small
    generators: tuple[str, ...]  # DGL generators to run; the recipe's own first
    video_id: Callable[[int], str]
    videos_folder: str  # where the videos go under data/manual/<dataset>/, as the dataset's archive has them
    write: Callable[[Path, list[Video]], Texts]


def _youtube_id(n: int) -> str:
    return f"rH-{n:04d}_x9k"  # 11 characters, with YouTube's '-' and '_'


DATASETS: dict[str, Dataset] = {
    "msrvtt": Dataset(
        train_videos=4,
        test_videos=8,
        captions=2,
        events=1,
        seconds=8.0,
        fps=8,
        batch_size=4,
        generators=("upt", "ulp"),
        video_id=lambda n: f"video{n}",
        videos_folder="videos/all",
        write=_write_msrvtt,
    ),
    "vatex": Dataset(
        train_videos=2,  # with 2 captions each: one batch of 4, as `train.captions: all` makes it
        test_videos=4,
        captions=2,
        events=1,
        seconds=8.0,
        fps=8,
        batch_size=4,
        generators=("ulp",),
        video_id=lambda n: f"{_youtube_id(n)}_{10 * n:06d}_{10 * n + 8:06d}",
        videos_folder="videos",
        write=_write_vatex,
    ),
    "activitynet": Dataset(
        train_videos=2,
        test_videos=2,
        captions=1,
        events=3,
        seconds=8.0,
        fps=8,
        batch_size=2,
        generators=("upt",),
        video_id=lambda n: f"v_{_youtube_id(n)}",
        videos_folder="videos",
        write=_write_activitynet,
    ),
}


# --- the dataset a user places by hand ---------------------------------------------------------


def plan_videos(spec: Dataset, seed: int) -> tuple[list[Video], SyntheticConfig]:
    """The videos (train first), each of `spec.events` synthetic scenes of one split."""
    cfg = build(
        SyntheticConfig,
        {
            "seed": seed,
            "train_videos": spec.train_videos * spec.events,
            "test_videos": spec.test_videos * spec.events,
            "resolution": WIDTH,
            "fps": spec.fps,
            "seconds": spec.seconds,
            "captions_per_video": spec.captions,
            "held_out_fraction": 0.0,
        },
        "rehearsal",
    )
    videos: list[Video] = []
    planned = plan_scenes(cfg)
    for split in ("train", "test"):
        scenes = [s for s in planned if s.split == split]
        for i in range(0, len(scenes), spec.events):
            videos.append(Video(spec.video_id(len(videos)), split, tuple(scenes[i : i + spec.events]), spec.seconds))
    return videos, cfg


def render(video: Video, cfg: SyntheticConfig, path: Path) -> None:
    """Its scenes one after the other, cut from square to WIDTH x HEIGHT, as an H.264 mp4 (pinned ffmpeg)."""
    top = (WIDTH - HEIGHT) // 2
    frames = np.concatenate([render_frames(scene, cfg)[:, top : top + HEIGHT] for scene in video.scenes])
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(np.ascontiguousarray(frames), cfg.fps, path, "pinned")


def place_dataset(dataset: str, folder: Path) -> tuple[Texts, int]:
    """Videos and annotation files of `dataset` in `folder` (its data/manual/<dataset>/); returns the
    captions each split must end up with, and how many videos."""
    spec = DATASETS[dataset]
    videos, cfg = plan_videos(spec, seed=0)
    for video in videos:
        render(video, cfg, folder / spec.videos_folder / f"{video.video_id}.mp4")
    return spec.write(folder, videos), len(videos)


def save_random_backbone(path: Path) -> None:
    """A ViT-B/32 state dict with random weights, as `torch.save(model.state_dict())` writes real ones."""
    import open_clip
    import torch

    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # open_clip's warning that the weights are random: they are meant to be
    try:
        model = open_clip.create_model(BACKBONE, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    torch.save(model.state_dict(), path)


# --- the project, and DVC --------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    """Run `cmd` with its output in `log`; a failure is a UserError naming it, after the log's tail."""
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        print("\n".join(log.read_text().splitlines()[-LOG_TAIL_LINES:]), file=sys.stderr)
        raise UserError(
            f"rehearsal: `{' '.join(cmd[:5])} ...` failed (exit {code}); its output ends above, all of "
            f"it in {log} (kept with --keep DIR)"
        )


def copy_project(dest: Path, log: Path) -> None:
    """This working tree (tracked files and new ones git does not ignore) as a fresh git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode:
        raise UserError(
            f"{ROOT}: not a git working tree ({listed.stderr.strip()}); run `make setup`, which makes it one"
        )
    for relative in filter(None, listed.stdout.split("\0")):
        if (ROOT / relative).is_file():  # a deleted file stays listed until its deletion is committed
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, dest / relative)
    git = ["git", "-c", "user.name=rehearsal", "-c", "user.email=rehearsal@localhost"]
    _run(["git", "init", "-q"], dest, log)
    _run(git + ["add", "-A"], dest, log)
    _run(git + ["commit", "-qm", "rehearsal"], dest, log)


def stage_env() -> dict[str, str]:
    """This environment with this Python's tools first on PATH, and none of the user's MLflow or
    DVC settings: the rehearsal logs only to its own store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def recipe_keys(dataset: str, generator: str, checkpoint: Path) -> dict[str, object]:
    """The dataset's recipe with only the epochs, the batch and the weights changed."""
    spec = DATASETS[dataset]
    # VATEX's default test split is HGR's 1,500 videos, which a rehearsal of a few videos cannot hold
    split = {"data.vatex_split": "official_val"} if dataset == "vatex" else {}
    return {
        **overrides(dataset),
        **split,
        "model.dgl.generator": generator,
        "backbone.name": BACKBONE,
        "backbone.pretrained": str(checkpoint),
        "train.epochs": 1,
        "train.batch_size": spec.batch_size,
        "eval.batch_size": spec.batch_size,
    }


# --- what each step left, checked ---------------------------------------------------------------


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise UserError(f"rehearsal: {what}")


def check_data(project: Path, dataset: str, keys: dict, texts: Texts) -> list[str]:
    """download (placed by hand, nothing fetched), adapter, frames and tokens, against what was written."""
    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    _expect(manifest["downloads"] == {}, f"{dataset}: the download stage fetched {sorted(manifest['downloads'])}")
    cache, frames_dir = project / "data/cache", project / "data/frames"
    meta = json.loads((cache / "meta.json").read_text())
    sampling = json.loads((frames_dir / "sampling.json").read_text())
    skipped = json.loads((frames_dir / "skipped.json").read_text())["count"]
    num_frames, words = keys["frames.num_frames"], keys["preprocess.context_length"]
    candidates = sampling["train_candidates"]
    store = FrameStore(cache, "preprocess")
    _expect(
        skipped == 0 and sampling["num_frames"] == num_frames,
        f"{dataset}: frames: {skipped} skipped, {sampling['num_frames']} per video where the recipe says {num_frames}",
    )
    lines = [f"download     {len(manifest['files'])} files placed by hand in data/manual/{dataset}/, nothing fetched"]
    adapter, shapes = [], []
    for split in ("train", "test"):
        info = json.loads((cache / f"{split}.json").read_text())
        _expect(
            sorted(info["texts"]) == sorted(texts[split]),
            f"{dataset}: the {split} captions in the cache are "
            f"not the {len(texts[split])} written in {', '.join(dataset_format(dataset).files)}",
        )
        adapter.append(f"{split} {len(info['video_ids'])} videos / {len(info['texts'])} queries")
        rows = np.load(cache / f"{split}_rows.npy")
        first = store.read(rows[0])  # a video decoded from the cache's compressed store
        tokens = np.load(cache / f"{split}_tokens.npy", mmap_mode="r").shape
        per_video = num_frames * (candidates if split == "train" else 1)
        _expect(
            rows.shape == (len(info["video_ids"]), per_video)
            and first.shape == (per_video, 3, 224, 224)
            and tokens == (len(texts[split]), words),
            f"{dataset}: {split} frames {first.shape} of {rows.shape[0]} videos cached, tokens {tokens}: "
            f"not {per_video} frames at 224 and {words} tokens",
        )
        shapes.append(f"{split} {rows.shape[0]} x {first.shape}, tokens {tokens}")
    shards = [frames_dir / name for name in os.listdir(frames_dir) if name.endswith(".bin")]
    _expect(
        store.codec.name == keys["frames.codec"]
        and all(os.stat(shard).st_ino == os.stat(cache / shard.name).st_ino for shard in shards),
        f"{dataset}: the cache's frames are not the frames stage's {keys['frames.codec']} shards, linked",
    )
    kib = sum(shard.stat().st_size for shard in shards) / len(store.index) / 1024
    lines.append(f"adapter      {dataset_format(dataset).test_split}: {', '.join(adapter)}, as written")
    lines.append(
        f"frames       {num_frames} per video at {keys['frames.reencode_fps']:g} fps, short side "
        f"{keys['frames.size']}, train x{candidates} candidates, {keys['frames.codec']} "
        f"{kib:.1f} KiB a frame, one copy (cache linked): {'; '.join(shapes)}"
    )
    lines.append(f"preprocess   {meta['image_size']} px crops, {meta['context_length']}-token captions")
    return lines


def check_backbone(project: Path, checkpoint: Path) -> str:
    """The backbone train and evaluate rebuild from models/backbone computes what the checkpoint does
    in a reference build with QuickGELU (OpenAI's activation): features on a fixed input, not tensors."""
    import open_clip
    import torch

    from dgl.models.backbone import load_backbone

    rebuilt, info = load_backbone(project / "models/backbone")
    logging.disable(logging.WARNING)  # open_clip's warning that the weights are random: loaded next
    try:
        reference = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    finally:
        logging.disable(logging.NOTSET)
    reference.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 4 - 2
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a man is cooking", "two dogs play in the snow"])
    with torch.no_grad():
        got = [rebuilt.eval().encode_image(images), rebuilt.encode_text(tokens)]
        want = [reference.eval().encode_image(images), reference.encode_text(tokens)]
    diff = max((g - w).abs().max().item() for g, w in zip(got, want))
    _expect(
        info["name"] == BACKBONE
        and info["pretrained"] == str(checkpoint)
        and all(torch.allclose(g, w, rtol=1e-4, atol=1e-5) for g, w in zip(got, want)),
        f"models/backbone ({info['name']}, {info['pretrained']}) does not compute what {checkpoint} does with "
        f"QuickGELU: features differ by up to {diff:.3g}",
    )
    return (
        f"backbone     {BACKBONE} from the local checkpoint (weights_only), rebuilt from its record: image and "
        f"text features equal a QuickGELU reference build's (max difference {diff:.1e})"
    )


def check_trained(project: Path, dataset: str) -> str:
    """The method train saved, rebuilt from models/trained as evaluate rebuilds it, ranks the test
    captions as evaluate did: its t2v R@1 recomputed here equals metrics.json's."""
    import torch

    from dgl.artifacts import load_trained
    from dgl.cache.read import CachedSplit
    from dgl.evaluation import evaluate_view
    from dgl.views import SplitView

    params = build(Params, read_yaml(project / "params.yaml"))
    split = CachedSplit.load(project / "data/cache", "test")
    method, _ = load_trained(project / "models/trained", project / "models/backbone", params.model, split.num_frames)
    result = evaluate_view(
        method,
        SplitView(split, np.arange(split.num_videos)),
        torch.device("cpu"),
        params.eval.batch_size,
        dsl=params.eval.dsl,
        chunk_size=params.eval.chunk_size,
    )
    metrics = json.loads((project / "metrics.json").read_text())
    again = round(result.metrics["t2v_R1"], 4)
    _expect(
        again == metrics["t2v_R1"],
        f"{dataset}: the trained method rebuilt from models/trained gives t2v R@1 "
        f"{again}, evaluate wrote {metrics['t2v_R1']}",
    )
    return f"trained      rebuilt from models/trained: t2v R@1 {again} recomputed, as evaluate wrote it"


def check_results(project: Path, dataset: str, name: str, keys: dict, texts: Texts) -> list[str]:
    """train and evaluate: metrics.json; the MLflow run, FINISHED, with the params and the metrics."""
    import mlflow

    params = build(Params, read_yaml(project / "params.yaml"))
    history = json.loads((project / "plots/train.json").read_text())
    metrics = json.loads((project / "metrics.json").read_text())
    recall = [f"{d}_{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "MdR", "MnR")]
    _expect(len(history) == 1 and np.isfinite(history[0]["train_loss"]), f"{name}: plots/train.json: {history}")
    test_split = name_of_test_split(dataset, params.data.vatex_split)
    _expect(
        all(k in metrics for k in recall)
        and metrics["test_split"] == test_split
        and metrics["test_captions"] == len(texts["test"]),
        f"{name}: metrics.json lacks the recipe's metrics: {metrics}",
    )
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'") if experiment else []
    _expect(len(runs) == 1, f"{name}: {len(runs)} MLflow runs of that name in {project / 'mlflow.db'}, not 1")
    run = runs[0]
    logged = flatten(params)  # MLflow logs str() of each value
    wrong = {k: run.data.params.get(k) for k in keys if run.data.params.get(k) != str(logged[k])}
    t2v_r1 = round(run.data.metrics.get("test/t2v_R1", -1), 4)  # metrics.json rounds to 4 places
    _expect(
        run.info.status == "FINISHED" and not wrong and t2v_r1 == metrics["t2v_R1"],
        f"{name}: MLflow run {run.info.run_id} is {run.info.status}, test/t2v_R1 {t2v_r1}, "
        f"params differing from the recipe: {wrong}",
    )
    return [
        f"train        1 epoch, loss {history[0]['train_loss']:.4f}, {metrics['trainable_params']:,} trainable "
        f"parameters (DGL-{keys['model.dgl.generator'].upper()})",
        f"evaluate     {metrics['test_split']}: {metrics['test_videos']} videos, "
        f"{metrics['test_captions']} queries, t2v R@1 {metrics['t2v_R1']}, v2t R@1 {metrics['v2t_R1']}",
        f"mlflow       run {name!r} {run.info.status}: {len(run.data.params)} params, "
        f"{len(run.data.metrics)} metrics, test/t2v_R1 = {run.data.metrics['test/t2v_R1']}",
    ]


# --- the rehearsal -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def say(self, what: str) -> None:
        now = time.perf_counter()
        print(f"[{now - self.start:6.1f}s] {what} ({now - self.last:.1f}s)", flush=True)
        self.last = now

    def note(self, what: str) -> None:
        print(f"{'':10}{what}", flush=True)


def rehearse(work: Path, datasets: list[str]) -> None:
    clock = Clock()
    project, checkpoint, logs = work / "project", work / "checkpoints" / f"{BACKBONE}-random.pt", work / "logs"
    for folder in (project, checkpoint.parent, logs):
        folder.mkdir(parents=True)
    copy_project(project, logs / "git.log")
    clock.say(f"project copied from {ROOT} into {project} (git, one commit)")
    save_random_backbone(checkpoint)
    clock.say(f"{BACKBONE} with random weights saved as {checkpoint} ({checkpoint.stat().st_size / 2**20:.0f} MiB)")
    env = stage_env()
    for dataset in datasets:
        texts, count = place_dataset(dataset, project / "data/manual" / dataset)
        clock.say(
            f"{dataset}: {count} videos rendered at {WIDTH}x{HEIGHT} with its annotation files "
            f"in data/manual/{dataset}/"
        )
        for generator in DATASETS[dataset].generators:
            keys, name = recipe_keys(dataset, generator, checkpoint), f"{dataset}-{generator}"
            build(Params, applied(read_yaml(project / "params.yaml"), keys))
            _run(command(keys, name, queue=False), project, logs / f"{name}.log", env)
            clock.say(f"{name}: `dvc exp run` of the {dataset} recipe (1 epoch, batch {keys['train.batch_size']})")
            for line in check_data(project, dataset, keys, texts) + [
                check_backbone(project, checkpoint),
                check_trained(project, dataset),
            ]:
                clock.note(line)
            for line in check_results(project, dataset, name, keys, texts):
                clock.note(line)
    clock.say(f"rehearsal passed: {', '.join(datasets)}")


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--datasets",
        nargs="+",
        choices=list(DATASETS),
        default=list(DATASETS),
        metavar="DATASET",
        help=f"which to rehearse (default: all of {', '.join(DATASETS)})",
    )
    ap.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR (new or empty) and keep it: the project, its experiments and mlflow.db, logs",
    )
    args = ap.parse_args()
    if args.keep is None:
        with tempfile.TemporaryDirectory(prefix="dgl-rehearse-") as work:
            rehearse(Path(work), args.datasets)
        return
    if args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
        raise UserError(f"--keep {args.keep}: not an empty folder; give a new or empty one")
    args.keep.mkdir(parents=True, exist_ok=True)
    rehearse(args.keep.resolve(), args.datasets)


if __name__ == "__main__":
    main()
