"""The training protocol's order of samples: the validation hold-out (twins together), each epoch's
(video, caption) samples, and their cut into contrastive batches. Nothing here touches a tensor."""

from __future__ import annotations

import numpy as np

from dgl.cache.read import CachedSplit
from dgl.views import SplitView


def twin_units(split: CachedSplit, videos: np.ndarray) -> list[list[int]]:
    """The videos as units: a video with its time-reversed twin where both are among `videos`, else alone."""
    present = set(videos.tolist())
    units, seen = [], set()
    for v in videos.tolist():
        if v in seen:
            continue
        twin = int(split.twins[v])
        unit = [v, twin] if twin in present and twin != v else [v]
        seen.update(unit)
        units.append(unit)
    return units


def train_val_views(split: CachedSplit, val_fraction: float, seed: int) -> tuple[SplitView, SplitView | None]:
    """Hold out about val_fraction of the training videos for validation, twins together, so that
    validation holds twin pairs like the test split and no video's reversal trains while it validates."""
    units = twin_units(split, np.arange(split.num_videos))
    order = np.random.default_rng(seed).permutation(len(units))
    target, held = int(round(split.num_videos * val_fraction)), []
    for i in order:
        if len(held) >= target:
            break
        held += units[i]
    held = np.array(sorted(held), dtype=np.int64)
    train = SplitView(split, np.setdiff1d(np.arange(split.num_videos), held))
    return train, (SplitView(split, held) if len(held) >= 2 else None)


Sample = tuple[int, int]  # (video index, caption index)


def _spread(groups: list[list[Sample]], rng: np.random.Generator) -> list[list[Sample]]:
    """Order units so that each video's n units get random times in the n equal parts of the epoch,
    so a video with many captions is spread over the epoch instead of filling its end (where no
    batch could hold two of them). `groups` holds each video's (or twin pair's) units."""
    timed = []
    for units in groups:
        times = (np.arange(len(units)) + rng.random(len(units))) / len(units)
        timed += [(t, k, unit) for k, (t, unit) in enumerate(zip(times.tolist(), units))]
    return [unit for _, _, unit in sorted(timed, key=lambda x: (x[0], x[1]))]


def epoch_samples(
    view: SplitView, captions: str, rng: np.random.Generator, sampler: str = "random"
) -> list[list[Sample]]:
    """One epoch's (video, caption) samples in training order, as units that share a batch.

    train.captions:
    - `all`, the papers' protocol (CLIP4Clip's expand_msrvtt_sentences; docs/method.md, "Input"): every
      caption once, spread over the epoch (`_spread`).
    - `one`: every video once, with one of its captions drawn at random.
    train.sampler:
    - `random`: every sample is its own unit; batches are random (the papers).
    - `twins`: a video and its time-reversed twin form one unit (their k-th captions, in random
      order, paired), so every batch holding one holds the other: each is the other's hard
      negative, which is what rewards a method for seeing frame order. Videos without a twin in
      the view stay single."""
    groups = view.split.captions_of()
    units = twin_units(view.split, view.videos) if sampler == "twins" else [[v] for v in view.videos.tolist()]
    units = [units[i] for i in rng.permutation(len(units))]
    if captions == "one":
        return [[(v, int(rng.choice(groups[v]))) for v in unit] for unit in units]
    per_group = []
    for unit in units:
        orders = [rng.permutation(groups[v]).tolist() for v in unit]
        count = max(len(o) for o in orders)
        per_group.append([[(v, o[k]) for v, o in zip(unit, orders) if k < len(o)] for k in range(count)])
    return _spread(per_group, rng)


def into_batches(units: list[list[Sample]], batch_size: int, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut units of samples into contrastive batches in order, never a video twice in one batch (the
    targets are the diagonal) and never a unit split: a unit that does not fit waits for the next
    batch. The last batch may be smaller, never a lone sample (it takes one from the batch before);
    every batch is trimmed to a multiple of `parts` (processes x sub-batches), so with one process
    and no accumulation every sample is used exactly once."""
    batches, waiting, i = [], [], 0
    while i < len(units) or waiting:
        batch, videos, still = [], set(), []

        def place(unit: list[Sample]) -> bool:
            unit_videos = {v for v, _ in unit}
            if len(batch) + len(unit) > batch_size or videos & unit_videos:
                return False
            batch.extend(unit)
            videos.update(unit_videos)
            return True

        for unit in waiting:
            if not place(unit):
                still.append(unit)
        waiting = still
        while len(batch) < batch_size and i < len(units):
            unit, i = units[i], i + 1
            if not place(unit):
                waiting.append(unit)
        batches.append(batch)
    if len(batches) > 1 and len(batches[-1]) == 1:
        lone = batches[-1][0][0]
        give = next((s for s in reversed(batches[-2]) if s[0] != lone), None)
        if give is not None and len(batches[-2]) > 2:
            batches[-2].remove(give)
            batches[-1].insert(0, give)
    trimmed = [np.array(b[: len(b) // parts * parts]) for b in batches]
    return [(b[:, 0], b[:, 1]) for b in trimmed if len(b) >= 2]
