"""What the benchmarks share: the device to run on, its name, and a peak-memory window.

CPU memory is the process's resident size from Linux /proc (VmRSS now, VmHWM the peak, reset by
writing 5 to /proc/self/clear_refs); CUDA memory is what torch has allocated on the device."""
from __future__ import annotations

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
