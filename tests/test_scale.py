"""Training at scale, checked on CPU with the tiny backbone: DDP (gloo, 2 processes) and GradCache
accumulation give the single-process, full-batch loss and gradients; a killed run resumes to the
same result, in the same MLflow run; mixed precision stays off on CPU."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch.nn.parallel import DistributedDataParallel

from conftest import ROOT, group, merge, stage_cmd, tiny_params
from dgl.cache import CachedSplit
from dgl.checkpoint import Checkpoint, fingerprint
from dgl.distributed import process_group
from dgl.errors import UserError
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method
from dgl.settings import Params, TrainConfig
from dgl.train import (Features, Precision, contrastive_step, parallel_features, pick_precision, train_method,
                       train_val_views)
from dgl.typed_yaml import build

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


@functools.cache
def tiny_split() -> CachedSplit:
    rng = np.random.default_rng(0)
    texts = [f"a {COLOURS[v % 4]} {SHAPES[v % 3]} {verb}" for v in range(VIDEOS) for verb in ("moves", "appears")]
    tokens = open_clip.get_tokenizer("tiny-synthetic")(texts, context_length=16)
    return CachedSplit(frames=rng.integers(0, 256, (VIDEOS, FRAMES, 3, SIZE, SIZE), dtype=np.uint8),
                       tokens=tokens.long(), caption_video=torch.arange(2 * VIDEOS) // 2, texts=texts,
                       categories=["motion"] * len(texts), twins=torch.full((VIDEOS,), -1),
                       video_ids=[f"v{v}" for v in range(VIDEOS)], mean=torch.tensor([0.48, 0.46, 0.41]),
                       std=torch.tensor([0.27, 0.26, 0.28]))


def tiny_method(name: str = "dgl"):
    torch.manual_seed(0)
    return build_method(name, build_clip("tiny-synthetic"), group("model", method=name), num_frames=FRAMES)


def step_gradients(name: str, accum_steps: int, rank: int = 0, world: int = 1, *, reference: bool = False,
                   grad_clip: float = 0.0) -> tuple[float, dict]:
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
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with process_group(torch.device("cpu")) as (dist, _):
        results = [step_gradients(name, accum, dist.rank, dist.world) for name, accum in CASES]
        results += [step_gradients("dgl", 1, dist.rank, dist.world, reference=True, grad_clip=CLIP),
                    step_gradients("dgl", 1, dist.rank, dist.world, grad_clip=CLIP * dist.world)]
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
    history = train_method(method, train_view, val_view, cfg, torch.device("cpu"), on_epoch, progress=False,
                           resume=resume, save_checkpoint=checkpoint.save if checkpoint else None)
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


# ---- the stage entry point: kill and resume in one MLflow run; torchrun with 2 processes ----------

@pytest.fixture
def stage_inputs(tmp_path, tiny_repro) -> Path:
    """The cache and the backbone the earlier stages wrote (copies of the session's tiny repro), and
    tiny params."""
    for path in ("data/cache", "models/backbone"):
        shutil.copytree(tiny_repro / path, tmp_path / path)
    params = merge(tiny_params(), {"train": {"epochs": 4, "batch_size": 4, "device": "cpu", "threads": 1}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def stage(root: Path, **train) -> subprocess.Popen:
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(params, {"train": train})))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1", "DVC_ROOT": str(root)}
    return subprocess.Popen([sys.executable, *stage_cmd("train")[1:]], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return err


def test_stage_killed_then_rerun_resumes_in_one_mlflow_run_and_torchrun_agrees(stage_inputs):
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

    finish(stage(root, nproc=2))  # torchrun, gloo: the same global batches, so the same curve
    ddp = json.loads((root / "plots/train.json").read_text())
    assert [r["epoch"] for r in ddp] == [1, 2, 3, 4]
    for a, b in zip(ddp, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
