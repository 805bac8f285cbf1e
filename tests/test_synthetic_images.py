"""The backbone's pretraining images: single frames whose captions say what one frame shows, never time."""

from __future__ import annotations

import itertools

import numpy as np

from dgl.data.synthetic_images import _random_kind, render_static_images, static_caption_classes
from dgl.data.synthetic_scenes import plan_scenes, vocab
from dgl.pretrain import UNKNOWN_WORDS
from helpers import group

DEFAULT = group("data.synthetic")


def words_of(captions) -> set[str]:
    return {w for c in captions for w in c.split()}


def test_static_images_and_their_captions_agree():
    images, captions, contents = render_static_images(600, seed=5, resolution=32)
    assert images.shape == (600, 32, 32, 3) and images.dtype == np.uint8
    assert len(captions) == len(contents) == 600
    again, same_captions, same_contents = render_static_images(600, seed=5, resolution=32)
    assert np.array_equal(images, again) and captions == same_captions and contents == same_contents
    spec = vocab()["images"]
    for image, caption, (background, objects) in zip(images, captions, contents):
        assert f"{background} background" in caption
        if not objects:
            assert any(w in caption for w in ("empty", "nothing"))
            assert (image == image[0, 0]).all(axis=-1).mean() > 0.3  # only the background
        for colour, shape, size, vertical, horizontal in objects:
            assert f"{colour} {shape}" in caption
            assert (image == vocab()["colours"][colour]).all(axis=-1).any()
            if size:
                assert any(f"{w} {colour} {shape}" in caption for w in spec["size_words"][size])
            if "middle" not in (vertical, horizontal):
                assert f"in the {vertical} {horizontal}" in caption
            elif vertical != "middle" or horizontal != "middle":
                place = vertical if vertical != "middle" else horizontal
                assert any(p in caption for p in spec["where"][place])
    sizes = {o[2] for _, objects in contents for o in objects}
    places = {(o[3], o[4]) for _, objects in contents for o in objects}
    assert sizes == {"small", "", "large"} and len(places) == 9  # every size class and place is shown
    assert any(not objects for _, objects in contents) and any(len(objects) == 2 for _, objects in contents)


def test_static_captions_never_speak_of_time_but_know_the_words_of_end_states():
    _, captions, _ = render_static_images(2000, seed=1, resolution=32)
    static = words_of(captions)
    time_words = {
        "moves",
        "turns",
        "grows",
        "shrinks",
        "disappears",
        "vanishes",
        "leaves",
        "into",
        "then",
        "until",
        "ends",
        "passes",
        "from",
        "becomes",
        "rises",
        "falls",
    }
    assert not static & time_words
    video = words_of(c for s in plan_scenes(DEFAULT) for c in s.captions())
    for needed in (
        "top",
        "bottom",
        "left",
        "right",
        "up",
        "down",
        "large",
        "small",
        "big",
        "tiny",
        "little",
        "huge",
        "empty",
        "nothing",
        "appears",
        "shows",
        "holds",
    ):
        assert needed in static and needed in video, needed
    assert set(vocab()["colours"]) | set(vocab()["shapes"]) | set(vocab()["backgrounds"]) <= static


def test_static_caption_classes_label_what_is_drawn():
    images, labels, classes, keys = static_caption_classes(60, seed=1, resolution=32)
    assert images.shape == (60, 32, 32, 3) and labels.shape == (60,)
    assert keys == list(itertools.product(vocab()["colours"], vocab()["shapes"], vocab()["backgrounds"]))
    assert len(classes) == len(set(classes)) == len(keys)
    for image, label in zip(images, labels):
        colour, shape, background = keys[label]
        assert classes[label] == f"a {colour} {shape} on a {background} background"
        assert (image == vocab()["colours"][colour]).all(axis=-1).any()  # the named colour is on screen


def test_static_captions_fit_the_tiny_clip_context():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    _, captions, _ = render_static_images(2000, seed=2, resolution=32)
    # room for the unknown words that pretraining inserts (dgl.pretrain.with_unknown_words)
    assert max(len(tokenizer.encode(c)) + 2 for c in captions) <= 32 - UNKNOWN_WORDS


def test_frames_of_one_video_come_in_runs_that_differ_only_in_place_size_or_presence():
    _, _, contents = render_static_images(400, seed=3, resolution=32, frames_per_video=4)
    runs = [contents[i : i + 4] for i in range(0, 400, 4)]
    differ = 0
    for run in runs:
        backgrounds = {background for background, _ in run}
        looks = {(colour, shape) for _, objects in run for colour, shape, *_ in objects}
        assert len(backgrounds) == 1
        assert len(looks) <= 4  # at most two objects, or one shape in two colours (recolour)
        differ += len(set(run)) > 1
    assert differ > len(runs) // 2  # most runs hold hard negatives


def test_empty_frames_sometimes_name_an_object_that_is_absent():
    _, captions, contents = render_static_images(3000, seed=4, resolution=32)
    empty = [c for c, (_, objects) in zip(captions, contents) if not objects]
    objects = [f"{c} {s}" for c in vocab()["colours"] for s in vocab()["shapes"]]
    naming = [c for c in empty if any(o in c for o in objects)]
    assert 0 < len(naming) < len(empty)
    assert all(("no " in c or "out of view" in c) and "empty" in c for c in naming)


def test_pretraining_draws_kinds_by_weight_and_the_zero_shot_check_uniformly():
    weights = vocab()["images"]["one_object_kinds"]
    rng = np.random.default_rng(0)
    weighted = [_random_kind(rng, False, weighted=True) for _ in range(6000)]
    uniform = [_random_kind(rng, False, weighted=False) for _ in range(6000)]
    total = sum(weights.values())
    for kind, weight in weights.items():
        assert abs(weighted.count(kind) / 6000 - weight / total) < 0.03, kind
        assert abs(uniform.count(kind) / 6000 - 1 / len(weights)) < 0.03, kind
    assert {_random_kind(rng, True, weighted=True) for _ in range(20)} == set(vocab()["images"]["two_object_kinds"])
