"""The device a stage runs on, from params (train.device); train, evaluate and dgl.search share it."""

from __future__ import annotations

import torch

from dgl.errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("params: train.device = 'cuda' but no CUDA device is visible; use auto or cpu")
    return torch.device(name)
