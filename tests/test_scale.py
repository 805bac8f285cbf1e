"""Training at scale, checked on CPU with the tiny backbone: DDP (gloo, 2 processes) and GradCache
accumulation give the single-process, full-batch loss and gradients; a killed run resumes to the
same result, in the same MLflow run; mixed precision stays off on CPU."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import psutil
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch.nn.parallel import DistributedDataParallel

from dgl.batch_order import train_val_views
from dgl.cache.read import CachedSplit
from dgl.checkpoint import Checkpoint, fingerprint
from dgl.distributed import process_group
from dgl.errors import UserError
from dgl.frames.store import RawCodec, write_arrays
from dgl.launch import resolve, torchrun_command
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method
from dgl.settings import Params, TrainConfig
from dgl.train import Features, Precision, contrastive_step, parallel_features, pick_precision, train_method
from dgl.typed_yaml import build
from helpers import ROOT, free_port, group, merge, stage_cmd, tiny_params

# Sub-batches and ranks change only the float rounding of the encoders (smaller matmuls), not the maths.
RTOL, ATOL = 1e-4, 1e-6
VIDEOS, FRAMES, SIZE = 12, 2, 64
SHAPES, COLOURS = ("circle", "square", "triangle"), ("red", "green", "blue", "yellow")


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads per process are slower than one on a busy 2-core machine, and DDP runs two processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STORE = tempfile.TemporaryDirectory()  # tiny_split's frame store, removed at exit


@functools.cache
def tiny_split() -> CachedSplit:
    rng = np.random.default_rng(0)
    texts = [f"a {COLOURS[v % 4]} {SHAPES[v % 3]} {verb}" for v in range(VIDEOS) for verb in ("moves", "appears")]
    tokens = open_clip.get_tokenizer("tiny-synthetic")(texts, context_length=16)
    store, rows = write_arrays(
        Path(STORE.name), rng.integers(0, 256, (VIDEOS, FRAMES, 3, SIZE, SIZE), dtype=np.uint8), RawCodec()
    )
    return CachedSplit(
        store=store,
        rows=rows,
        tokens=tokens.long(),
        caption_video=torch.arange(2 * VIDEOS) // 2,
        texts=texts,
        categories=["motion"] * len(texts),
        twins=torch.full((VIDEOS,), -1),
        video_ids=[f"v{v}" for v in range(VIDEOS)],
        mean=torch.tensor([0.48, 0.46, 0.41]),
        std=torch.tensor([0.27, 0.26, 0.28]),
    )


def tiny_method(name: str = "dgl"):
    torch.manual_seed(0)
    return build_method(name, build_clip("tiny-synthetic"), group("model", method=name), num_frames=FRAMES)


def step_gradients(
    name: str, accum_steps: int, rank: int = 0, world: int = 1, *, reference: bool = False, grad_clip: float = 0.0
) -> tuple[float, dict]:
    """Loss and gradients of one step on a global batch of 8 videos; this rank encodes its slice. With
    `reference`, DDP averages the ranks' gradients as the reference scripts' (default DDP, whose AllGather's
    backward keeps this rank's slice, as `gather` does); `grad_clip` then clips them as training does."""
    split = tiny_split()
    method = tiny_method(name)
    local = slice(rank * 8 // world, (rank + 1) * 8 // world)
    frames, tokens = split.video_batch(np.arange(8))[local], split.tokens[0:16:2][local]
    model = DistributedDataParallel(Features(method)) if reference else parallel_features(method, torch.device("cpu"))
    loss = contrastive_step(model, tokens, frames, method.logit_scale, accum_steps=accum_steps)
    params = [p for p in method.parameters() if p.requires_grad]
    Precision().step(torch.optim.SGD(params, lr=0.0), params, grad_clip)
    return loss.item(), {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}


CASES = [("dgl", 1), ("full", 1), ("dgl", 2)]  # full also trains the logit scale, used outside the forward
CLIP = 0.01  # a gradient-norm threshold the tiny model's step exceeds, so clipping engages


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    with process_group(torch.device("cpu")) as (dist, _):
        results = [step_gradients(name, accum, dist.rank, dist.world) for name, accum in CASES]
        results += [
            step_gradients("dgl", 1, dist.rank, dist.world, reference=True, grad_clip=CLIP),
            step_gradients("dgl", 1, dist.rank, dist.world, grad_clip=CLIP * dist.world),
        ]
    if rank == 0:
        torch.save(results, out)


def assert_same(got: tuple[float, dict], want: tuple[float, dict]) -> None:
    assert got[0] == pytest.approx(want[0], rel=RTOL, abs=ATOL)
    assert got[1].keys() == want[1].keys()
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path / "ddp.pt")), nprocs=2)
    *ours, reference, clipped = torch.load(tmp_path / "ddp.pt")
    for (name, accum), got in zip(CASES, ours):
        assert_same(got, step_gradients(name, 1))
    # The reference averages over its 2 ranks (each 1/2 of the global-batch gradient) and clips at CLIP; we
    # sum to the whole gradient, so the same threshold is 2 x CLIP here: the recipes' train.grad_clip is
    # 1.0 x the reference's GPU count. Then both clip by the same factor, and Adam's step is the same.
    whole = step_gradients("dgl", 1)[1]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in whole.values()])) > 2 * CLIP
    assert_same((clipped[0], {n: g / 2 for n, g in clipped[1].items()}), reference)
    assert_same(clipped, step_gradients("dgl", 1, grad_clip=2 * CLIP))  # and one process, clipped the same


