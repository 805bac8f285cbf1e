"""The synthetic text-video benchmark: coloured shapes that stay, move, change, appear and pass.

An image-text model knows colours and shapes but not time. Every order-sensitive video of the
test split, and of the training split, has a time-reversed twin (the same frames backwards) whose
captions say the opposite ("ends on the right" / "ends on the left"), so a model that ignores
frame order cannot tell the pair apart, and training can use each twin as the other's hard
negative (train.sampler=twins). Videos are drawn with PIL, encoded to H.264 mp4 by ffmpeg and annotated in
MSR-VTT's own format, so every later stage reads them exactly as it reads real data.

Words, caption templates and layout numbers live in synthetic_vocab.yaml. This module holds
the config, the plan (which videos exist and what they show), one renderer per kind of event,
and the writer. Everything is seeded: the same config gives the same bytes.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import itertools
import json
import multiprocessing
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import yaml
from PIL import Image, ImageDraw

from dgl.checksums import file_checksums, write_manifest
from dgl.cli import progress_bar
from dgl.errors import UserError
from dgl.ffmpeg import ffmpeg_exe, toolchain
from dgl.settings import SyntheticConfig
from dgl.typed_yaml import build

VOCAB_PATH = Path(__file__).with_name("synthetic_vocab.yaml")
KEY = "data.synthetic"
# Independent random streams drawn from one seed, so that e.g. changing the train size does not
# change which combinations are held out.
HELD_OUT_STREAM, PLAN_STREAM, IMAGE_STREAM = 0, 1, 2


def check_vocabulary(cfg: SyntheticConfig) -> None:
    """What params alone cannot check: the vocabulary must describe enough distinct scenes."""
    fewest = min(len(spec["templates"]) for spec in vocab()["kinds"].values())
    if cfg.captions_per_video > fewest:
        raise UserError(
            f"params: {KEY}.captions_per_video = {cfg.captions_per_video} exceeds the {fewest} "
            f"templates of a kind; use at most {fewest}"
        )
    for category, kind, needed, available in _test_demand(cfg.test_videos):
        if needed > available:
            raise UserError(
                f"params: {KEY}.test_videos = {cfg.test_videos} needs {needed} distinct '{kind}' scenes "
                f"(category {category}) but the vocabulary describes only {available}; lower test_videos"
            )


@functools.cache
def vocab() -> dict[str, Any]:
    """synthetic_vocab.yaml: colours, shapes, backgrounds, layout, categories, kinds, images."""
    return yaml.safe_load(VOCAB_PATH.read_text())


# --- what a video shows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """The words of a scene: what a caption names. colour2/shape2 only for two-colour or two-object kinds."""

    colour: str
    shape: str
    background: str
    colour2: str = ""
    shape2: str = ""


@dataclass(frozen=True)
class Scene:
    """One video: its look, what happens (kind, played forwards or reversed), and its layout seed."""

    category: str
    kind: str
    reversed: bool  # frames played backwards, described by the kind's reversed_templates
    look: Look
    layout_seed: int  # positions, sizes and timings; twins share it
    template_order: tuple[int, ...]  # which paraphrase templates, in order; twins share it
    split: str = ""
    video_id: str = ""
    twin: str | None = None

    def templates(self) -> list[str]:
        spec = vocab()["kinds"][self.kind]
        return spec["reversed_templates"] if self.reversed else spec["templates"]

    def captions(self) -> list[str]:
        templates = self.templates()
        return [templates[i].format(**dataclasses.asdict(self.look)) for i in self.template_order]

    def description(self) -> str:
        """The first template's caption: equal descriptions mean indistinguishable captions."""
        return self.templates()[0].format(**dataclasses.asdict(self.look))

    def combos(self) -> set[tuple[str, str, str]]:
        """(colour, shape, event) combinations this video shows."""
        return _combos(self.look, self.category)


def _combos(look: Look, category: str) -> set[tuple[str, str, str]]:
    combos = {(look.colour, look.shape, category)}
    if look.colour2:
        combos.add((look.colour2, look.shape2 or look.shape, category))
    return combos


def order_sensitive(kind: str) -> bool:
    return "reversed_templates" in vocab()["kinds"][kind]


