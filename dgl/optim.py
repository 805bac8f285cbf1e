"""The reference scripts' optimisation: AdamW (0.9, 0.98, eps 1e-6), weight decay on every parameter
whose name has no `bias` (`unless_bias`), linear warm-up then cosine decay to 0 (docs/method.md,
"Optimisation"), and CLIP4Clip's two learning rates: pretrained weights at their own, smaller rate
(its `--coef_lr`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def unless_bias(name: str, param: nn.Parameter) -> bool:
    """The reference scripts' rule (knightyxp/DGL's and CLIP4Clip's `no_decay` lists): every parameter whose
    name has no `bias` decays, LayerNorm gains and CLIP's logit scale included. What retrieval training uses."""
    return "bias" not in name


def matrices_only(name: str, param: nn.Parameter) -> bool:
    """open_clip's rule: matrices and embeddings decay; gains, biases and scalars (ndim < 2) do not. What the
    synthetic backbone's pretraining (not in the papers) uses."""
    return param.ndim >= 2


def adamw(
    params: list[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    group_of: Callable[[str], str] | None = None,
    rates: dict[str, float] | None = None,
    decays: Callable[[str, nn.Parameter], bool] = matrices_only,
) -> torch.optim.AdamW:
    """AdamW with weight decay on the parameters `decays` picks, none on the others. With `group_of`,
    each parameter's group name picks its learning rate from `rates` (else `lr`); every optimizer
    group carries its `name` (e.g. `clip/decay`) so the rates can be read back and logged."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in params:
        groups.setdefault((group_of(name) if group_of else "all", decays(name, p)), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": ps,
                "name": f"{group}/{'decay' if decay else 'no_decay'}",
                "lr": (rates or {}).get(group, lr),
                "weight_decay": weight_decay if decay else 0.0,
            }
            for (group, decay), ps in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=True,
    )


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
