"""Where the train stage's processes run: the torchrun command for this machine, or for every machine of
a SLURM job, from params.yaml and the environment.

One machine (nnodes 1): `torchrun --standalone --nproc-per-node P`. Several: one torchrun agent per
machine, `--nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint host:port --rdzv-id ID`; the
agents meet at the endpoint (the agent on that host serves it) and number the N x P processes. Under
SLURM the stage, run by the batch script on the job's first node, starts every node's agent with one
`srun`; elsewhere it starts this machine's agent, and each other machine runs the stage's command itself.
The agent is `python -m dgl.launch <torchrun's arguments>`: torchrun itself, whose failure is one line.

Each setting comes from the first of these that is set: an explicit variable (the ones torchrun itself
reads for these flags), then what the scheduler knows of this job, then params.yaml:

    nnodes           PET_NNODES           SLURM_JOB_NUM_NODES      train.nnodes
    processes/node   PET_NPROC_PER_NODE   -                        train.nproc
    endpoint         PET_RDZV_ENDPOINT    $SLURMD_NODENAME:29400   train.rdzv_endpoint
    rendezvous id    PET_RDZV_ID          SLURM_JOB_ID             dgl-train

`train.dist_timeout` bounds how long an agent waits for the others to join and how long a process
waits for the others in a collective (dgl.distributed.process_group), so a node that dies or stalls
ends the others' runs instead of hanging them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from dgl.errors import USER_ERROR, UserError
from dgl.settings import C10D_PORT, check_endpoint

DEFAULT_ID = "dgl-train"
CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"


@dataclass(frozen=True)
class Launch:
    nnodes: int
    nproc: int  # processes per machine
    endpoint: str  # host:port of the rendezvous; unused on one machine
    rdzv_id: str
    timeout: int  # seconds
    srun: bool  # start every node's agent with srun (the stage runs inside a SLURM job)
    sources: tuple[tuple[str, str], ...]  # (setting, where its value came from), for messages

    @property
    def world(self) -> int:
        return self.nnodes * self.nproc

    def source(self, setting: str) -> str:
        return dict(self.sources)[setting]


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def _count(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    if not value.isdigit() or int(value) < 1:
        raise UserError(
            f"{name} = {value!r} must be a whole number of at least 1 (elastic ranges such as 1:4 "
            f"are not supported); unset it or fix it"
        )
    return int(value)


def resolve(cfg, env: Mapping[str, str] = os.environ) -> Launch:
    """The launch that `cfg` (params' train group) and `env` ask for, checked: one line on a bad value."""
    slurm = "SLURM_JOB_ID" in env
    sources: dict[str, str] = {}

    def first(setting: str, *candidates: tuple[str, object], default: object = "") -> object:
        for where, value in candidates:
            if value not in (None, ""):
                sources[setting] = where
                return value
        sources[setting] = "default"
        return default

    def var(name: str, convert=lambda env, name: env[name], scheduler: bool = False) -> tuple[str, object]:
        return name, convert(env, name) if name in env and (slurm or not scheduler) else None

    slurm_host = env.get("SLURMD_NODENAME") if slurm else None
    nnodes = first(
        "nnodes",
        var("PET_NNODES", _count),
        var("SLURM_JOB_NUM_NODES", _count, scheduler=True),
        ("train.nnodes", cfg.nnodes),
    )
    nproc = first("nproc", var("PET_NPROC_PER_NODE", _count), ("train.nproc", cfg.nproc))
    endpoint = first(
        "endpoint",
        var("PET_RDZV_ENDPOINT"),
        ("SLURMD_NODENAME", slurm_host and f"{slurm_host}:{C10D_PORT}"),
        ("train.rdzv_endpoint", cfg.rdzv_endpoint),
    )
    rdzv_id = first("rdzv_id", var("PET_RDZV_ID"), var("SLURM_JOB_ID", scheduler=True), default=DEFAULT_ID)
    launch = Launch(nnodes, nproc, endpoint, rdzv_id, cfg.dist_timeout, slurm and nnodes > 1, tuple(sources.items()))
    if launch.nnodes > 1:
        if not launch.endpoint:
            raise UserError(
                f"{nnodes} machines (nnodes from {launch.source('nnodes')}) need a rendezvous "
                "endpoint: set train.rdzv_endpoint or PET_RDZV_ENDPOINT to host:port of one of them"
            )
        check_endpoint(launch.endpoint, launch.source("endpoint"))
    parts = launch.world * cfg.accum_steps
    if cfg.batch_size % parts:
        raise UserError(
            f"params: train.batch_size = {cfg.batch_size} (the global batch) must split evenly over "
            f"{launch.nnodes} machines ({launch.source('nnodes')}) x {launch.nproc} processes "
            f"({launch.source('nproc')}) x train.accum_steps = {cfg.accum_steps}; change one of them"
        )
    return launch


def torchrun_command(launch: Launch, module: str, argv: list[str]) -> list[str]:
    """One machine's torchrun agent, running `python -m module *argv` in each of its processes (torchrun
    itself, through `agent` below)."""
    cmd = [sys.executable, "-m", "dgl.launch"]
    if launch.nnodes == 1:
        cmd += ["--standalone", f"--nproc-per-node={launch.nproc}"]
    else:
        t = launch.timeout
        cmd += [
            f"--nnodes={launch.nnodes}",
            f"--nproc-per-node={launch.nproc}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.endpoint}",
            f"--rdzv-id={launch.rdzv_id}",
            f"--rdzv-conf=join_timeout={t},read_timeout={t},close_timeout={t}",
            "--max-restarts=0",
        ]
    return [*cmd, "-m", module, *argv]


def node_command(launch: Launch, module: str, argv: list[str]) -> list[str]:
    """What the stage runs: this machine's agent, or under SLURM one agent on each of the job's nodes."""
    torchrun = torchrun_command(launch, module, argv)
    if not launch.srun:
        return torchrun
    return [
        "srun",
        f"--nodes={launch.nnodes}",
        f"--ntasks={launch.nnodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        *torchrun,
    ]


def describe(launch: Launch) -> str:
    """One line for the log: the shape of the run and where each setting came from."""
    if launch.nnodes == 1:
        return f"torchrun: {launch.nproc} processes on this machine ({launch.source('nproc')})"
    return (
        f"torchrun: {launch.nnodes} machines ({launch.source('nnodes')}) x {launch.nproc} processes "
        f"({launch.source('nproc')}), rendezvous {launch.rdzv_id!r} ({launch.source('rdzv_id')}) at "
        f"{launch.endpoint} ({launch.source('endpoint')}), timeout {launch.timeout} s"
        + (", every machine's agent started by srun" if launch.srun else ", this machine's agent")
    )


def run_nodes(launch: Launch, module: str, argv: list[str]) -> int:
    """Run `node_command`, wait for it and return its exit code. A failure has been reported in one line
    by the process that failed (dgl.distributed.process_group) or by its agent (`agent`)."""
    cmd = node_command(launch, module, argv)
    print(describe(launch), file=sys.stderr, flush=True)
    try:
        return subprocess.run(cmd).returncode
    except FileNotFoundError:
        raise UserError(
            f"{cmd[0]}: not found; run the stage inside the SLURM job's batch script, or set "
            "PET_NNODES and PET_RDZV_ENDPOINT and start it on each machine yourself"
        ) from None


def agent(argv: list[str]) -> None:
    """torchrun with torchrun's own arguments (torch.distributed.run's `run`), whose failure is one line:
    a process that exited with a UserError has said why itself, any other failure is named here, without
    torchrun's traceback and report."""
    import logging

    chosen = os.environ.get(CPP_LOG_LEVEL)
    os.environ[CPP_LOG_LEVEL] = chosen or "ERROR"  # read as torch loads: no C++ stack per failed heartbeat
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import parse_args, run

    if chosen is None:
        del os.environ[CPP_LOG_LEVEL]  # the training processes keep torch's default

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)  # says it again
    host = socket.gethostname()
    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode == USER_ERROR:
            sys.exit(USER_ERROR)
        how = (
            f"was killed by {signal.Signals(-failure.exitcode).name}"
            if failure.exitcode < 0
            else f"ended with exit code {failure.exitcode}"
        )
        raise UserError(f"torchrun on {host}: rank {rank} (pid {failure.pid}) {how}; its output is above") from None
    except RendezvousError as e:
        raise UserError(
            f"torchrun on {host}: rendezvous {args.rdzv_id!r} at {args.rdzv_endpoint} failed "
            f"({str(e).strip().splitlines()[0][:160]}): every machine must start within "
            "train.dist_timeout and reach it, and the machine serving it must stay up"
        ) from None


if __name__ == "__main__":
    from dgl.cli import entry_point

    entry_point(lambda: agent(sys.argv[1:]))()
