"""The synthetic benchmark's frames: one renderer per kind of event gives each frame's sprites, and
`paint` draws them with PIL on the scene's background (the plan: dgl/data/synthetic_scenes.py).
Seeded by the scene's layout seed: the same scene gives the same frames."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from dgl.data.synthetic_scenes import Look, Scene, vocab
from dgl.settings import SyntheticConfig

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