def _stalling_worker(rank: int, port: int, timeout_s: int, out: str) -> None:
    """Rank 1 joins, then stalls (a hung machine); rank 0 waits for it in a collective."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    with process_group(torch.device("cpu"), timeout_s):
        if rank == 1:
            time.sleep(timeout_s + 30)
            return
        start = time.monotonic()
        try:
            torch.distributed.all_reduce(torch.ones(1))
        finally:
            Path(out).write_text(json.dumps(time.monotonic() - start))


@pytest.mark.slow
def test_a_stalled_process_ends_the_others_at_train_dist_timeout_in_one_line(tmp_path):
    timeout = 5
    with pytest.raises(
        mp.ProcessRaisedException,
        match=r"UserError: rank 0 of 2 on .*: lost the other processes "
        rf".*stalled beyond train.dist_timeout = {timeout} s",
    ):
        mp.spawn(_stalling_worker, args=(free_port(), timeout, str(tmp_path / "waited")), nprocs=2)
    assert timeout <= json.loads((tmp_path / "waited").read_text()) < timeout + 10


@pytest.mark.parametrize("name", ["dgl", "full"])
def test_gradcache_accumulation_equals_the_full_batch(name):
    got, want = step_gradients(name, accum_steps=4), step_gradients(name, accum_steps=1)
    assert_same(got, want)
    if name == "dgl":  # the prompt generator gets every sub-batch's share
        assert any(g.abs().sum() > 0 for n, g in got[1].items() if n.startswith("generator"))


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_on_cuda_a_mixed_precision_step_matches_float32(amp):
    """Autocast (and fp16's loss scaler, unscaled before clipping) give the float32 step's loss and gradients
    up to half precision's rounding."""
    split, cuda = tiny_split(), torch.device("cuda")
    frames, tokens = split.video_batch(np.arange(8)).to(cuda), split.tokens[0:16:2].to(cuda)
    results = []
    for name in ("off", amp):
        method = tiny_method("dgl").to(cuda)
        precision = pick_precision(name, cuda)
        loss = contrastive_step(Features(method), tokens, frames, method.logit_scale, precision=precision)
        params = [p for p in method.parameters() if p.requires_grad]
        precision.step(torch.optim.SGD(params, lr=0.0), params, grad_clip=1.0)
        results.append((loss.item(), torch.cat([p.grad.flatten().float() for p in params])))
    (loss32, grad32), (loss16, grad16) = results
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99


def train_cfg(**kw) -> TrainConfig:
    return group("train", **{"epochs": 2, "batch_size": 4, "val_fraction": 0.2, "device": "cpu", **kw})


class Killed(Exception):
    pass


def train(cfg: TrainConfig, checkpoint: Checkpoint | None = None, kill_at: int | None = None):
    def on_epoch(epoch: int, record: dict) -> None:
        if epoch == kill_at:
            raise Killed  # after this epoch's checkpoint, where logging to a tracking server that is down fails

    torch.manual_seed(cfg.seed)  # what a fresh process does
    method = tiny_method()
    train_view, val_view = train_val_views(tiny_split(), cfg.val_fraction, cfg.seed)
    resume = checkpoint.load() if checkpoint else None
    history = train_method(
        method,
        train_view,
        val_view,
        cfg,
        torch.device("cpu"),
        on_epoch,
        progress=False,
        resume=resume,
        save_checkpoint=checkpoint.save if checkpoint else None,
    )
    return history, {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}


def test_killed_training_resumes_to_the_same_weights_and_history(tmp_path, capsys):
    cfg = train_cfg(epochs=3)
    want_history, want_weights = train(cfg)
    checkpoint = Checkpoint(tmp_path / "train.pt", "fingerprint")
    with pytest.raises(Killed):
        train(cfg, checkpoint, kill_at=2)
    assert torch.load(checkpoint.path, weights_only=True)["epoch"] == 2  # the epoch is not lost
    history, weights = train(cfg, checkpoint)
    assert "resuming after epoch 2" in capsys.readouterr().err
    assert history == want_history
    for name, value in want_weights.items():
        assert torch.equal(weights[name], value), name


def test_checkpoint_of_other_params_or_backbone_is_ignored_with_a_notice(tmp_path, capsys):
    params = build(Params, tiny_params())
    fp = fingerprint(params, "a" * 64)
    faster = build(Params, merge(tiny_params(), {"train": {"threads": 2, "nproc": 2, "accum_steps": 2}}))
    assert fingerprint(faster, "a" * 64) == fp  # speed-only settings keep the checkpoint
    assert fingerprint(build(Params, merge(tiny_params(), {"train": {"lr": 0.1}})), "a" * 64) != fp
    assert fingerprint(params, "b" * 64) != fp
    Checkpoint(tmp_path / "train.pt", fp).save({"epoch": 1})
    assert Checkpoint(tmp_path / "train.pt", fp).load()["epoch"] == 1
    assert Checkpoint(tmp_path / "train.pt", fingerprint(params, "b" * 64)).load() is None
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("ignored, training starts afresh")
    (tmp_path / "train.pt").write_bytes(b"not a checkpoint")
    assert Checkpoint(tmp_path / "train.pt", fp).load() is None


def test_amp_is_off_on_cpu_and_explicit_half_precision_needs_cuda():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu).dtype is None and pick_precision("off", cpu).dtype is None
    with pytest.raises(UserError, match=r"train\.amp = 'bf16' needs CUDA"):
        pick_precision("bf16", cpu)
    with pytest.raises(UserError, match=r"train\.batch_size = 6 .* train\.nproc x train\.accum_steps = 4"):
        train_cfg(batch_size=6, nproc=2, accum_steps=2)