def slot_values(slots: str) -> list[dict[str, str]]:
    colours, shapes = list(vocab()["colours"]), list(vocab()["shapes"])
    if slots == "one_object":
        return [dict(colour=c, shape=s) for c, s in itertools.product(colours, shapes)]
    if slots == "two_colours":  # unordered: a->b reversed is b->a, so b->a is not a new description
        colour_pairs = itertools.combinations(colours, 2)
        return [dict(colour=a, colour2=b, shape=s) for (a, b), s in itertools.product(colour_pairs, shapes)]
    if slots == "two_objects":
        return [
            dict(colour=a, shape=s, colour2=b, shape2=t)
            for (a, b), s, t in itertools.product(itertools.permutations(colours, 2), shapes, shapes)
        ]
    raise ValueError(f"synthetic_vocab.yaml: unknown slots {slots!r}")


@functools.cache
def looks(kind: str) -> tuple[Look, ...]:
    """Every distinguishable look of a kind; a test split draws from these without replacement."""
    values = slot_values(vocab()["kinds"][kind]["slots"])
    return tuple(Look(background=b, **v) for v, b in itertools.product(values, vocab()["backgrounds"]))


def held_out_combos(cfg: SyntheticConfig) -> frozenset[tuple[str, str, str]]:
    """The (colour, shape, event) combinations that only test videos show: the same share per event."""
    rng = np.random.default_rng([cfg.seed, HELD_OUT_STREAM])
    pairs = list(itertools.product(vocab()["colours"], vocab()["shapes"]))
    count = round(cfg.held_out_fraction * len(pairs))
    return frozenset(
        (*pairs[i], category) for category in vocab()["categories"] for i in rng.permutation(len(pairs))[:count]
    )


# --- the plan: which videos exist --------------------------------------------------------------


