"""Data-parallel training: one process per GPU (or several on CPU), started by torchrun.

Nothing happens at import. `process_group()` joins the group that torchrun's environment describes
(gloo on CPU, NCCL on CUDA); without torchrun it is a single process and no group. How torchrun is
started, on one machine or several, is dgl/launch.py's. Every rank draws
the same global batches and encodes its own slice; `gather` builds the global batch's features for
the contrastive loss and `data_parallel` sums the ranks' gradients, so training equals one process
on the whole batch (see dgl.train.contrastive_step).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dgl.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the only one that logs to MLflow and writes outputs."""
        return self.rank == 0


def lost_peer(e: RuntimeError) -> bool:
    """Whether `e` says that another process of the group is gone: torch's distributed errors (NCCL,
    the store), or gloo's transport errors, which torch raises as plain RuntimeErrors."""
    return isinstance(e, dist.DistError) or "/gloo/transport/" in str(e)


def _what(e: Exception) -> str:
    """The gist of a backend's error: its first sentence, without the C++ source location."""
    line = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0])
    return line.split(". ")[0][:160]


def check_nproc(nproc: int, device: torch.device) -> None:
    """One process per GPU, or per CPU core: more than the machine has is refused in one line."""
    if device.type == "cuda":
        available, what = torch.cuda.device_count(), "visible CUDA devices"
    else:
        available, what = len(os.sched_getaffinity(0)), "CPU cores available to this process"
    if nproc > available:
        raise UserError(
            f"params: train.nproc = {nproc} processes, but there are {available} {what}; use train.nproc <= {available}"
        )


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: int = 300) -> Iterator[tuple[Dist, torch.device]]:
    """This process's rank and device (cuda:LOCAL_RANK under torchrun on CUDA). Joining and every
    collective wait at most `timeout_s` for the other processes; a process that died or stalled
    (its machine gone) ends this one with one line instead of a hang or a backend's traceback."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Dist(), device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    rank = int(os.environ["RANK"])
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
        yield Dist(dist.get_rank(), world), device
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        raise UserError(
            f"rank {rank} of {world} on {socket.gethostname()}: lost the other processes "
            f"({_what(e)}); a process or machine died, or stalled beyond "
            f"train.dist_timeout = {timeout_s} s: see the other machines' logs"
        ) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def gather(x: Tensor) -> Tensor:
    """Every rank's x (b, ...) concatenated in rank order (W*b, ...). Only this rank's slice keeps
    its graph: the others arrive as constants (open_clip's gather_features, local_loss=False)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def _ignore_in_ddp(module: nn.Module, names: list[str]) -> None:
    """Have DDP leave the parameters `names` of `module` out of its gradient reduction.

    torch 2.x has no public API for this: `DistributedDataParallel._set_params_and_buffers_to_ignore_for_model`
    is the one torch itself documents for it, as a stop-gap until pytorch/pytorch#43690 settles an API
    (FSDP's `ignored_states` has no DDP counterpart). The public alternatives change the numbers:
    `delay_all_reduce_named_params` still all-reduces (averages) those gradients, and keeping the
    parameter outside the wrapped module would need the logit scale taken out of CLIP. If a future
    torch drops the method, this says so in one line (a UserError) instead of an AttributeError."""
    if not names:
        return
    setter = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if setter is None:
        raise UserError(
            f"torch {torch.__version__}: DistributedDataParallel no longer offers "
            "_set_params_and_buffers_to_ignore_for_model, which multi-process training of "
            f"{', '.join(names)} relies on (dgl/distributed.py); use train.nproc: 1 or an older torch"
        )
    setter(module, names)


def _allreduce_sum(_, bucket):  # no return annotation: DDP checks it, and it would be a string here
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def data_parallel(module: nn.Module, device: torch.device, ignore: list[str]) -> nn.Module:
    """DDP over `module` whose gradients are *summed* over ranks, not averaged.

    Every rank computes the same loss over the global batch, but backpropagates it only through its
    own slice of the features, so its gradient is its slice's share; the sum of the shares is the
    gradient of the global-batch loss. (open_clip averages instead, which divides it by the world
    size.) Parameters named in `ignore` are used outside `module.forward` (CLIP's logit scale,
    trained by `full`): every rank gets the whole, identical gradient for them, so they are left
    out of the sum."""
    if not dist.is_initialized():
        return module
    _ignore_in_ddp(module, ignore)
    ddp = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    ddp.register_comm_hook(None, _allreduce_sum)
    return ddp
