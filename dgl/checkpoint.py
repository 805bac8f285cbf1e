"""Resumable training: after every epoch the train stage saves what it needs to go on exactly where
it stopped (trainable weights, optimizer, scheduler, loss scaler, RNG states, history, MLflow run
id) to models/checkpoints/train.pt, and removes it once its outputs are written.

It is not a DVC output on purpose: DVC leaves undeclared files alone, which is all resuming needs,
whereas a declared output must exist after the stage, so the checkpoint (for `full` on ViT-B/32
about 1.5 GB with Adam's moments) would stay on disk for good and be cached or committed by
`dvc exp run`. It lives under /models/, which git ignores.

A checkpoint is used only by a run with the same fingerprint: the params that change what training
computes (groups data, frames, preprocess, model, train, less the speed-only keys) and the
backbone's sha256. Anything else is never loaded: no run will resume it, so the train stage ends
its MLflow run (KILLED: its process was killed) and removes it, with a one-line notice. The `params`
stage does the same for a checkpoint of other params whenever params.yaml changes, before DVC reruns
`train` or restores it from its run cache (pipelines/params.py): so a killed training leaves no
orphan checkpoint nor a run stuck in RUNNING. A training killed before its first checkpoint leaves
only `<checkpoint>.run`, its run's id, written as the run starts: both stages end that run alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from dgl.errors import disk_full
from dgl.files import binary_output
from dgl.typed_yaml import flatten

GROUPS = ("ffmpeg", "data", "frames", "preprocess", "model", "train")
# These change only speed, or where processes run: train.batch_size is the global batch whatever the
# processes, machines and sub-batches.
SPEED_ONLY = {
    "frames.workers",
    "train.threads",
    "train.nproc",
    "train.accum_steps",
    "train.activation_checkpointing",
    "train.nnodes",
    "train.rdzv_endpoint",
    "train.dist_timeout",
}


def params_fingerprint(params) -> str:
    relevant = {k: v for k, v in flatten(params).items() if k.split(".")[0] in GROUPS and k not in SPEED_ONLY}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(params, backbone_sha256: str) -> str:
    """`<params_fingerprint>:<backbone sha256>`: the first part alone says whether params could resume it."""
    return f"{params_fingerprint(params)}:{backbone_sha256}"


class Checkpoint:
    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.abandoned = False  # `load` found a checkpoint that no run will resume
        self.abandoned_run_id: str | None = None  # and the MLflow run it names
        self.run_path = run_marker(self.path)

    def load(self, verbose: bool = True) -> dict | None:
        """The saved state when it belongs to this run, else None. A checkpoint of other params or
        another backbone, or an unreadable one, is `abandoned`: the caller ends its MLflow run
        (`abandoned_run_id`, dgl.tracking.runs.end_abandoned_run), then removes it."""
        state, reason = _read(self.path, mmap=False)
        if state is None and reason is None:
            self.abandoned_run_id = _marked_run(self.run_path)  # a training killed before its first checkpoint
            self.abandoned = self.abandoned_run_id is not None
            return None
        weights = state.get("weights") if state is not None else None
        bad = non_finite(weights) if isinstance(weights, dict) else None
        if bad is not None:  # resuming it would only end in a NaN loss
            reason = f"its weights hold NaN or inf (e.g. {bad})"
        elif state is not None and state.get("fingerprint") == self.fingerprint:
            if verbose:
                print(f"{self.path}: resuming after epoch {state['epoch']}", file=sys.stderr)
            return state
        self.abandoned, self.abandoned_run_id = True, _run_id(state)
        if verbose:
            print(
                f"{self.path}: {reason or 'made with other params or another backbone'}; ignored, training "
                "starts afresh",
                file=sys.stderr,
            )
        return None

    def save(self, state: dict) -> None:
        """Write to a sibling file, then rename: a kill mid-write, or a full disk, leaves the previous
        checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".partial")
        try:
            with binary_output(tmp) as f:  # a full disk is an OSError (ENOSPC)
                torch.save({**state, "fingerprint": self.fingerprint}, f)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            full = disk_full(e, self.path, "the previous checkpoint is kept")
            if full:
                raise full from None
            raise
        os.replace(tmp, self.path)

    def claim(self, run_id: str) -> None:
        """Note the MLflow run this training logs to, before any checkpoint names it."""
        self.run_path.parent.mkdir(parents=True, exist_ok=True)
        self.run_path.write_text(run_id + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.run_path.unlink(missing_ok=True)


def run_marker(path: Path) -> Path:
    """Beside the checkpoint: the id of the MLflow run of the training that writes it."""
    return path.with_name(path.name + ".run")


def _marked_run(marker: Path) -> str | None:
    try:
        run_id = marker.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return run_id or None


def non_finite(state: dict) -> str | None:
    """The name of the first floating-point tensor of `state` that holds NaN or inf, else None."""
    return next(
        (
            name
            for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
        ),
        None,
    )


def _read(path: Path, mmap: bool = True) -> tuple[dict | None, str | None]:
    """(state, None), (None, why it is unreadable), or (None, None) when there is no file. `mmap`
    maps the tensors instead of reading them: what names a checkpoint costs little even when it is large."""
    if not path.exists():
        return None, None
    try:  # a foreign or damaged file: never unpickle more than tensors
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(state, dict):
        return None, "unreadable (not a checkpoint)"
    return state, None


def _run_id(state: dict | None) -> str | None:
    run_id = (state or {}).get("mlflow_run_id")
    return run_id if isinstance(run_id, str) and run_id else None


def abandoned_by(path: Path, params) -> tuple[bool, str | None]:
    """Whether the checkpoint at `path` is one that `params` cannot resume (made with other params, or
    unreadable), and the MLflow run it names. One these params may resume is not: whether its
    backbone still matches, the train stage decides."""
    state, reason = _read(path)
    if state is None and reason is None:  # no checkpoint: a training killed before its first one, if any
        run_id = _marked_run(run_marker(path))
        return run_id is not None, run_id
    if state is not None and str(state.get("fingerprint", "")).split(":")[0] == params_fingerprint(params):
        return False, None
    return True, _run_id(state)


def rng_state(batches: np.random.Generator) -> dict:
    """Every RNG training may draw from; `batches` is the generator that shuffles and picks captions."""
    return {
        "python": random.getstate(),
        "batches": batches.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict, batches: np.random.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    batches.bit_generator.state = state["batches"]
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
