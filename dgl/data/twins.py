"""Time-reversed twins: a video and the same frames played backwards, the synthetic benchmark's
probe of frame order (annotations name each video's twin; real datasets have none).

How a caption differs from its twin's decides what telling the pair apart takes: other words, or
the same words in another order. Training's validation, the evaluation and the backbone's text
diagnostic all split their numbers by it.
"""

from __future__ import annotations

from collections.abc import Sequence


def twin_wordings(texts: Sequence[str], caption_video: Sequence[int], twins: Sequence[int]) -> list[str]:
    """Per caption: `words` where it differs from every caption of its video's twin in its words
    ("moves up" / "moves down"), `order` where one of the twin's captions has the same words in another
    order ("from left to right" / "from right to left"), "" for a video without a twin. A text tower
    that reads words but not their order can tell only the first kind apart."""
    bags: dict[int, set[tuple[str, ...]]] = {}
    for text, video in zip(texts, caption_video):
        bags.setdefault(int(video), set()).add(tuple(sorted(text.split())))
    wordings = []
    for text, video in zip(texts, caption_video):
        twin = int(twins[int(video)])
        wordings.append(
            "" if twin < 0 else "order" if tuple(sorted(text.split())) in bags.get(twin, set()) else "words"
        )
    return wordings