# ---- the stage entry point: kill and resume in one MLflow run; torchrun on one machine and on two ----


def copy_inputs(tiny_repro: Path, dest: Path, **train) -> Path:
    """The cache and the backbone the earlier stages wrote (copies of the session's tiny repro), and
    tiny params."""
    for path in ("data/cache", "models/backbone"):
        shutil.copytree(tiny_repro / path, dest / path)
    params = merge(tiny_params(), {"train": {"epochs": 4, "batch_size": 4, "device": "cpu", "threads": 1, **train}})
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return dest


@pytest.fixture
def stage_inputs(tmp_path, tiny_repro) -> Path:
    return copy_inputs(tiny_repro, tmp_path)


def stage(root: Path, env: dict | None = None, **train) -> subprocess.Popen:
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(params, {"train": train})))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1", "DVC_ROOT": str(root), **(env or {})}
    return subprocess.Popen(
        [sys.executable, *stage_cmd("train")[1:]],
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return err


OUTPUTS = ("models/trained", "plots/train.json", "mlflow.db")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_repro) -> Path:
    """The stage's outputs with train.nproc = 2 on this machine (torchrun --standalone, gloo)."""
    root = copy_inputs(tiny_repro, tmp_path_factory.mktemp("two-processes"))
    finish(stage(root, nproc=2))
    return root


