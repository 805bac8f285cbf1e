"""The common in-memory form of every dataset's annotations.

Each dataset adapter (MSR-VTT, VATEX, LSMDC, ActivityNet; the synthetic benchmark uses
MSR-VTT's own format) turns its published files into an `Annotations`; nothing after
this point knows which dataset it came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caption:
    video_id: str
    text: str
    category: str = ""  # synthetic benchmark: static, motion, change, ...; "" for real data


@dataclass(frozen=True)
class Annotations:
    videos: dict[str, str]  # video id -> video file, relative to the raw dataset folder
    train: tuple[Caption, ...]
    test: tuple[Caption, ...]
    twins: dict[str, str] = field(default_factory=dict)  # video id -> its time-reversed twin

    def split(self, name: str) -> tuple[Caption, ...]:
        return {"train": self.train, "test": self.test}[name]

    def split_videos(self, name: str) -> list[str]:
        """Unique video ids of a split, in order of first appearance."""
        return list(dict.fromkeys(c.video_id for c in self.split(name)))
