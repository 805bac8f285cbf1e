"""What the benchmarks share: the device to run on, its name, a peak-memory window, and the bytes
autograd keeps for the backward pass.

CPU memory is the process's resident size from Linux /proc (VmRSS now, VmHWM the peak, reset by
writing 5 to /proc/self/clear_refs); CUDA memory is what torch has allocated on the device.
`saved_for_backward` counts what autograd saves (saved_tensors_hooks), exactly and on any device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

PROC_STATUS = Path("/proc/self/status")


def pick_device(choice: str) -> torch.device:
    """--device auto|cpu|cuda: auto is CUDA where available."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def proc_status_mib(key: str) -> float:
    line = next(line for line in PROC_STATUS.read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024  # kB


def reset_peak_memory(device: torch.device) -> float:
    """Start a new peak-memory window; returns the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident size
    return proc_status_mib("VmRSS")


def peak_memory(device: torch.device) -> float:
    """The peak (MiB) since the last `reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return proc_status_mib("VmHWM")


@contextlib.contextmanager
def saved_for_backward(exclude: Iterable[torch.Tensor] = ()) -> Iterator[dict]:
    """While active, every tensor autograd saves for the backward pass is counted by its storage,
    once (a view or a repeat of a storage adds nothing), leaving out the storages of `exclude` (the
    parameters: weights are memory a model holds anyway). Yields a dict whose "bytes" is set on exit.

    Activation checkpointing (torch.utils.checkpoint, non-reentrant) saves a checkpointed region's
    inputs through these hooks and nothing of what the region computes: the count is what stays
    in memory between the forward and the backward pass. Enter it around the forward pass only."""
    skip = {(t.device, t.untyped_storage().data_ptr()) for t in exclude}
    storages: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in skip:
            storages[key] = t.untyped_storage().nbytes()
        return t  # the graph keeps the tensor itself: the storage stays alive, its address unique

    result: dict = {}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(storages.values())
