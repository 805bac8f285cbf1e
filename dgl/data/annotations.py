"""The common in-memory form of every dataset's annotations.

Each dataset adapter (MSR-VTT, VATEX, LSMDC, ActivityNet; the synthetic benchmark uses
MSR-VTT's own format) turns its published files into an `Annotations`; nothing after
this point knows which dataset it came from.

Video ids come from downloaded files and become file names in every later stage
(`<raw>/videos/<id>.mp4`, `<frames>/<id>.npy`), so each one is checked as the adapter reads it
(`video_id`): a plain file name, never a path. Every stage builds such a name with `id_path`,
which checks again, so no id can reach outside its folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from dgl.errors import UserError

# a separator, a control character, or a name that is all dots: what would make an id a path
_NOT_A_FILE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]|^\.*$")
_MAX_ID_BYTES = 200  # a file name (id + extension) must stay under the usual 255-byte limit


def is_plain_id(video_id: str) -> bool:
    """Is `video_id` usable as a file name in one folder (no separator, not `.`/`..`, no control character)?"""
    return (
        isinstance(video_id, str)
        and not _NOT_A_FILE_NAME.search(video_id)
        and len(video_id.encode("utf-8", "surrogatepass")) <= _MAX_ID_BYTES
    )


def video_id(value: object, source: Path) -> str:
    """`value` as a video id, read from annotation file `source`; one line naming both when it could
    name a path outside the dataset's folders."""
    text = str(value)
    if not is_plain_id(text):
        raise UserError(
            f"{source}: video id {text!r} is not a plain file name (a path separator, '..', a control "
            f"character or over {_MAX_ID_BYTES} bytes); the file is not the published one: replace it"
        )
    return text


def id_path(folder: Path, video_id: str, suffix: str) -> Path:
    """folder/<video_id><suffix>, refusing an id that would name anything outside `folder`."""
    if not is_plain_id(video_id):
        raise UserError(f"video id {video_id!r} is not a plain file name; it cannot name a file in {folder}")
    return Path(folder) / f"{video_id}{suffix}"


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