def _largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` in proportion to `weights`; ties go to the name listed first."""
    whole = sum(weights.values())
    exact = {name: total * w / whole for name, w in weights.items()}
    counts = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(weights, key=lambda name: counts[name] - exact[name])
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def _category_weights() -> dict[str, float]:
    return {name: spec["weight"] for name, spec in vocab()["categories"].items()}


def _test_units(test_videos: int) -> dict[str, int]:
    """Test units per category; a unit is two videos: a twin pair, or two order-blind videos."""
    return _largest_remainder(test_videos // 2, _category_weights())


def _units_per_kind(category: str, units: int) -> dict[str, int]:
    kinds = vocab()["categories"][category]["kinds"]
    return {kind: len(range(i, units, len(kinds))) for i, kind in enumerate(kinds)}


def _looks_per_unit(kind: str) -> int:
    return 1 if order_sensitive(kind) else 2


def _test_demand(test_videos: int) -> list[tuple[str, str, int, int]]:
    """(category, kind, looks needed, looks available) for a test split of this size."""
    return [
        (category, kind, units * _looks_per_unit(kind), len(looks(kind)))
        for category, category_units in _test_units(test_videos).items()
        for kind, units in _units_per_kind(category, category_units).items()
    ]


def _scene(
    category: str, kind: str, reversed_: bool, look: Look, rng: np.random.Generator, cfg: SyntheticConfig
) -> Scene:
    n_templates = len(vocab()["kinds"][kind]["templates"])
    return Scene(
        category=category,
        kind=kind,
        reversed=reversed_,
        look=look,
        layout_seed=int(rng.integers(2**32)),
        template_order=tuple(int(i) for i in rng.permutation(n_templates)[: cfg.captions_per_video]),
    )


def _plan_train(cfg: SyntheticConfig, rng: np.random.Generator) -> list[list[Scene]]:
    """Train units: an order-sensitive scene with its reversed twin (so that training can reward
    order: train.sampler=twins puts both in one batch), or one order-blind scene. Any look whose
    combos are not held out; repeats allowed. A category's odd last video has no twin."""
    held_out = held_out_combos(cfg)
    units: list[list[Scene]] = []
    for category, count in _largest_remainder(cfg.train_videos, _category_weights()).items():
        kinds = vocab()["categories"][category]["kinds"]
        while count > 0:
            kind = kinds[rng.integers(len(kinds))]
            allowed = [look for look in looks(kind) if not _combos(look, category) & held_out]
            look = allowed[rng.integers(len(allowed))]
            first = _scene(category, kind, order_sensitive(kind) and bool(rng.integers(2)), look, rng, cfg)
            pair = order_sensitive(kind) and count >= 2
            units.append([first, dataclasses.replace(first, reversed=not first.reversed)] if pair else [first])
            count -= len(units[-1])
    return [units[i] for i in rng.permutation(len(units))]


def _plan_test(cfg: SyntheticConfig, rng: np.random.Generator) -> list[list[Scene]]:
    """Test units: a scene with its reversed twin, or two order-blind scenes; no description twice."""
    units: list[list[Scene]] = []
    for category, category_units in _test_units(cfg.test_videos).items():
        for kind, kind_units in _units_per_kind(category, category_units).items():
            available = looks(kind)
            picked = [available[i] for i in rng.permutation(len(available))[: kind_units * _looks_per_unit(kind)]]
            if order_sensitive(kind):
                for look in picked:
                    first = _scene(category, kind, bool(rng.integers(2)), look, rng, cfg)
                    units.append([first, dataclasses.replace(first, reversed=not first.reversed)])
            else:
                for pair in zip(picked[::2], picked[1::2]):
                    units.append([_scene(category, kind, False, look, rng, cfg) for look in pair])
    return [units[i] for i in rng.permutation(len(units))]


def plan_scenes(cfg: SyntheticConfig) -> list[Scene]:
    """All scenes, train then test, with ids video0, video1, ... and twins pointing at each other."""
    check_vocabulary(cfg)
    rng = np.random.default_rng([cfg.seed, PLAN_STREAM])
    scenes: list[Scene] = []
    for split, units in (("train", _plan_train(cfg, rng)), ("test", _plan_test(cfg, rng))):
        for unit in units:
            ids = [f"video{len(scenes) + i}" for i in range(len(unit))]
            twins = ids[::-1] if len(unit) == 2 and order_sensitive(unit[0].kind) else [None] * len(unit)
            scenes += [dataclasses.replace(s, split=split, video_id=v, twin=t) for s, v, t in zip(unit, ids, twins)]
    return scenes


# --- renderers: what each kind looks like over time --------------------------------------------


class Sprite(NamedTuple):
    """One object in one frame; x, y, radius in shares of the frame side (y downwards)."""

    shape: str
    colour: str
    x: float
    y: float
    radius: float


Layout = dict[str, Any]
Renderer = Callable[[Look, Layout, np.random.Generator, np.ndarray], list[list[Sprite]]]


def _uniform(rng: np.random.Generator, low_high: list[float]) -> float:
    return float(rng.uniform(*low_high))


def _near_centre(layout: Layout, rng: np.random.Generator) -> tuple[float, float]:
    jitter = layout["centre_jitter"]
    return 0.5 + float(rng.uniform(-jitter, jitter)), 0.5 + float(rng.uniform(-jitter, jitter))


def _track(layout: Layout, rng: np.random.Generator) -> tuple[float, float]:
    """Start and end of a motion from the low to the high coordinate."""
    jitter = layout["track_jitter"]
    low, high = layout["track"]
    return low + float(rng.uniform(-jitter, jitter)), high + float(rng.uniform(-jitter, jitter))


def _still(look: Look, layout: Layout, rng: np.random.Generator, progress: np.ndarray) -> list[list[Sprite]]:
    x, y = _near_centre(layout, rng)
    radius = _uniform(rng, layout["radius"])
    return [[Sprite(look.shape, look.colour, x, y, radius)] for _ in progress]


def _move_right(look: Look, layout: Layout, rng: np.random.Generator, progress: np.ndarray) -> list[list[Sprite]]:
    _, y = _near_centre(layout, rng)
    start, end = _track(layout, rng)
    radius = _uniform(rng, layout["radius"])
    return [[Sprite(look.shape, look.colour, start + (end - start) * p, y, radius)] for p in progress]


def _move_up(look: Look, layout: Layout, rng: np.random.Generator, progress: np.ndarray) -> list[list[Sprite]]:
    x, _ = _near_centre(layout, rng)
    top, bottom = _track(layout, rng)
    radius = _uniform(rng, layout["radius"])
    return [[Sprite(look.shape, look.colour, x, bottom + (top - bottom) * p, radius)] for p in progress]


def _recolour(look: Look, layout: Layout, rng: np.random.Generator, progress: np.ndarray) -> list[list[Sprite]]:
    x, y = _near_centre(layout, rng)
    radius = _uniform(rng, layout["radius"])
    switch = _uniform(rng, layout["switch_at"])
    return [[Sprite(look.shape, look.colour if p < switch else look.colour2, x, y, radius)] for p in progress]


def _grow(look: Look, layout: Layout, rng: np.random.Generator, progress: np.ndarray) -> list[list[Sprite]]:
    x, y = _near_centre(layout, rng)
    small, large = _uniform(rng, layout["small_radius"]), _uniform(rng, layout["large_radius"])
    return [[Sprite(look.shape, look.colour, x, y, small + (large - small) * p)] for p in progress]


def _appear(look: Look, layout: Layout, rng: np.random.Generator, progress: np.ndarray) -> list[list[Sprite]]:
    x, y = _near_centre(layout, rng)
    radius = _uniform(rng, layout["radius"])
    appear_at = _uniform(rng, layout["appear_at"])
    return [[Sprite(look.shape, look.colour, x, y, radius)] if p >= appear_at else [] for p in progress]


def _pass_right(look: Look, layout: Layout, rng: np.random.Generator, progress: np.ndarray) -> list[list[Sprite]]:
    """colour2 shape2 stays near the centre; colour shape passes it, above or below, left to right."""
    x, y = _near_centre(layout, rng)
    side = layout["pair_gap"] / 2 * (1 if rng.integers(2) else -1)
    start, end = _track(layout, rng)
    still_radius, mover_radius = _uniform(rng, layout["pair_radius"]), _uniform(rng, layout["pair_radius"])
    still = Sprite(look.shape2, look.colour2, x, y - side, still_radius)
    return [
        [still, Sprite(look.shape, look.colour, start + (end - start) * p, y + side, mover_radius)] for p in progress
    ]


RENDERERS: dict[str, Renderer] = {
    "still": _still,
    "move_right": _move_right,
    "move_up": _move_up,
    "recolour": _recolour,
    "grow": _grow,
    "appear": _appear,
    "pass_right": _pass_right,
}


# --- painting ----------------------------------------------------------------------------------


def _checker(size: int, cells: int) -> np.ndarray:
    cell = np.arange(size) * cells // size  # (S,)
    return (cell[:, None] + cell[None, :]) % 2  # (S, S) index into the background's colours


PATTERNS: dict[str, Callable[..., np.ndarray]] = {
    "plain": lambda size: np.zeros((size, size), dtype=np.int64),
    "checker": _checker,
}


@functools.cache
def background_image(name: str, size: int) -> np.ndarray:
    """(S, S, 3) uint8 background, read-only."""
    spec = dict(vocab()["backgrounds"][name])
    colours = np.array(spec.pop("colours"), dtype=np.uint8)  # (K, 3)
    pattern = PATTERNS[spec.pop("pattern")]
    image = colours[pattern(size, **spec)]
    image.setflags(write=False)
    return image


def paint(background: str, sprites: list[Sprite], size: int) -> np.ndarray:
    """One (S, S, 3) uint8 frame: the background with the sprites drawn in order."""
    image = Image.fromarray(background_image(background, size).copy())
    draw = ImageDraw.Draw(image)
    for sprite in sprites:
        x, y, r = sprite.x * size, sprite.y * size, sprite.radius * size
        fill = tuple(vocab()["colours"][sprite.colour])
        polygon = vocab()["shapes"][sprite.shape].get("polygon")
        if polygon is None:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon([(x + r * u, y + r * v) for u, v in polygon], fill=fill)
    return np.asarray(image)


def render_frames(scene: Scene, cfg: SyntheticConfig) -> np.ndarray:
    """The raw frames of a scene, (T, S, S, 3) uint8; a reversed scene is its forward frames backwards."""
    rng = np.random.default_rng(scene.layout_seed)
    progress = np.linspace(0.0, 1.0, cfg.frames)  # (T,)
    timeline = RENDERERS[scene.kind](scene.look, vocab()["layout"], rng, progress)
    frames = np.stack([paint(scene.look.background, sprites, cfg.resolution) for sprites in timeline])
    return np.ascontiguousarray(frames[::-1]) if scene.reversed else frames


# --- encoding and writing ----------------------------------------------------------------------


def encode_mp4(frames: np.ndarray, fps: int, path: Path, ffmpeg: str = "pinned") -> None:
    """Encode (T, H, W, 3) uint8 RGB frames to an H.264 mp4, byte-identical run to run for one ffmpeg
    build: one encoder thread (x264's output depends on its thread count) and no timestamps.
    Lossless (-qp 0, on the 4:2:0 frames): a time-reversed twin then decodes to exactly its video's
    frames backwards, so a method blind to frame order gives the twins one feature, not two that
    differ by codec noise (lossy x264 frames of a twin pair differ by up to 45 levels)."""
    _, height, width, _ = frames.shape
    command = [
        ffmpeg_exe(ffmpeg), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-an", "-c:v", "libx264", "-preset", "veryfast", "-qp", "0", "-pix_fmt", "yuv420p", "-threads", "1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        str(path),
    ]  # fmt: skip
    result = subprocess.run(command, input=frames.tobytes(), capture_output=True)
    stderr = result.stderr.decode(errors="replace").strip()
    if result.returncode != 0 or stderr or not path.is_file():
        reason = stderr.splitlines()[-1] if stderr else "no output file"
        raise UserError(
            f"{path}: ffmpeg failed to encode (exit {result.returncode}: {reason}); "
            f"check that {command[0]} runs and has libx264"
        )


def _write_video(job: tuple[Scene, SyntheticConfig, Path, str]) -> str:
    scene, cfg, videos_dir, ffmpeg = job
    encode_mp4(render_frames(scene, cfg), cfg.fps, videos_dir / f"{scene.video_id}.mp4", ffmpeg)
    return scene.video_id


def _render_all(scenes: list[Scene], cfg: SyntheticConfig, videos_dir: Path, workers: int, progress: bool,
                ffmpeg: str) -> None:
    jobs = [(scene, cfg, videos_dir, ffmpeg) for scene in scenes]
    bar = functools.partial(progress_bar, progress, total=len(jobs), desc="synthetic videos", unit="video")
    if workers <= 1:
        for _ in bar(map(_write_video, jobs)):
            pass
        return
    context = multiprocessing.get_context("spawn")  # safe whatever threads the caller has started
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for _ in bar(pool.map(_write_video, jobs, chunksize=max(1, len(jobs) // (8 * workers)))):
            pass


def _write_annotations(scenes: list[Scene], out_dir: Path) -> None:
    """MSRVTT_data.json (+ event and twin per video) and MSR-VTT's train and JSFusion test lists."""
    videos = [{"video_id": s.video_id, "split": s.split, "event": s.category, "twin": s.twin} for s in scenes]
    captions = [(s.video_id, caption) for s in scenes for caption in s.captions()]
    sentences = [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(captions)]
    (out_dir / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}, indent=1) + "\n")
    with open(out_dir / "MSRVTT_train.9k.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_id"])
        writer.writerows([s.video_id] for s in scenes if s.split == "train")
    with open(out_dir / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        test_captions = [(s.video_id, c) for s in scenes if s.split == "test" for c in s.captions()]
        for i, (video_id, caption) in enumerate(test_captions):
            writer.writerow([f"ret{i}", video_id.replace("video", "msr"), video_id, caption])


def generate(out_dir: Path, cfg: SyntheticConfig, *, ffmpeg: str, workers: int = 2, progress: bool = True) -> None:
    """Render the benchmark into the empty folder `out_dir`: videos/, annotations, manifest.json
    (every file's sha256 and the ffmpeg that encoded the videos)."""
    cfg = build(SyntheticConfig, dataclasses.asdict(cfg), KEY)  # bounds and validate(), also for hand-built configs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: not empty; the synthetic dataset is written into an empty folder")
    scenes = plan_scenes(cfg)
    (out_dir / "videos").mkdir()
    _render_all(scenes, cfg, out_dir / "videos", workers, progress, ffmpeg)
    _write_annotations(scenes, out_dir)
    write_manifest(out_dir, {"toolchain": toolchain(ffmpeg), "files": file_checksums(out_dir)})
