"""Same params, same numbers: seeds and deterministic kernels for every stage that computes.

Guaranteed: on the CPU, the same params, package pins (requirements.txt) and torch thread count
give bit-identical weights and metrics; the committed dvc.lock and metrics.json were made on a
2-core x86-64 machine. Not guaranteed: another CPU family or thread count (float sums are split
differently across threads and SIMD widths: expect differences in the last bits, which can move a
rank and so a recall by a caption or two), and GPU kernels (cuBLAS, cuDNN and atomics in
attention differ by device and driver; with these settings torch warns where it cannot be exact).
"""

from __future__ import annotations

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed numpy's and torch's global generators and ask torch for deterministic kernels.

    Python's own `random` is left alone: nothing here draws from it, and seeding it would give
    every MLflow run the same generated name."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
