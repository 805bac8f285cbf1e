"""The synthetic benchmark's plan: which videos exist and what each shows (dgl/data/synthetic.py
writes them, dgl/data/synthetic_render.py draws their frames).

A scene is a kind of event (a renderer), played forwards or reversed, with a look (colours, shapes,
background: the words its captions name) and a layout seed. Train videos come as units: an
order-sensitive scene with its time-reversed twin, or one order-blind scene; test units are a twin
pair or two order-blind scenes, no description twice, and some (colour, shape, event) combinations
are held out of training. Words, caption templates and layout numbers live in synthetic_vocab.yaml.
Everything is seeded: the same config gives the same plan.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dgl.errors import UserError
from dgl.settings import SyntheticConfig

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
