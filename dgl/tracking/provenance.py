"""What a run ran: the git commit and uncommitted code of the tree a stage ran in, and the params
that differ from the committed params.yaml."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from dgl.typed_yaml import flatten

ABSENT = object()  # a key that one of two params mappings lacks (changed_params)


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def not_code(cwd: Path) -> list[str]:
    """What `dvc exp run` and the pipeline rewrite themselves, so not "dirty" code: params.yaml,
    dvc.lock and every output dvc.yaml declares (metrics.json, plots/...)."""
    paths = ["params.yaml", "dvc.lock"]
    try:
        stages = (yaml.safe_load((cwd / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        stages = {}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def git_state(cwd: Path) -> tuple[str, str] | None:
    """(commit, diff of the uncommitted code) of the git tree at `cwd`, or None outside git. The
    diff leaves out `not_code` and covers untracked files that git does not ignore; "" = clean."""
    head = _git(cwd, "rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    code = ["--", ".", *(f":(exclude,top){p}" for p in not_code(cwd))]
    diff = _git(cwd, "diff", "HEAD", *code).stdout
    for name in _git(cwd, "ls-files", "--others", "--exclude-standard", *code).stdout.splitlines():
        diff += _git(cwd, "diff", "--no-index", "--", "/dev/null", name).stdout  # exit code 1: differs
    return head.stdout.strip(), diff


def changed_params(current: dict, committed: dict | None) -> list[tuple[str, object, object]]:
    """(key, committed value, current value) of every flat key in which two params mappings differ;
    `ABSENT` stands for a key one of them lacks."""
    if not isinstance(committed, dict):
        return []
    old, new = flatten(committed), flatten(current)
    return [
        (k, old.get(k, ABSENT), new.get(k, ABSENT))
        for k in sorted(old.keys() | new.keys())
        if old.get(k, ABSENT) != new.get(k, ABSENT)
    ]


def committed_params(cwd: Path, path: str = "params.yaml") -> dict | None:
    """params.yaml as the commit the run started from has it: DVC's baseline under `dvc exp run`, else HEAD."""
    from dgl.typed_yaml import Yaml12Loader

    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    shown = _git(cwd, "show", f"{rev}:./{path}")
    try:
        return yaml.load(shown.stdout, Loader=Yaml12Loader) if shown.returncode == 0 else None
    except yaml.YAMLError:
        return None
