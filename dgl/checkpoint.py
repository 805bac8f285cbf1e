"""Resumable training: after every epoch the train stage saves what it needs to go on exactly where
it stopped (trainable weights, optimizer, scheduler, loss scaler, RNG states, history, MLflow run
id) to models/checkpoints/train.pt, and removes it once its outputs are written.

It is not a DVC output on purpose: DVC leaves undeclared files alone, which is all resuming needs,
whereas a declared output must exist after the stage, so the checkpoint (for `full` on ViT-B/32
about 1.5 GB with Adam's moments) would stay on disk for good and be cached or committed by
`dvc exp run`. It lives under /models/, which git ignores.

A checkpoint is used only by a run with the same fingerprint: the params that change what training
computes (groups data, frames, preprocess, model, train, less the speed-only keys) and the
backbone's sha256. Anything else is ignored with a one-line notice, never loaded.
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

from dgl.config import flatten

GROUPS = ("ffmpeg", "data", "frames", "preprocess", "model", "train")
# These change only speed: train.batch_size is the global batch whatever the processes and sub-batches.
SPEED_ONLY = {"frames.workers", "train.threads", "train.nproc", "train.accum_steps"}


def fingerprint(params, backbone_sha256: str) -> str:
    relevant = {k: v for k, v in flatten(params).items() if k.split(".")[0] in GROUPS and k not in SPEED_ONLY}
    text = json.dumps({"params": relevant, "backbone_sha256": backbone_sha256}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Checkpoint:
    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self, verbose: bool = True) -> dict | None:
        """The saved state when it belongs to this run, else None."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a foreign or damaged file: never unpickle more than tensors
            reason = f"unreadable ({type(e).__name__})"
        else:
            if state.get("fingerprint") == self.fingerprint:
                if verbose:
                    print(f"{self.path}: resuming after epoch {state['epoch']}", file=sys.stderr)
                return state
            reason = "made with other params or another backbone"
        if verbose:
            print(f"{self.path}: {reason}; ignored, training starts afresh", file=sys.stderr)
        return None

    def save(self, state: dict) -> None:
        """Write to a sibling file, then rename: a kill mid-write leaves the previous checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".partial")
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def rng_state(batches: np.random.Generator) -> dict:
    """Every RNG training may draw from; `batches` is the generator that shuffles and picks captions."""
    return {"python": random.getstate(), "batches": batches.bit_generator.state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict, batches: np.random.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    batches.bit_generator.state = state["batches"]
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