def test_stage_killed_then_rerun_resumes_in_one_mlflow_run_and_torchrun_agrees(stage_inputs, two_processes):
    root = stage_inputs
    checkpoint = root / "models/checkpoints/train.pt"
    proc = stage(root)
    while not checkpoint.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "resuming after epoch" in finish(stage(root))
    assert not checkpoint.exists()
    resumed = json.loads((root / "plots/train.json").read_text())
    with sqlite3.connect(root / "mlflow.db") as con:
        runs = con.execute("SELECT status FROM runs").fetchall()
        steps = {s for (s,) in con.execute("SELECT step FROM metrics WHERE key='epoch/train_loss'")}
    assert runs == [("FINISHED",)] and steps == {1, 2, 3, 4}

    ddp = json.loads((two_processes / "plots/train.json").read_text())  # the same global batches: the same curve
    assert [r["epoch"] for r in ddp] == [1, 2, 3, 4]
    for a, b in zip(ddp, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def serving(port: int, proc: subprocess.Popen) -> None:
    """Wait until something listens on `port` (the first machine's agent serves the rendezvous there)."""
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


def kill_machine(proc: subprocess.Popen) -> None:
    """SIGKILL the stage, its torchrun agent and its training processes (in sessions of their own)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        machine = psutil.Process(proc.pid)
        for p in [machine, *machine.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    proc.communicate()


@contextlib.contextmanager
def two_machines(
    tmp_path: Path, tiny_repro: Path, port: int, env: dict | None = None, **train
) -> Iterator[dict[str, subprocess.Popen]]:
    """Two "machines" on loopback: the stage started in two folders, each its own torchrun agent (one
    process each), meeting at the rendezvous on `port` that the first one serves. Whatever of them is
    still running when the block ends is killed."""
    nodes = {name: copy_inputs(tiny_repro, tmp_path / name, **train) for name in ("a", "b")}
    procs = {}
    try:
        procs["a"] = stage(nodes["a"], env)
        serving(port, procs["a"])
        procs["b"] = stage(nodes["b"], env)
        yield procs
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                kill_machine(proc)


@pytest.mark.slow
def test_two_machines_train_as_two_processes_on_one_to_the_bit(tmp_path, tiny_repro, two_processes):
    """torchrun's c10d rendezvous, settings from params.yaml. Each "machine" has its own folder, so that
    what each writes shows: only rank 0 writes the outputs and logs to MLflow."""
    port = free_port()
    with two_machines(tmp_path, tiny_repro, port, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}") as procs:
        for proc in procs.values():
            assert "torchrun: 2 machines (train.nnodes)" in finish(proc)
    wrote = [name for name in procs if (tmp_path / name / "models/trained").exists()]
    assert len(wrote) == 1, wrote
    (writer,) = wrote
    (other,) = set(procs) - {writer}
    assert all((tmp_path / writer / out).exists() for out in OUTPUTS)
    assert not any((tmp_path / other / out).exists() for out in OUTPUTS)
    # The same slices and sums as on one machine: the same bits (summing two gradients is commutative).
    for out in ("plots/train.json", "models/trained/weights.pt"):
        assert (tmp_path / writer / out).read_bytes() == (two_processes / out).read_bytes(), out
    with sqlite3.connect(tmp_path / writer / "mlflow.db") as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("FINISHED",)]


@pytest.mark.slow
def test_a_dead_machine_ends_the_other_within_the_timeout_in_one_line(tmp_path, tiny_repro):
    """Settings from the environment (torchrun's PET_* variables) over params.yaml's one machine."""
    timeout = 60
    port = free_port()
    env = {"PET_NNODES": "2", "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}"}
    with two_machines(tmp_path, tiny_repro, port, env, epochs=20, dist_timeout=timeout) as procs:
        checkpoints = [tmp_path / name / "models/checkpoints/train.pt" for name in procs]
        while not any(c.exists() for c in checkpoints):  # mid-run: rank 0 ended its first epoch
            assert all(p.poll() is None for p in procs.values()), [p.communicate()[1][-2000:] for p in procs.values()]
            time.sleep(0.05)
        kill_machine(procs["b"])  # not the one serving the rendezvous: see the README
        killed = time.monotonic()
        _, err = procs["a"].communicate(timeout=timeout + 30)
        took = time.monotonic() - killed
    assert procs["a"].returncode != 0 and took < timeout, (took, err[-3000:])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost the other processes" in errors[0], err[-3000:]
    assert "Traceback" not in err and f"train.dist_timeout = {timeout} s" in errors[0]


# ---- where the processes run: params.yaml, then the scheduler's environment, then explicit variables ----


def launch_cfg(**train) -> TrainConfig:
    return train_cfg(batch_size=64, **train)


def test_launch_settings_come_from_params_then_slurm_then_explicit_variables():
    one = resolve(launch_cfg(nproc=2), {})
    assert (one.nnodes, one.nproc, one.world) == (1, 2, 2)
    assert torchrun_command(one, "m", [])[3:5] == ["--standalone", "--nproc-per-node=2"]
    params = launch_cfg(nnodes=2, rdzv_endpoint="head:29500", dist_timeout=60)
    got = resolve(params, {})
    assert (got.nnodes, got.endpoint, got.rdzv_id, got.timeout, got.srun) == (2, "head:29500", "dgl-train", 60, False)
    slurm = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "4", "SLURMD_NODENAME": "gpu03"}
    got = resolve(params, slurm)
    assert (got.nnodes, got.endpoint, got.rdzv_id, got.srun) == (4, "gpu03:29400", "77", True)
    assert got.source("nnodes") == "SLURM_JOB_NUM_NODES"
    explicit = {
        **slurm,
        "PET_NNODES": "8",
        "PET_RDZV_ENDPOINT": "10.0.0.1:1234",
        "PET_RDZV_ID": "mine",
        "PET_NPROC_PER_NODE": "8",
    }
    got = resolve(params, explicit)
    assert (got.nnodes, got.nproc, got.endpoint, got.rdzv_id) == (8, 8, "10.0.0.1:1234", "mine")
    assert resolve(launch_cfg(nnodes=2), {"PET_NNODES": "1"}).world == 1  # one machine after all: standalone
    assert resolve(params, {"SLURM_JOB_NUM_NODES": "4"}).nnodes == 2  # no SLURM job, no SLURM settings


@pytest.mark.parametrize(
    "cfg, env, message",
    [
        (dict(nnodes=2), {}, r"2 machines \(nnodes from train.nnodes\) need a rendezvous endpoint"),
        (dict(), {"PET_NNODES": "2", "PET_RDZV_ENDPOINT": "head"}, r"PET_RDZV_ENDPOINT = 'head' is not host:port"),
        (dict(), {"PET_NNODES": "1:4"}, r"PET_NNODES = '1:4' must be a whole number"),
        (
            dict(rdzv_endpoint="h:1"),
            {"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "3", "SLURMD_NODENAME": "n"},
            r"batch_size = 64 .* over 3 machines \(SLURM_JOB_NUM_NODES\) x 1 processes \(train.nproc\)",
        ),
    ],
)
def test_launch_settings_that_cannot_work_are_one_line(cfg, env, message):
    with pytest.raises(UserError, match=message):
        resolve(launch_cfg(**cfg), env)


def test_rendezvous_endpoint_in_params_is_checked():
    with pytest.raises(UserError, match=r"params: train.rdzv_endpoint = 'head:99999' is not host:port"):
        launch_cfg(rdzv_endpoint="head:99999")
    assert launch_cfg(rdzv_endpoint="[fe80::1]:29400").rdzv_endpoint == "[fe80::1]:29400"


def test_the_slurm_example_starts_one_agent_per_node_at_the_first_nodes_rendezvous(tmp_path):
    """examples/slurm/train.sbatch as sbatch runs it, with stand-ins for `srun` (it records its command)
    and `dvc exp run` (it applies -S to params.yaml, then runs the train stage's command from dvc.yaml):
    the command is the one the real stage builds, and torchrun's own parser reads it as meant."""
    from torch.distributed.run import parse_args

    script = ROOT / "examples/slurm/train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    sbatch = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", script.read_text(), re.M))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SLURM_SUBMIT_DIR/srun.args"\n')
    (fake / "dvc").write_text(f"#!{sys.executable}\n" + DVC_EXP_RUN)
    for tool in fake.iterdir():
        tool.chmod(0o755)
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / ".venv/bin/activate").write_text(f'PATH="{fake}:{sys.executable.rsplit("/", 1)[0]}:$PATH"\n')
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    job = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": sbatch["nodes"],
        "SLURMD_NODENAME": "gpu01",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PET_"))}
    out = subprocess.run(
        ["bash", str(script), "-S", "model.dgl.generator=upt"],
        cwd="/",
        env={**env, **job},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (
        "torchrun: 2 machines (SLURM_JOB_NUM_NODES) x 4 processes (train.nproc), rendezvous '4242' "
        "(SLURM_JOB_ID) at gpu01:29400 (SLURMD_NODENAME)" in out.stderr
    )
    argv = (tmp_path / "srun.args").read_text().splitlines()
    assert argv[:4] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert argv[4:7] == [sys.executable, "-m", "dgl.launch"]  # torchrun with one-line failures (dgl/launch.py)
    args = parse_args(argv[7:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == (
        "2",
        "4",
        "c10d",
        "gpu01:29400",
        "4242",
    )
    assert args.rdzv_conf == "join_timeout=300,read_timeout=300,close_timeout=300" and args.max_restarts == 0
    assert (args.module, args.training_script, args.training_script_args) == (
        True,
        "pipelines.train",
        stage_cmd("train")[3:],
    )
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert (params["train"]["device"], params["model"]["dgl"]["generator"]) == ("cuda", "upt")
    assert sbatch["gpus-per-node"] == str(params["train"]["nproc"])


DVC_EXP_RUN = """
import shlex, subprocess, sys, yaml
args = sys.argv[1:]
assert args[:2] == ["exp", "run"], args
params = yaml.safe_load(open("params.yaml"))
for key, value in (a.split("=", 1) for a in args[3::2]):
    *parents, last = key.split(".")
    node = params
    for p in parents:
        node = node[p]
    node[last] = yaml.safe_load(value)
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
sys.exit(subprocess.run(shlex.split(yaml.safe_load(open("dvc.yaml"))["stages"]["train"]["cmd"])).returncode)
"""
