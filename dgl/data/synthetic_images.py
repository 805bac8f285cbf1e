"""Single frames with static captions: what the synthetic benchmark's image-text backbone learns from.

Each image is one moment of a random video of the benchmark, so it looks like a video frame; its
caption names what that frame shows (colours, shapes, background, where each object is, how large
it is, or that the background is empty) and never anything about time. The words for places and
sizes are the ones the video captions use for where a motion ends or what a change leads to, so
the backbone's text tower knows them the way CLIP knows words from images, without ever seeing
a video (synthetic_vocab.yaml, `images`).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from dgl.cli import progress_bar
from dgl.data.synthetic_render import RENDERERS, Sprite, paint
from dgl.data.synthetic_scenes import IMAGE_STREAM, Look, slot_values, vocab

# What a caption says of one object: colour, shape, size word class, vertical and horizontal place.
ObjectWords = tuple[str, str, str, str, str]


def _random_look(kind: str, background: str, rng: np.random.Generator) -> Look:
    values = slot_values(vocab()["kinds"][kind]["slots"])
    return Look(background=background, **values[rng.integers(len(values))])


def _random_kind(rng: np.random.Generator, two_objects: bool, weighted: bool) -> str:
    """A kind of video to take frames from: drawn by the vocabulary's weights, or uniformly (the
    zero-shot check, whose frame mix should not move with the pretraining's emphasis)."""
    kinds = vocab()["images"]["two_object_kinds" if two_objects else "one_object_kinds"]
    names = list(kinds)
    if not weighted:
        return names[rng.integers(len(names))]
    weights = np.array([kinds[k] for k in names], dtype=float)
    return names[rng.choice(len(names), p=weights / weights.sum())]


def _random_moments(
    rng: np.random.Generator, two_objects: bool, count: int, weighted: bool = True
) -> tuple[str, list[list[Sprite]]]:
    """A background and the sprites of `count` random moments of one random video (each none, one
    object, or two): the same look in other places, sizes or colours."""
    kind = _random_kind(rng, two_objects, weighted)
    backgrounds = list(vocab()["backgrounds"])
    look = _random_look(kind, backgrounds[rng.integers(len(backgrounds))], rng)
    return look.background, RENDERERS[kind](look, vocab()["layout"], rng, rng.uniform(0.0, 1.0, size=count))


def _random_frame(rng: np.random.Generator, two_objects: bool) -> tuple[str, list[Sprite]]:
    """A background and the sprites of one moment of a random video (none, one object, or two), its
    kind drawn uniformly."""
    background, (sprites,) = _random_moments(rng, two_objects, 1, weighted=False)
    return background, sprites


def _band(value: float, bounds: list[float], names: tuple[str, str, str]) -> str:
    low, high = bounds
    return names[0] if value < low else names[2] if value > high else names[1]


def object_words(sprite: Sprite) -> ObjectWords:
    """What a frame shows of one object, in the vocabulary's classes."""
    images = vocab()["images"]
    size = _band(sprite.radius, images["sizes"], ("small", "", "large"))
    vertical = _band(sprite.y, images["regions"], ("top", "middle", "bottom"))
    horizontal = _band(sprite.x, images["regions"], ("left", "middle", "right"))
    return sprite.colour, sprite.shape, size, vertical, horizontal


def _say_object(words: ObjectWords, rng: np.random.Generator) -> tuple[str, str]:
    """(object, where) phrases for one object, synonyms drawn at random."""
    images = vocab()["images"]
    colour, shape, size, vertical, horizontal = words

    def pick(options: list[str]) -> str:
        return options[rng.integers(len(options))]

    size_word = pick(images["size_words"][size]) if size else ""
    if vertical != "middle" and horizontal != "middle":
        where = f"in the {vertical} {horizontal}"
    else:
        where = pick(images["where"][vertical if vertical != "middle" else horizontal])
    return f"{size_word} {colour} {shape}", where


def _tidy(caption: str) -> str:
    return re.sub(r" +", " ", caption).strip()


def static_caption(background: str, sprites: list[Sprite], rng: np.random.Generator) -> str:
    """A caption naming each sprite (in random order) with its size and place, and the background.
    An empty frame's caption may name some object as absent ("no red square in view"), so that
    "empty" and "no" learn to outweigh an object's name (a video caption that says "disappears and
    leaves an empty background" names the object too)."""
    images = vocab()["images"]
    templates = {0: images["no_object"], 1: images["one_object"], 2: images["two_objects"]}[len(sprites)]
    words = {"background": background}
    if not sprites:
        colours, shapes = list(vocab()["colours"]), list(vocab()["shapes"])
        words["object"] = f"{colours[rng.integers(len(colours))]} {shapes[rng.integers(len(shapes))]}"
    for suffix, i in zip(("", "2"), rng.permutation(len(sprites))):
        words[f"object{suffix}"], words[f"where{suffix}"] = _say_object(object_words(sprites[i]), rng)
    return _tidy(templates[rng.integers(len(templates))].format(**words))


def render_static_images(
    n: int, seed: int, resolution: int, *, frames_per_video: int = 1, progress: bool = False
) -> tuple[np.ndarray, list[str], list[tuple]]:
    """n single frames (n, S, S, 3) uint8 of random video moments, each with a static caption, and
    what each caption says: (background, (ObjectWords, ...)) with the objects sorted; frames with
    the same content are paraphrases of each other.

    Frames come in runs of `frames_per_video` moments of one video (random moments, in random
    order: never a clip), so that a batch made of whole runs holds the same objects in other
    places and sizes, and only the words for place and size tell their captions apart."""
    rng = np.random.default_rng([seed, IMAGE_STREAM])
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    captions, contents = [], []
    bar = progress_bar(progress, total=n, desc="static images", unit="image", mininterval=0.5)
    while len(captions) < n:
        two_objects = rng.random() < vocab()["images"]["two_objects_share"]
        background, moments = _random_moments(rng, two_objects, min(frames_per_video, n - len(captions)))
        for sprites in moments:
            images[len(captions)] = paint(background, sprites, resolution)
            captions.append(static_caption(background, sprites, rng))
            contents.append((background, tuple(sorted(object_words(s) for s in sprites))))
            bar.update()
    bar.close()
    return images, captions, contents


def static_caption_classes(n: int, seed: int, resolution: int) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple]]:
    """A zero-shot check for the backbone: n one-object frames, their class, and the class captions.

    Returns images (n, S, S, 3) uint8, labels (n,) int64 indexing classes, classes: one caption
    per (colour, shape, background), from the first one-object image template without size or
    place, and keys: each class's (colour, shape, background).
    """
    template = vocab()["images"]["one_object"][0]
    keys = list(itertools.product(vocab()["colours"], vocab()["shapes"], vocab()["backgrounds"]))
    classes = [_tidy(template.format(object=f"{c} {s}", where="", background=b)) for c, s, b in keys]
    rng = np.random.default_rng([seed, IMAGE_STREAM])
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    i = 0
    while i < n:
        background, sprites = _random_frame(rng, two_objects=False)
        if len(sprites) != 1:  # an empty frame of an `appear` video has no class
            continue
        images[i] = paint(background, sprites, resolution)
        labels[i] = keys.index((sprites[0].colour, sprites[0].shape, background))
        i += 1
    return images, labels, classes, keys
