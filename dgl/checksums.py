"""File checksums and the manifest that records them (data/raw/<dataset>/manifest.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

MANIFEST = "manifest.json"


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_checksums(root: Path, progress: bool = False) -> dict[str, str]:
    """{path relative to `root` (POSIX): sha256} of every file below `root` but a manifest, in path order."""
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name != MANIFEST)
    bar = tqdm(files, desc="checksums", unit="file", disable=not progress)
    return {p.relative_to(root).as_posix(): sha256_of(p) for p in bar}


def write_manifest(root: Path, manifest: dict, sort_keys: bool = False) -> None:
    """`root`/manifest.json: `manifest` (usually with `file_checksums(root)` as "files"), one-space indent."""
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=sort_keys) + "\n")
